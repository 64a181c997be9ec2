"""Store faults as a visitor meets them: the whole app (app.py) under AppTest, the real model,
real databases. The chat always answers; the page says plainly what is not kept and why.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from streamlit.runtime.pages_manager import PagesManager
from streamlit.runtime.scriptrunner import script_runner
from streamlit.testing.v1 import AppTest

from core.conversation import Message
from core.store import Store, new_id
from pages import persist
from tests import postgres as pg
from tests.conftest import APP

NOT_KEPT = "This conversation will not be kept"
TRACEBACK_WORDS = ("Traceback", "Error:", "sqlite3", "psycopg", "[SQL", "/")


@pytest.fixture(autouse=True)
def app_py_runs_every_time(monkeypatch):
    """Every AppTest run goes through app.py, as every run of a real server does.

    subtle: AppTest (streamlit 1.67) resets PagesManager.uses_pages_directory before each run;
    with a pages/ folder beside app.py the flag comes back True, and from the second run on
    the script runner runs the current page alone (multipage v1): no open_from_url, no
    show_status, no save after the page. A server sets the flag once and st.navigation turns
    it off for good.
    """

    class NavigationOnly(PagesManager):
        uses_pages_directory = False

    monkeypatch.setattr(script_runner, "PagesManager", NavigationOnly)


@pytest.fixture()
def env(monkeypatch, tmp_path):
    """Point the app at a fresh data folder; tests add GLASSBOX_* settings through it."""
    monkeypatch.setenv("GLASSBOX_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("GLASSBOX_DB_URL", raising=False)
    monkeypatch.delenv("GLASSBOX_MAX_CONVERSATIONS", raising=False)

    def set_(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return set_


def new_app(lm, token: str | None = None, c: str | None = None) -> AppTest:
    """A new browser session (a reload, another tab), run once. lm: the model is loaded first."""
    at = AppTest.from_file(APP, default_timeout=180)
    at.session_state["chat.temperature"] = 0.0
    at.session_state["chat.max_new_tokens"] = 8
    if token is not None:
        at.session_state["owner.token"] = token  # the same visitor (their cookie, in a browser)
    if c is not None:
        at.query_params["c"] = c
    return at.run()


def send(at: AppTest, text: str) -> AppTest:
    at.chat_input[0].set_value(text).run()
    assert not at.exception, at.exception
    return at


def warnings(at: AppTest) -> list[str]:
    return [w.value for w in at.warning]


def replies(at: AppTest) -> list[Message]:
    return [m for m in at.session_state["chat.messages"] if m.role == "assistant"]


def assert_plain_page(at: AppTest) -> None:
    assert not at.exception
    for text in warnings(at):
        for word in TRACEBACK_WORDS:
            assert word not in text, f"{word!r} in {text!r}"


# -- a database that cannot be written --------------------------------------------------------


def _read_only_url(tmp_path: Path) -> str:
    path = tmp_path / "ro" / "glassbox.db"
    Store(f"sqlite:///{path}").list("someone")  # a sound, empty database; then opened read-only
    return f"sqlite:///file:{path}?mode=ro&uri=true"


def _folder_in_the_way(tmp_path: Path) -> str:
    (tmp_path / "blocked").write_text("a file where the data folder should be")
    return f"sqlite:///{tmp_path / 'blocked' / 'glassbox.db'}"


@pytest.mark.parametrize(
    "make_url", [_read_only_url, _folder_in_the_way], ids=["read-only-file", "no-folder"]
)
def test_an_unwritable_database_still_chats_and_says_the_conversation_is_not_kept(
    lm, env, tmp_path, make_url
):
    env(GLASSBOX_DB_URL=make_url(tmp_path))
    at = new_app(lm)
    assert_plain_page(at)
    send(at, "What is the capital of France?")
    assert replies(at) and "Paris" in replies(at)[0].content  # the chat answers
    said = [w for w in warnings(at) if NOT_KEPT in w]
    assert said, warnings(at)  # in the run that tried to save, not one run later
    assert "The chat goes on in this tab" in said[0]
    assert_plain_page(at)
    assert "c" not in at.query_params  # no link to a conversation that does not exist

    send(at, "And of Italy?")
    assert len(replies(at)) == 2 and replies(at)[1].content.strip()
    assert sum(NOT_KEPT in w for w in warnings(at)) == 1  # said once, not once per failure
    assert len(at.session_state["chat.messages"]) == 5  # everything stays in the session


def test_a_corrupt_database_file_is_set_aside_and_the_page_says_so(lm, env, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    garbage = b"not a database at all\n" * 500
    (data / "glassbox.db").write_bytes(garbage)
    at = new_app(lm)
    assert_plain_page(at)
    said = [w for w in warnings(at) if "set aside" in w]
    assert len(said) == 1, warnings(at)
    (aside,) = data.glob("glassbox.db.corrupt-*")
    assert aside.name in said[0] and aside.read_bytes() == garbage
    send(at, "What is the capital of France?")
    assert not any(NOT_KEPT in w for w in warnings(at))
    cid = at.query_params["c"]
    assert persist.store().load(cid, at.session_state["owner.token"]) is not None  # saved in the new file
    assert not any("set aside" in w for w in warnings(send(at, "And of Italy?")))  # told once a session


# -- links to nothing -------------------------------------------------------------------------

HOSTILE = {
    "unknown": new_id(),
    "empty": "",
    "malformed": "not-an-id",
    "long": "A" * 10_000,
    "sql": "' OR '1'='1' --",
    "path": "../../../../etc/passwd",
    "markup": "<script>window.glassboxPwned=1</script>",
    "unicode": "ünïcødé-名前-\u202e-🙂",
    "almost": new_id()[:-1] + "!",
}


@pytest.mark.parametrize("value", list(HOSTILE.values()), ids=list(HOSTILE))
def test_a_link_to_nothing_says_so_and_opens_a_new_chat(lm, env, value):
    at = new_app(lm, c=value)
    assert_plain_page(at)
    assert persist.GONE in warnings(at)
    assert "c" not in at.query_params
    send(at, "Hello")  # the new chat works, and is saved under a new id
    assert replies(at) and at.query_params["c"] != value
    assert persist.GONE not in warnings(at)  # said once


def test_someone_elses_conversation_and_a_revoked_share_are_not_opened(lm, env):
    at = new_app(lm)
    send(at, "What is the capital of France?")
    store, owner = persist.store(), at.session_state["owner.token"]
    cid = at.session_state[persist.CID]
    share = store.share(cid, owner)
    store.revoke(share, owner)
    for value in (cid, share):
        other = new_app(lm, c=value)  # another visitor: another owner token
        assert_plain_page(other)
        assert persist.GONE in warnings(other)
        assert len(other.session_state["chat.messages"]) == 1


# -- limits -----------------------------------------------------------------------------------


def test_the_conversation_limit_is_said_plainly_and_the_chat_goes_on(lm, env):
    env(GLASSBOX_MAX_CONVERSATIONS="1")
    at = new_app(lm)
    send(at, "What is the capital of France?")
    first = at.session_state[persist.CID]
    assert first and not warnings(at)
    at.button(key="history.new").click().run()
    send(at, "What is the capital of Italy?")
    assert replies(at) and replies(at)[-1].content.strip()  # it still chats
    said = [w for w in warnings(at) if "the most this app keeps" in w]
    assert len(said) == 1, warnings(at)
    assert "Delete one" in said[0]
    assert_plain_page(at)
    assert at.session_state.get(persist.CID) is None
    assert [s.id for s in persist.store().list(at.session_state["owner.token"])] == [first]


# -- PostgreSQL going down and coming back ----------------------------------------------------


@pytest.fixture()
def pg_url(postgres_server: pg.PostgresServer):
    postgres_server.start()
    url = postgres_server.create_database()
    try:
        yield url
    finally:
        postgres_server.start()
        postgres_server.drop_database(url.rsplit("/", 1)[1])


def test_postgres_down_mid_chat_keeps_the_chat_and_saves_it_all_when_back(lm, env, postgres_server, pg_url):
    env(GLASSBOX_DB_URL=pg_url, GLASSBOX_SAVE_RETRY_S="0.5")
    token = secrets.token_urlsafe(32)
    at = new_app(lm, token)
    send(at, "What is the capital of France?")
    cid = at.session_state[persist.CID]
    assert cid and not warnings(at)

    postgres_server.stop()
    send(at, "And of Italy?")
    assert len(replies(at)) == 2 and replies(at)[1].content.strip()
    said = [w for w in warnings(at) if NOT_KEPT in w]
    assert said and "the database server does not answer" in said[0], warnings(at)
    assert_plain_page(at)

    # A reload while the server is down: the link is kept and the page says why it is empty.
    reload = new_app(lm, token, c=cid)
    assert_plain_page(reload)
    assert persist.GONE not in warnings(reload)
    assert any("cannot be opened right now" in w for w in warnings(reload)), warnings(reload)
    assert reload.query_params["c"] == cid

    postgres_server.start()
    import time

    time.sleep(0.6)  # past GLASSBOX_SAVE_RETRY_S
    send(at, "And of Spain?")
    assert len(replies(at)) == 3
    assert not any(NOT_KEPT in w for w in warnings(at)), warnings(at)

    reload.run()  # the reloaded tab opens the conversation once the database answers
    assert_plain_page(reload)
    texts = [m.content for m in reload.session_state["chat.messages"]]
    assert texts[1::2] == ["What is the capital of France?", "And of Italy?", "And of Spain?"]
    assert all(m.trace is not None and m.trace.steps for m in replies(reload))
