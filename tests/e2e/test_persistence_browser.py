"""Conversations that last (issue 14), in headless Chromium against real servers and SQLite files.

Every journey here ends in a new Streamlit session (a reload, a new tab, a new browser context or
a restarted server) and checks that the conversation stored by core/store.py comes back whole:
reload, explanation links, a server killed mid-reply, share links (read-only, continue, revoke),
delete, two tabs on one conversation, and two app processes on one database.

Screenshots: artifacts/screenshots/persist-*.png (reload-restored, history-sidebar, history-popover,
shared-read-only, revoked-link, killed-reply-restored).
"""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import (
    assert_no_exception,
    chat_texts,
    go_to,
    new_session,
    open_expander,
    quick_replies,
    screenshot,
    selectbox_text,
    send_and_wait,
    server_log,
    set_slider,
    start_send,
    start_server,
    stop_server,
    wait_idle,
)

pytestmark = pytest.mark.browser

GONE = "does not exist or is no longer shared"
CUT_OFF = "This reply was cut off (the app restarted or the tab closed)."
TABLES = ("conversations", "messages", "traces", "trace_steps")


# -- helpers ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    """(process, url, data dir): one server and database for the journeys that need no restart.

    Each test opens its own browser contexts, so each has its own owner and history."""
    data = tmp_path_factory.mktemp("glassbox-data")
    proc, url = start_server(env_extra={"GLASSBOX_DATA_DIR": str(data)})
    yield proc, url, data
    assert "Traceback" not in server_log(proc), server_log(proc)[-3000:]
    stop_server(proc)


def param(page, name: str) -> str | None:
    values = parse_qs(urlparse(page.url).query).get(name)
    return values[0] if values else None


def conversation_id(page) -> str:
    """The ?c= of the page; the app puts it there once the conversation is saved."""
    page.wait_for_function("() => new URL(location.href).searchParams.get('c')")
    cid = param(page, "c")
    assert cid is not None and re.fullmatch(r"[A-Za-z0-9_-]{22}", cid), page.url
    return cid


def history_box(page):
    """The sidebar's "🗂 Your conversations (N)" expander, opened."""
    box = page.locator('[data-testid="stSidebar"] [data-testid="stExpander"]').filter(
        has_text="Your conversations"
    )
    return open_expander(page, box)


def history_titles(page) -> list[str]:
    return history_box(page).locator('[data-testid="stButton"] button').all_inner_texts()


def history_count(page) -> int:
    summary = history_box(page).locator("summary").inner_text()
    match = re.search(r"Your conversations \((\d+)\)", summary)
    assert match, summary
    return int(match.group(1))


def open_manage(page):
    """Open the sidebar popover "⚙️ This conversation"; returns its body."""
    body = page.locator('[data-testid="stPopoverBody"]')
    if not body.is_visible():
        page.locator('[data-testid="stSidebar"] [data-testid="stPopover"] button').filter(
            has_text="This conversation"
        ).click()
    body.wait_for()
    page.wait_for_timeout(300)  # the popover animates open
    return body


def click_and_wait(page, locator) -> None:
    locator.click()
    page.wait_for_timeout(400)
    wait_idle(page)


def reload(page) -> None:
    """The browser's reload button: a new Streamlit session on the same URL."""
    page.reload()
    wait_idle(page)


def wait_for_messages(page, n: int, timeout: float = 60_000) -> None:
    """Wait for n chat messages, each reply with its Explain toggle (drawn a moment after its text)."""
    page.wait_for_function(
        """(n) => { const m = document.querySelectorAll('[data-testid="stChatMessage"]');
                    const t = document.querySelectorAll('[data-testid="stChatMessage"] [data-testid="stCheckbox"]');
                    return m.length >= n && t.length >= Math.floor(n / 2); }""",
        arg=n,
        timeout=timeout,
    )
    wait_idle(page)


