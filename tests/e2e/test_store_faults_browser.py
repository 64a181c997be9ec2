"""Store faults in headless Chromium (issue 14, section 7): a real app server on a real
PostgreSQL server that is stopped mid-chat and started again, and a corrupt SQLite file.

The chat must go on through the outage, the page must say the conversation is not being kept,
and once the database is back everything said during the outage is saved: a reload shows it.

Screenshots: artifacts/screenshots/fault-*.png.
"""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlparse

import pytest

from tests.e2e.conftest import (
    assert_no_exception,
    chat_texts,
    new_session,
    quick_replies,
    screenshot,
    server_log,
    start_send,
    start_server,
    stop_server,
    wait_idle,
)

pytestmark = pytest.mark.browser

NOT_KEPT = "This conversation will not be kept"
RETRY_S = 3  # GLASSBOX_SAVE_RETRY_S for the server under test (the default is 15 s)


def conversation_id(page) -> str:
    page.wait_for_function("() => new URL(location.href).searchParams.get('c')")
    return parse_qs(urlparse(page.url).query)["c"][0]


def send_turn(page, text: str, turn: int, timeout: float = 300_000) -> list[str]:
    """Send the turn-th message (from 1) and wait for its whole reply; returns chat_texts.

    subtle: counts from the turn number, not from the messages on the page before sending
    (send_and_wait): while a rerun draws the chat anew, the old messages are still on the
    page beside the new ones, and a count taken then waits for messages that never come.
    """
    start_send(page, text)
    page.wait_for_function(
        """(n) => { const m = document.querySelectorAll('[data-testid="stChatMessage"]');
                    const app = document.querySelector('[data-testid="stApp"]');
                    return m.length >= 2 * n && / tokens/.test(m[2 * n - 1].innerText)
                           && app.getAttribute('data-test-script-state') === 'notRunning'; }""",
        arg=turn,
        timeout=timeout,
    )
    wait_idle(page, timeout)
    return chat_texts(page)


def settle(page) -> None:
    """Wait until the first page has been drawn whole (the sidebar's last widgets come late)."""
    page.locator('[data-testid="stChatInput"] textarea').wait_for()
    page.wait_for_timeout(1500)
    wait_idle(page)


def main_text(page) -> str:
    return page.locator('[data-testid="stMainBlockContainer"]').inner_text()


def test_postgres_down_mid_chat_keeps_chatting_says_so_and_loses_nothing(browser, postgres_server, tmp_path):
    postgres_server.start()
    db_url = postgres_server.create_database()
    proc, url = start_server(
        env_extra={
            "GLASSBOX_DB_URL": db_url,
            "GLASSBOX_DATA_DIR": str(tmp_path / "data"),
            "GLASSBOX_SAVE_RETRY_S": str(RETRY_S),
        }
    )
    context = None
    try:
        context, page = new_session(browser, url)
        quick_replies(page, 8)
        send_turn(page, "What is the capital of France?", 1)
        cid = conversation_id(page)
        assert NOT_KEPT not in main_text(page)

        postgres_server.stop()
        try:
            texts = send_turn(page, "And of Italy?", 2)
        except Exception:
            screenshot(page, "fault-postgres-down-failed")  # what the page showed instead
            raise
        assert len(texts) == 4 and texts[3].strip()  # the reply streamed all the same
        warning = page.locator('[data-testid="stAlert"]').filter(has_text=NOT_KEPT)
        warning.wait_for()  # in the run that failed to save, not one click later
        said = warning.inner_text()
        assert "the database server does not answer" in said and "The chat goes on in this tab" in said
        assert_no_exception(page)
        screenshot(page, "fault-postgres-down")

        # A reload during the outage: the link is kept, and the page says why nothing shows.
        other, reloaded = new_session(browser, f"{url}/?c={cid}")
        try:
            opened = reloaded.locator('[data-testid="stAlert"]').filter(has_text="cannot be opened right now")
            opened.wait_for()
            assert "does not exist" not in main_text(reloaded)
            assert parse_qs(urlparse(reloaded.url).query).get("c") == [cid]
            assert_no_exception(reloaded)
            screenshot(reloaded, "fault-postgres-down-reload")
        finally:
            other.close()

        postgres_server.start()
        time.sleep(RETRY_S + 0.5)  # the next save is tried once GLASSBOX_SAVE_RETRY_S has passed
        send_turn(page, "And of Spain?", 3)
        page.locator('[data-testid="stAlert"]').filter(has_text=NOT_KEPT).wait_for(state="detached")
        assert_no_exception(page)
        before = chat_texts(page)
        assert len(before) == 6

        page.reload()
        wait_idle(page)
        page.locator('[data-testid="stChatMessage"]').nth(5).wait_for()
        after = chat_texts(page)
        assert [t.splitlines()[0] for t in after] == [t.splitlines()[0] for t in before]
        for question in ("What is the capital of France?", "And of Italy?", "And of Spain?"):
            assert any(question in t for t in after), (question, after)
        assert conversation_id(page) == cid
        assert NOT_KEPT not in main_text(page)
        assert_no_exception(page)
        screenshot(page, "fault-postgres-back-reloaded")
    finally:
        if context is not None:
            context.close()
        stop_server(proc)
        postgres_server.start()
        postgres_server.drop_database(db_url.rsplit("/", 1)[1])
    assert "Traceback" not in server_log(proc), server_log(proc)[-3000:]


