"""Whole journeys through the app, as a visitor makes them, with a screenshot at each stop.

Screenshots: artifacts/screenshots/journey-*.png.
1. First visit -> example prompt -> streamed reply -> Explain -> every explanation page.
2. Three turns -> regenerate -> branch -> export JSON -> clear -> import -> pages still work.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.e2e.conftest import (
    assert_no_exception,
    chat_texts,
    go_to,
    nav_titles,
    open_transfer,
    quick_replies,
    screenshot,
    selectbox_text,
    send_and_wait,
    wait_idle,
)

pytestmark = pytest.mark.browser
EXAMPLE = "What is the capital of Australia?"


def slug(title: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-")


def visit_every_explanation_page(page, prefix: str, reply_label: str) -> None:
    titles = [t for t in nav_titles(page) if t != "Chat"]
    assert len(titles) >= 4, titles
    for title in titles:
        go_to(page, title)
        assert_no_exception(page)
        main = page.locator('[data-testid="stMain"]').inner_text()
        assert "There is no reply to explain yet" not in main, title
        pickers = page.locator('[data-testid="stSelectbox"]').filter(has_text="Reply to explain")
        if pickers.count():  # pages with a reply picker preselect the reply being explained
            shown = selectbox_text(page, "Reply to explain")
            assert reply_label in shown, f"{title} shows {shown!r}, not {reply_label}"
        screenshot(page, f"{prefix}-{slug(title)}")


def test_first_visit_example_prompt_explain_and_every_page(page):
    page.get_by_role("button", name=EXAMPLE).wait_for()  # the first run has drawn the examples
    screenshot(page, "journey1-01-first-visit")
    quick_replies(page, 24)
    page.get_by_role("button", name=EXAMPLE).click()
    # The reply streams: its text is seen at two or more lengths before the run ends.
    lengths: set[int] = set()
    deadline = time.time() + 240
    while time.time() < deadline:
        texts = chat_texts(page)
        if len(texts) == 2:
            lengths.add(len(texts[1]))
        state = page.locator('[data-testid="stApp"]').get_attribute("data-test-script-state")
        if state == "notRunning" and len(texts) == 2 and " tokens" in texts[1]:
            break
        time.sleep(0.05)
    wait_idle(page)
    assert len(lengths) >= 2, "the reply did not stream"
    texts = chat_texts(page)
    assert EXAMPLE in texts[0] and "Canberra" in texts[1]
    screenshot(page, "journey1-02-reply")
    page.locator('[data-testid="stCheckbox"]').filter(has_text="Explain").last.click()
    page.get_by_text("Where it was least sure").wait_for()
    wait_idle(page)
    assert_no_exception(page)
    screenshot(page, "journey1-03-explain")
    # A "least sure" link opens the candidates page at that step of this reply.
    page.locator('[data-testid="stPageLink"]').filter(has_text="Step").first.click()
    page.wait_for_url("**/candidates?*")
    wait_idle(page)
    assert "reply=" in page.url and "step=" in page.url
    assert_no_exception(page)
    screenshot(page, "journey1-04-candidates-from-link")
    visit_every_explanation_page(page, "journey1-05", "Reply 1")


def test_three_turns_regenerate_branch_export_clear_import(page, tmp_path):
    quick_replies(page, 8)
    for question in ["What is the capital of France?", "And of Spain?", "Name a river there."]:
        send_and_wait(page, question)
    assert len(chat_texts(page)) == 6
    page.get_by_role("button", name="Regenerate last reply").click()
    last = page.locator('[data-testid="stChatMessage"]').last
    last.filter(has_text="1 other take(s) kept").wait_for(timeout=240_000)
    wait_idle(page, 240_000)
    screenshot(page, "journey2-01-regenerated")

    go_to(page, "Next-word candidates")
    page.get_by_role("button", name="Branch here").click()
    page.get_by_text("Branched at step").wait_for(timeout=240_000)
    wait_idle(page, 240_000)
    assert_no_exception(page)
    screenshot(page, "journey2-02-branched")

    go_to(page, "Chat")
    before = chat_texts(page)
    assert "2 other take(s) kept" in before[-1]
    open_transfer(page)
    with page.expect_download() as download:
        page.get_by_role("button", name="Conversation with traces").click()
    saved = tmp_path / "journey.json"
    download.value.save_as(saved)
    data = json.loads(saved.read_text())
    assert [m["role"] for m in data["messages"]][1:] == ["user", "assistant"] * 3
    assert len(data["messages"][-1]["alternatives"]) == 2

    page.get_by_role("button", name="Clear conversation").click()
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stChatMessage\"]')")
    wait_idle(page)
    screenshot(page, "journey2-03-cleared")

    uploader = open_transfer(page).locator('[data-testid="stFileUploader"] input[type="file"]')
    uploader.set_input_files(str(saved))
    page.get_by_text("Loaded journey.json").first.wait_for()
    wait_idle(page)
    assert chat_texts(page) == before
    assert_no_exception(page)
    screenshot(page, "journey2-04-imported")
    visit_every_explanation_page(page, "journey2-05", "Reply 3")
