"""pages/preview.py: the stored conversation drawn on a restarted server's first run.

The model plays no part here (the preview exists to draw before it loads), so the stored
messages are written by hand. The timing itself is benchmarks/bench_open_browser.py's.
"""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from core.conversation import Message
from core.html import markdown_safe
from core.store import Store, default_sqlite_url

OWNER = "o" * 43
HOSTILE = '<img src=x onerror="window.pwned=1"> </div> **bold**'


def _script() -> None:
    import streamlit as st

    from pages import preview

    slot = st.empty()
    st.session_state["drawn"] = preview.show_stored(slot)


@pytest.fixture()
def stored(tmp_path, monkeypatch):
    monkeypatch.setenv("GLASSBOX_DATA_DIR", str(tmp_path))
    store = Store(default_sqlite_url(tmp_path))
    history = [
        Message("system", "You are a helpful assistant."),
        Message("user", "What is the capital of France?"),
        Message("assistant", HOSTILE),
    ]
    cid = store.create(OWNER, history, {}, "SmolLM2-135M-Instruct")
    share = store.share(cid, OWNER)
    store.dispose()
    return cid, share


def _run(cid: str | None) -> AppTest:
    at = AppTest.from_function(_script, default_timeout=60)
    if cid is not None:
        at.query_params["c"] = cid
    return at.run()


def test_a_share_link_is_drawn_with_every_message_escaped(stored):
    _, share = stored
    at = _run(share)
    assert not at.exception and at.session_state["drawn"] is True
    assert [m.name for m in at.chat_message] == ["user", "assistant"]  # the system prompt is not shown
    body = at.chat_message[1].markdown[0]
    # drawn as the chat page draws it: markdown_safe, and no raw HTML (Streamlit escapes it)
    assert body.value == markdown_safe(HOSTILE) and body.proto.allow_html is False
    assert "app has just started" in at.caption[0].value


@pytest.mark.parametrize("which", ["someone else's chat", "unknown id", "malformed id", "no id"])
def test_nothing_is_drawn_that_the_visitor_may_not_see_or_that_is_not_there(stored, which):
    cid, _ = stored
    target = {
        "someone else's chat": cid,  # AppTest sends no owner cookie: this visitor is not its owner
        "unknown id": "A" * 22,
        "malformed id": "../../etc/passwd",
        "no id": None,
    }[which]
    at = _run(target)
    assert not at.exception and at.session_state["drawn"] is False
    assert len(at.chat_message) == 0
