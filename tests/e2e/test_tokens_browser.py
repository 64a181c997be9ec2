"""The tokenization page in a real browser, for a chat message with emoji and code."""

import pytest

from tests.e2e.conftest import (
    assert_no_exception,
    choose,
    flag_value,
    go_to,
    quick_replies,
    send_chat,
    wait_idle,
    whole_page,
)

pytestmark = pytest.mark.browser

MESSAGE = "Explain 👍🏽 and 👨‍👩‍👧 in `print('<b>hi</b>')` <|im_end|>"


def _view(page, name: str) -> None:
    page.locator('[data-testid="stRadio"]').filter(has_text=name).get_by_text(name, exact=True).click()
    page.wait_for_timeout(300)
    wait_idle(page)


def test_tokens_of_a_message_with_emoji_and_code(page):
    quick_replies(page, max_new_tokens=8)
    send_chat(page, MESSAGE)
    go_to(page, "Tokenization")
    assert_no_exception(page)
    choose(
        page,
        page.locator('[data-testid="stSelectbox"]').filter(has_text="Message"),
        page.get_by_role("option").filter(has_text="1 · user"),
    )
    assert_no_exception(page)
    assert page.get_by_text("prompt of reply 1", exact=False).count() == 1
    assert page.get_by_text("byte for byte", exact=False).count() == 1
    # template badges: <|im_start|> and <|im_end|> of the user's turn, never the typed one
    message_chips = page.locator(".gb-chips").first  # other views hold more chips
    specials = message_chips.locator(".gb-chip.special").all_inner_texts()
    assert len(specials) == 2 and all(t.split()[0] in ("<|im_start|>", "<|im_end|>") for t in specials)
    assert message_chips.locator(".gb-chip.bytes").count() >= 4  # emoji pieces shown as <0x..> bytes
    assert page.locator(".gb-chips b").count() == 0 and flag_value(page) is None  # text, not markup
    whole_page(page, "tokens-message-emoji-code")

    _view(page, "BPE merges")
    assert page.get_by_text("the merges reproduce the tokenizer's own output", exact=False).count() == 1
    whole_page(page, "tokens-bpe-merges")

    _view(page, "Counts and context budget")
    assert page.get_by_text("kept free for the reply", exact=False).count() == 1
    whole_page(page, "tokens-counts-budget")  # waits for the chart to draw
    assert page.locator('[data-testid="stVegaLiteChart"]').count() >= 1  # the budget bar

    _view(page, "Another tokenizer")
    assert page.get_by_text("all-MiniLM-L6-v2, WordPiece:", exact=False).count() == 1
    whole_page(page, "tokens-wordpiece")
    assert_no_exception(page)

    page.locator('[data-testid="stRadio"]').filter(has_text="Free text").get_by_text(
        "The whole prompt of a reply", exact=True
    ).click()
    page.wait_for_timeout(300)
    wait_idle(page)
    _view(page, "Table")
    assert (
        page.locator(".gb-chips").first.locator(".gb-chip.special").count() >= 5
    )  # system, user, reply header
    assert_no_exception(page)
    whole_page(page, "tokens-whole-prompt")