def eventually(check, timeout: float = 30.0) -> None:
    """Retry `check` (it asserts) until it passes: a page switch or rerun replaces the old
    elements a moment after the script state says it is idle."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def chat_input(page):
    return page.locator('[data-testid="stChatInput"] textarea')


def db_rows(data: Path, cid: str) -> dict[str, int]:
    """Rows held for one conversation in each table of the SQLite file."""
    with sqlite3.connect(data / "glassbox.db") as db:
        rows = {
            "conversations": db.execute("SELECT count(*) FROM conversations WHERE id = ?", (cid,)).fetchone()[
                0
            ]
        }
        for table in TABLES[1:]:
            rows[table] = db.execute(
                f"SELECT count(*) FROM {table} WHERE conversation_id = ?",  # noqa: S608 - fixed names
                (cid,),
            ).fetchone()[0]
    return rows


def db_messages(data: Path, cid: str) -> list[tuple[int, str, str]]:
    with sqlite3.connect(data / "glassbox.db") as db:
        return db.execute(
            "SELECT position, role, content FROM messages WHERE conversation_id = ? ORDER BY position", (cid,)
        ).fetchall()


def footer_tokens(text: str) -> int:
    match = re.search(r"(\d+) tokens", text)
    assert match, text
    return int(match.group(1))


def explain_link(page, message_index: int, title: str) -> str:
    """Switch on Explain under chat message `message_index` and return its link to `title`."""
    message = page.locator('[data-testid="stChatMessage"]').nth(message_index)
    toggle = message.locator('[data-testid="stCheckbox"]').filter(has_text="Explain")
    click_and_wait(page, toggle)
    link = message.locator('[data-testid="stPageLink"] a').filter(has_text=title)
    link.wait_for()
    return link.get_attribute("href") or ""


def send_settled(page, text: str) -> list[str]:
    """send_and_wait, then wait for the reply's Explain toggle too, so that two pages' texts compare."""
    n = len(send_and_wait(page, text))
    wait_for_messages(page, n)
    return chat_texts(page)


def chat(page, prompts: list[str], tokens: int = 8) -> list[str]:
    quick_replies(page, tokens)
    texts: list[str] = []
    for prompt in prompts:
        texts = send_settled(page, prompt)
    assert len(texts) == 2 * len(prompts), texts
    return texts


def no_fault(page, proc) -> None:
    assert_no_exception(page)
    assert "Traceback" not in server_log(proc), server_log(proc)[-3000:]


# -- 1. reload -----------------------------------------------------------------------------------
def test_reload_restores_every_message_and_explain_works(browser, shared_server):
    proc, url, _ = shared_server
    context, page = new_session(browser, url)
    try:
        prompts = ["What is the capital of France?", "And of Italy?", "Name a colour."]
        before = chat(page, prompts)
        cid = conversation_id(page)

        reload(page)
        wait_for_messages(page, 6)
        assert param(page, "c") == cid  # reload keeps the conversation's URL
        assert chat_texts(page) == before
        assert history_titles(page) == ["▶ " + prompts[0]]
        screenshot(page, "persist-reload-restored")

        # Explain works on a restored reply: the panel draws its chips from the stored trace.
        last = len(before) - 1
        explain_link(page, last, "Next-word candidates")
        panel = page.locator('[data-testid="stChatMessage"]').nth(last)
        expect(panel.locator(".gb-chip").first).to_be_visible()
        assert panel.locator(".gb-chip").count() >= footer_tokens(before[last]) - 1
        no_fault(page, proc)

        # An explanation page shows the restored reply (reached through the sidebar menu).
        go_to(page, "Next-word candidates")
        assert param(page, "c") == cid
        assert "Reply 3" in selectbox_text(page, "Reply to explain")
        expect(page.locator(".gb-chip").first).to_be_visible()
        main = page.locator('[data-testid="stMain"]').inner_text()
        assert "There is no reply to explain yet" not in main
        no_fault(page, proc)
    finally:
        context.close()


# -- 2. an explanation link in a new browser context ---------------------------------------------
def test_explanation_link_opens_that_reply_and_step_in_a_new_context(browser, shared_server):
    proc, url, _ = shared_server
    context, page = new_session(browser, url)
    try:
        chat(page, ["Tell me about cats.", "Tell me about dogs."], tokens=16)
        cid = conversation_id(page)
        href = explain_link(page, 1, "Next-word candidates")  # the FIRST reply, not the default last one
        trace_id = parse_qs(urlparse(href).query)["reply"][0]
        cookies = context.cookies()
        assert any(c["name"] == "glassbox_owner" for c in cookies), cookies
    finally:
        context.close()

    other = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        other.add_cookies(cookies)
        page = other.new_page()
        page.set_default_timeout(60_000)
        page.goto(f"{url}/candidates?c={cid}&reply={trace_id}&step=2")
        wait_idle(page)
        page.get_by_role("heading", name="Next-word candidates").wait_for()
        assert "Reply 1" in selectbox_text(page, "Reply to explain")
        thumb = page.locator('[data-testid="stSlider"]').filter(has_text="Step").first
        expect(thumb.locator('[data-testid="stSliderThumbValue"]')).to_have_text("3")  # step=2 is 0-based
        assert param(page, "c") == cid and param(page, "reply") == trace_id and param(page, "step") == "2"
        no_fault(page, proc)
    finally:
        other.close()


# -- 3. a server killed mid-reply -----------------------------------------------------------------
def test_server_killed_mid_reply_comes_back_with_the_partial_reply_cut_off(browser, tmp_path):
    env = {"GLASSBOX_DATA_DIR": str(tmp_path)}
    proc, url = start_server(env_extra=env)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(url)
        wait_idle(page)
        assert set_slider(page, "Temperature", ["Home", *["ArrowRight"] * 14]) == "0.7"
        assert set_slider(page, "Maximum new tokens", ["Home", *["ArrowRight"] * 31]) == "256"
        prompt = "Write a long story about a dragon."
        start_send(page, prompt)
        page.wait_for_function(  # the reply streams: ~20 tokens are on screen, its footer is not
            """() => { const m = document.querySelectorAll('[data-testid="stChatMessage"]');
                       return m.length >= 2 && !m[1].innerText.includes("Waiting for the model")
                              && m[1].innerText.trim().split(/\\s+/).length >= 20; }""",
            timeout=180_000,
        )
        cid = conversation_id(page)
        shown = chat_texts(page)[1]
        assert " tokens" not in shown, "the reply ended before the server was killed"
        proc.kill()  # SIGKILL: no clean-up of any kind
        proc.wait(timeout=10)
        proc.log_file.close()

        proc, url = start_server(env_extra=env)
        page.goto(f"{url}/?c={cid}")
        wait_idle(page)
        wait_for_messages(page, 2)
        texts = chat_texts(page)
        assert len(texts) == 2 and prompt in texts[0]
        reply = texts[1]
        assert footer_tokens(reply) >= 16
        assert CUT_OFF in reply
        assert "stopped by you" not in reply  # nobody pressed Stop
        assert history_titles(page) == ["▶ " + prompt]
        screenshot(page, "persist-killed-reply-restored")
        no_fault(page, proc)

        # The chat goes on: a new message gets a normal, complete reply.
        quick_replies(page, 8)
        texts = send_settled(page, "Thank you.")
        assert len(texts) == 4 and CUT_OFF in texts[1]
        assert footer_tokens(texts[3]) >= 1 and "cut off" not in texts[3]
        no_fault(page, proc)
    finally:
        context.close()
        stop_server(proc)


# -- 4 and 5. share links: read-only, explanations, continue, revoke -----------------------------
def test_share_link_is_read_only_continue_forks_and_revoke_ends_it(browser, shared_server):
    proc, url, data = shared_server
    owner_ctx, owner = new_session(browser, url)
    visitor_ctx = None
    try:
        original = chat(owner, ["What is two plus two?", "And three plus three?"])
        cid = conversation_id(owner)
        assert history_titles(owner) == ["▶ What is two plus two?"]
        screenshot(owner, "persist-history-sidebar")
        body = open_manage(owner)
        click_and_wait(owner, body.get_by_role("button", name="Create a share link"))
        body = open_manage(owner)
        link = body.locator('[data-testid="stCode"]').first.inner_text().strip()
        share_id = parse_qs(urlparse(link).query)["c"][0]
        assert share_id != cid and link.startswith(url)
        screenshot(owner, "persist-history-popover")

        # Another visitor (no cookies) opens it: read-only, every reply explainable.
        visitor_ctx, visitor = new_session(browser, url, f"/?c={share_id}")
        wait_for_messages(visitor, 4)
        assert chat_texts(visitor) == original
        assert chat_input(visitor).count() == 0
        expect(visitor.get_by_text("read-only shared conversation").first).to_be_visible()
        expect(visitor.get_by_role("button", name="Continue from here")).to_be_visible()
        assert history_count(visitor) == 0  # the owner's history is not theirs
        assert visitor.get_by_role("button", name="This conversation").count() == 0
        screenshot(visitor, "persist-shared-read-only")
        for title in ("Next-word candidates", "Attention"):
            go_to(visitor, title)
            assert (
                "There is no reply to explain yet"
                not in visitor.locator('[data-testid="stMain"]').inner_text()
            )
            assert "Reply 2" in selectbox_text(visitor, "Reply to explain")
            no_fault(visitor, proc)
        go_to(visitor, "Chat")
        assert param(visitor, "c") == share_id and chat_input(visitor).count() == 0

        # "Continue from here": a copy in the visitor's own history, where they can chat on.
        click_and_wait(visitor, visitor.get_by_role("button", name="Continue from here"))
        expect(chat_input(visitor)).to_be_visible()
        fork = conversation_id(visitor)
        assert fork not in (cid, share_id)
        assert chat_texts(visitor) == original
        assert history_titles(visitor) == ["▶ What is two plus two?"]
        quick_replies(visitor, 8)
        assert len(send_settled(visitor, "And four plus four?")) == 6
        no_fault(visitor, proc)

        # The owner's conversation is unchanged, and still theirs alone.
        reload(owner)
        wait_for_messages(owner, 4)
        assert chat_texts(owner) == original and param(owner, "c") == cid
        assert history_count(owner) == 1
        assert [m[1] for m in db_messages(data, cid)].count("user") == 2

        # Revoke: the link then opens nothing.
        body = open_manage(owner)
        click_and_wait(owner, body.get_by_role("button", name="Revoke this link"))
        assert open_manage(owner).locator('[data-testid="stCode"]').count() == 0
        visitor.goto(link)
        wait_idle(visitor)
        expect(visitor.get_by_text(GONE)).to_be_visible()
        assert len(chat_texts(visitor)) == 0 and param(visitor, "c") is None
        screenshot(visitor, "persist-revoked-link")
        no_fault(visitor, proc)
    finally:
        owner_ctx.close()
        if visitor_ctx is not None:
            visitor_ctx.close()


# -- 6. delete ------------------------------------------------------------------------------------
def test_delete_removes_the_conversation_and_its_rows(browser, shared_server):
    proc, url, data = shared_server
    context, page = new_session(browser, url)
    try:
        chat(page, ["Say hello.", "Say goodbye."])
        cid = conversation_id(page)
        body = open_manage(page)
        click_and_wait(page, body.get_by_role("button", name="Create a share link"))
        stored = db_rows(data, cid)
        assert all(stored[t] > 0 for t in TABLES), stored

        body = open_manage(page)
        delete = body.get_by_role("button", name="Delete this conversation")
        expect(delete).to_be_disabled()  # not without the confirmation
        click_and_wait(page, body.locator('[data-testid="stCheckbox"]').filter(has_text="delete it for good"))
        click_and_wait(page, open_manage(page).get_by_role("button", name="Delete this conversation"))

        def emptied() -> None:
            assert len(chat_texts(page)) == 0 and param(page, "c") is None
            assert history_count(page) == 0

        eventually(emptied)
        assert db_rows(data, cid) == dict.fromkeys(TABLES, 0)
        with sqlite3.connect(data / "glassbox.db") as db:  # its share snapshot went with it
            assert (
                db.execute("SELECT count(*) FROM conversations WHERE source_id = ?", (cid,)).fetchone()[0]
                == 0
            )

        page.goto(f"{url}/?c={cid}")
        wait_idle(page)
        expect(page.get_by_text(GONE)).to_be_visible()
        assert len(chat_texts(page)) == 0
        no_fault(page, proc)
    finally:
        context.close()


# -- 7. two tabs on one conversation ---------------------------------------------------------------
def test_two_tabs_stay_consistent_and_each_message_is_stored_once(browser, shared_server):
    proc, url, data = shared_server
    context, tab_a = new_session(browser, url)
    try:
        chat(tab_a, ["Name a fruit."])
        cid = conversation_id(tab_a)
        tab_b = context.new_page()
        tab_b.set_default_timeout(60_000)
        tab_b.goto(f"{url}/?c={cid}")
        wait_idle(tab_b)
        wait_for_messages(tab_b, 2)

        after_a = send_settled(tab_a, "Name a vegetable.")
        assert len(after_a) == 4
        go_to(tab_b, "Tokenization")  # tab B's next reruns, through the sidebar menu
        go_to(tab_b, "Chat")
        wait_for_messages(tab_b, 4)
        assert chat_texts(tab_b) == after_a

        # And back: tab B chats on; tab A sees it on its next rerun, nothing is lost or doubled.
        quick_replies(tab_b, 8)
        after_b = send_settled(tab_b, "Name a colour.")
        assert len(after_b) == 6 and after_b[:4] == after_a
        click_and_wait(tab_a, history_box(tab_a).get_by_role("button", name="Name a fruit."))  # a rerun
        wait_for_messages(tab_a, 6)
        assert chat_texts(tab_a) == after_b

        rows = db_messages(data, cid)
        chat_rows = [(role, content) for _, role, content in rows if role != "system"]
        assert [r[0] for r in chat_rows] == ["user", "assistant"] * 3, rows
        assert [r[1] for r in chat_rows[::2]] == ["Name a fruit.", "Name a vegetable.", "Name a colour."]
        assert len({p for p, _, _ in rows}) == len(rows)  # one row per position
        assert db_rows(data, cid)["traces"] == 3
        no_fault(tab_a, proc)
        no_fault(tab_b, proc)
    finally:
        context.close()


# -- 8. two app processes on one database ---------------------------------------------------------
def test_two_servers_on_one_database_see_the_same_conversations(browser, tmp_path):
    env = {"GLASSBOX_DATA_DIR": str(tmp_path)}
    first, url_1 = start_server(env_extra=env)
    second = None
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        second, url_2 = start_server(env_extra=env)
        assert url_1 != url_2
        page_1 = context.new_page()
        page_1.set_default_timeout(60_000)
        page_1.goto(url_1)
        wait_idle(page_1)
        texts = chat(page_1, ["What is the capital of Spain?"])
        cid = conversation_id(page_1)

        # Cookies belong to the host, not the port: the same context is the same visitor on both.
        page_2 = context.new_page()
        page_2.set_default_timeout(60_000)
        page_2.goto(url_2)
        wait_idle(page_2)
        assert history_titles(page_2) == ["What is the capital of Spain?"]
        click_and_wait(
            page_2, history_box(page_2).get_by_role("button", name="What is the capital of Spain?")
        )
        wait_for_messages(page_2, 2)
        assert chat_texts(page_2) == texts and param(page_2, "c") == cid

        # A reply written through the second process is seen by the first.
        quick_replies(page_2, 8)
        both = send_settled(page_2, "And of Portugal?")
        time.sleep(0.2)
        reload(page_1)
        wait_for_messages(page_1, 4)
        assert chat_texts(page_1) == both
        no_fault(page_1, first)
        no_fault(page_2, second)
    finally:
        context.close()
        stop_server(first)
        if second is not None:
            stop_server(second)
