"""The chat page in a real browser: a two-turn conversation with streamed replies."""

from tests.e2e.conftest import assert_no_exception, screenshot, send_chat


def test_two_turn_conversation_streams_replies(page):
    send_chat(page, "What is the capital of France?")
    send_chat(page, "And what is its most famous tower?")
    messages = page.locator('[data-testid="stChatMessage"]')
    assert messages.count() == 4
    replies = [messages.nth(i).inner_text() for i in (1, 3)]
    assert all(r.strip() for r in replies)
    assert "Paris" in replies[0]
    assert_no_exception(page)
    screenshot(page, "chat-two-turns")