def test_a_corrupt_database_file_is_set_aside_and_the_page_says_so(browser, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    garbage = b"\x00\xffnot a database\n" * 1000
    (data / "glassbox.db").write_bytes(garbage)
    proc, url = start_server(env_extra={"GLASSBOX_DATA_DIR": str(data)})
    context = None
    try:
        context, page = new_session(browser, url)
        alert = page.locator('[data-testid="stAlert"]').filter(has_text="set aside")
        alert.wait_for()
        (aside,) = data.glob("glassbox.db.corrupt-*")
        assert aside.name in alert.inner_text() and aside.read_bytes() == garbage
        assert str(data) not in alert.inner_text()
        settle(page)
        assert alert.count() == 1  # still there once the page has settled
        assert_no_exception(page)
        screenshot(page, "fault-corrupt-set-aside")
        quick_replies(page, 8)
        send_turn(page, "What is the capital of France?", 1)
        assert_no_exception(page)
        assert NOT_KEPT not in main_text(page)
        conversation_id(page)  # saved in the new file
    finally:
        if context is not None:
            context.close()
        stop_server(proc)
    assert "Traceback" not in server_log(proc), server_log(proc)[-3000:]


def test_a_read_only_database_and_a_link_to_nothing_give_plain_messages(browser, tmp_path):
    from core.store import Store

    path = tmp_path / "ro" / "glassbox.db"
    Store(f"sqlite:///{path}").list("someone")  # a sound database, then served read-only
    proc, url = start_server(env_extra={"GLASSBOX_DB_URL": f"sqlite:///file:{path}?mode=ro&uri=true"})
    context = None
    try:
        context, page = new_session(browser, f"{url}/?c=%27%20OR%201%3D1%20--%3Cscript%3E")
        gone = page.locator('[data-testid="stAlert"]').filter(
            has_text="does not exist or is no longer shared"
        )
        gone.wait_for()
        assert "c" not in parse_qs(urlparse(page.url).query)
        settle(page)
        assert gone.count() == 1
        assert_no_exception(page)
        screenshot(page, "fault-link-to-nothing")

        quick_replies(page, 8)
        texts = send_turn(page, "What is the capital of France?", 1)
        assert len(texts) == 2 and texts[1].strip()
        warning = page.locator('[data-testid="stAlert"]').filter(has_text=NOT_KEPT)
        warning.wait_for()
        assert "cannot be written" in warning.inner_text() and str(path) not in warning.inner_text()
        assert_no_exception(page)
        screenshot(page, "fault-read-only-database")
    finally:
        if context is not None:
            context.close()
        stop_server(proc)
    assert "Traceback" not in server_log(proc), server_log(proc)[-3000:]
