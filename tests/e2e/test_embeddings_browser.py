"""The embeddings page in a real browser, on a real two-turn conversation: one screenshot per view."""

import pytest

from tests.e2e.conftest import (
    assert_no_exception,
    go_to,
    open_view,
    quick_replies,
    send_and_wait,
    wait_idle,
    whole_page,
)

pytestmark = pytest.mark.browser

CHARTS = '[data-testid="stVegaLiteChart"]'


def test_every_view_of_the_embeddings_page(page):
    quick_replies(page, max_new_tokens=40)
    send_and_wait(page, "Why does my cat sleep in the sun all day?")  # waits for the complete reply
    send_and_wait(page, "And why did stock prices fall this week?")
    replies = page.locator('[data-testid="stChatMessage"]').all_inner_texts()[1::2]
    assert len(replies) == 2 and all(len(r.split()) >= 5 for r in replies)
    go_to(page, "Embeddings")
    assert_no_exception(page)
    page.locator(CHARTS).nth(1).wait_for()
    assert page.locator(CHARTS).count() == 2  # heatmap and token map
    assert page.get_by_text("of the variance of these", exact=False).count() == 1
    whole_page(page, "embeddings-tokens-input")

    # a point on the map highlights its token and lists its nearest words
    page.locator(CHARTS).nth(1).locator("g.mark-symbol path").nth(2).click(force=True)
    page.wait_for_timeout(500)
    wait_idle(page)
    assert_no_exception(page)
    assert page.get_by_text("Nearest words to", exact=False).count() == 1
    whole_page(page, "embeddings-tokens-selected")

    # The first hidden-state layer runs the model once over the whole reply: on a shared 2-core
    # machine that can take minutes, so this step waits longer than set_slider does.
    thumb = page.locator('[data-testid="stSlider"]').filter(has_text="Which vectors").locator("input")
    thumb.focus()
    for key in ["Home", *(["ArrowRight"] * 12)]:
        thumb.press(key)
    thumb.blur()
    page.wait_for_timeout(300)
    wait_idle(page, 400_000)
    assert thumb.input_value() == "12"
    assert_no_exception(page)
    page.locator(CHARTS).nth(1).wait_for()
    assert page.locator(CHARTS).count() == 2
    whole_page(page, "embeddings-tokens-layer12")

    page.locator('[data-testid="stRadio"] label').filter(has_text="the mean of the tokens shown").click()
    page.wait_for_timeout(300)
    wait_idle(page)
    assert_no_exception(page)
    whole_page(page, "embeddings-tokens-layer12-centred")

    open_view(page, "Nearest words")
    page.get_by_label("Word", exact=True).fill("king")
    page.get_by_label("Word", exact=True).press("Enter")
    page.wait_for_timeout(300)
    wait_idle(page)
    assert page.locator(CHARTS).count() == 1
    whole_page(page, "embeddings-nearest-king")

    open_view(page, "Analogy")
    assert page.get_by_text("imperfectly", exact=False).count() == 1
    whole_page(page, "embeddings-analogy")

    open_view(page, "Conversation")
    assert page.locator(CHARTS).count() == 3  # heatmap, map by role, "what was this reply about?"
    whole_page(page, "embeddings-conversation-messages")
    page.locator('[data-testid="stRadio"] label').filter(has_text="every sentence").click()
    page.wait_for_timeout(300)
    wait_idle(page)
    assert_no_exception(page)
    whole_page(page, "embeddings-conversation-sentences")

    open_view(page, "Free text")
    assert page.locator(CHARTS).count() == 1
    whole_page(page, "embeddings-free-text")
    assert_no_exception(page)
