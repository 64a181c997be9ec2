"""The attention page in a real browser, after a real two-turn chat: model, head and per-token views."""

import re

import pytest

from tests.e2e.conftest import (
    assert_no_exception,
    go_to,
    open_view,
    quick_replies,
    screenshot,
    send_and_wait,
    wait_idle,
)

pytestmark = pytest.mark.browser


def test_attention_views_for_a_two_turn_chat(page):
    page.set_viewport_size({"width": 1400, "height": 1900})  # the page scrolls inside; show it all
    quick_replies(page, 24)  # short greedy replies: the views need two turns, not long ones
    send_and_wait(page, "What is the capital of France?")
    send_and_wait(page, "And of Italy?")
    # Sidebar navigation keeps the session (and so the conversation); a new URL would not.
    go_to(page, "Attention")
    assert_no_exception(page)
    chart = page.locator('[data-testid="stVegaLiteChart"]').first
    chart.wait_for(timeout=120_000)
    assert page.get_by_text("Click a square to open that head").count() == 1
    # After chatting, the page reads the chat's own KV cache instead of re-running the model.
    assert page.get_by_text("from the keys and values the chat kept while writing").count() == 1
    screenshot(page, "attention-model-view")

    # Click one head's thumbnail: the page opens it in the head view.
    # The grid has a one-cell gap between heads, so try a few spots inside the plot.
    box = page.locator('[data-testid="stVegaLiteChart"] canvas').first.bounding_box()
    active = page.locator('[data-testid="stButtonGroup"] button[aria-checked="true"]')
    for fx, fy in [(0.6, 0.35), (0.62, 0.37), (0.5, 0.5), (0.7, 0.6)]:
        page.mouse.click(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy)
        page.wait_for_timeout(800)
        wait_idle(page)
        if "Head view" in active.first.inner_text():
            break
    assert_no_exception(page)
    assert "Head view" in active.first.inner_text()
    assert page.locator('[data-testid="stVegaLiteChart"]').count() == 1
    screenshot(page, "attention-head-view")

    # Every row of the sequence: a pass over the whole context, run on demand.
    page.locator('[data-testid="stRadio"] label', has_text="Whole sequence").click()
    page.get_by_text("Query rows (a window of 48)").wait_for()  # the context is longer than 48 rows
    wait_idle(page)
    assert_no_exception(page)
    assert page.locator('[data-testid="stVegaLiteChart"]').count() == 1
    screenshot(page, "attention-head-view-whole-sequence")

    open_view(page, "Per-token view")
    page.locator(".gb-chip.chosen").first.wait_for()  # the rerun may start after the click returns
    assert_no_exception(page)
    assert page.locator(".gb-chip.chosen").count() == 1
    assert page.locator(".gb-chip").count() > 20
    page.locator('[data-testid="stDataFrame"] canvas').first.wait_for()  # the top-10 table is drawn
    screenshot(page, "attention-per-token-view")

    open_view(page, "Turn view")
    page.get_by_text("Where the attention that chose each reply token went").wait_for()
    assert_no_exception(page)
    screenshot(page, "attention-turn-view")


def _marked_position(page, css: str) -> int:
    """The position in the hover title of the (first) chip with this class: "position 41 · ..."."""
    title = page.locator(f".gb-chip.{css}").first.get_attribute("title")
    return int(re.match(r"position (\d+)", title).group(1))


def test_the_walkthroughs_attention_link_opens_the_row_that_chose_the_token(page):
    """Issue 18: the walkthrough's step that chose ·Canberra uses the row of ·is; its attention
    link must open that same row on the attention page, not the Canberra row one token later."""
    quick_replies(page, 16)
    texts = send_and_wait(page, "What is the capital of Australia?")
    assert "Canberra" in texts[-1]
    go_to(page, "From prompt to reply")
    assert_no_exception(page)
    chosen = page.locator('[data-testid="stMetric"]').filter(has_text="Chosen token")
    for _ in range(16):  # step on, like a reader, to the step that chose ·Canberra
        if "Canberra" in chosen.inner_text():
            break
        page.get_by_role("button", name="Next step ▶").click()
        page.wait_for_timeout(300)
        wait_idle(page)
    assert "Canberra" in chosen.inner_text()
    used = _marked_position(page, "marked")  # the current position: the token before ·Canberra
    stage = page.get_by_text(re.compile(r"The attention of .* \(position \d+\) → chose ·Canberra"))
    assert f"(position {used})" in stage.inner_text()
    looking = stage.inner_text().split("The attention of ", 1)[1].split(" (position", 1)[0]

    link = page.locator('[data-testid="stPageLink"] a').filter(has_text="See the attention of")
    assert f"{looking} → ·Canberra" in link.inner_text()
    link.click()
    page.wait_for_url("**/attention?*")
    wait_idle(page)
    page.locator(".gb-chip.chosen").first.wait_for()
    assert_no_exception(page)
    assert "view=token" in page.url and "mode=all" in page.url
    assert _marked_position(page, "chosen") == used  # the same row, not one token late
    assert page.get_by_text(f"the attention of {looking} → chose ·Canberra").count() == 1
    chips = page.locator(".gb-chip")
    assert chips.last.inner_text().startswith("·Canberra")  # the chosen token comes after the row, uncoloured
    page.locator('[data-testid="stDataFrame"] canvas').first.wait_for()
    page.set_viewport_size({"width": 1400, "height": 1600})
    page.wait_for_timeout(1500)
    screenshot(page, "attention-from-walkthrough-link")
