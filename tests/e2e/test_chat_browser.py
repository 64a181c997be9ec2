"""The chat page in a real browser: a two-turn conversation with streamed replies."""

import pytest

from tests.e2e.conftest import assert_no_exception, screenshot, send_and_wait, wait_idle

pytestmark = pytest.mark.browser


def test_two_turn_conversation_streams_replies(page):
    # send_and_wait: it sends again when a rerun swallowed the Enter, and waits for the reply's
    # own footer (send_chat's "script idle" can come before the reply has started)
    send_and_wait(page, "What is the capital of France?")
    send_and_wait(page, "And what is its most famous tower?")
    messages = page.locator('[data-testid="stChatMessage"]')
    assert messages.count() == 4
    replies = [messages.nth(i).inner_text() for i in (1, 3)]
    assert all(r.strip() for r in replies)
    assert "Paris" in replies[0]
    assert_no_exception(page)
    screenshot(page, "chat-two-turns")


def test_stop_ends_the_reply_and_keeps_what_was_written(page):
    box = page.locator('[data-testid="stChatInput"] textarea')
    box.fill("Write a very long story about a dragon who learns to cook.")
    box.press("Enter")
    page.wait_for_function(
        """() => { const m = document.querySelectorAll('[data-testid=stChatMessage]');
                   return m.length >= 2 && m[1].innerText.length > 60
                          && !m[1].innerText.includes("Waiting for the model"); }""",
        timeout=120_000,
    )
    page.get_by_role("button", name="⏹ Stop").click()
    page.wait_for_timeout(500)
    wait_idle(page)
    reply = page.locator('[data-testid="stChatMessage"]').nth(1).inner_text()
    assert "dragon" in reply.lower() or len(reply) > 40
    assert "stopped by you" in reply
    assert page.get_by_role("button", name="⏹ Stop").count() == 0
    assert_no_exception(page)
    # The model is free again: the next message gets a reply.
    send_and_wait(page, "What is 2 + 2?")  # resends if a rerun swallowed the Enter
    assert page.locator('[data-testid="stChatMessage"]').count() == 4
    screenshot(page, "chat-after-stop")
