"""The owner token (pages/owner.py) driven by streamlit's AppTest: no browser, so no cookies.

AppTest cannot send cookies, so the cases where the browser sent one replace the module's
one reader of st.context.cookies (`_sent_cookie`); AppTest runs the script in this process,
so the script sees the replacement. The real handshake cookie is tested in the browser
(tests/e2e/test_owner_browser.py).
"""

from __future__ import annotations

import json
import logging
import secrets

import pytest
from streamlit.testing.v1 import AppTest

from pages import owner


def _script():
    """Calls owner_token() twice in a run, as pages listing and saving conversations will."""
    import hashlib

    import streamlit as st

    from pages.owner import owner_token

    first, second = owner_token(), owner_token()
    st.write("same in a run:", first == second)
    st.write("owner:", hashlib.sha256(first.encode()).hexdigest()[:12])


def _run(state: dict | None = None) -> AppTest:
    at = AppTest.from_function(_script, default_timeout=30)
    for key, value in (state or {}).items():
        at.session_state[key] = value
    return at.run()


def _token(at: AppTest) -> str:
    return at.session_state[owner.STATE]


def _writers(at: AppTest) -> list:
    return list(at.get("bidi_component"))


def _sent(monkeypatch, value: str | None) -> None:
    monkeypatch.setattr(owner, "_sent_cookie", lambda: value)


def test_without_a_browser_the_session_gets_a_stable_well_formed_token():
    at = _run()
    assert not at.exception
    token = _token(at)
    assert owner.is_token(token) and len(token) == 43
    assert "same in a run: `True`" in [m.value for m in at.markdown]
    for _ in range(3):  # reruns keep it
        at.run()
        assert not at.exception and _token(at) == token


def test_sessions_get_different_tokens():
    assert _token(_run()) != _token(_run())


def test_a_missing_cookie_mounts_one_writer_with_this_token():
    at = _run()
    writers = _writers(at)
    assert len(writers) == 1, "owner_token() was called twice: the writer must be mounted once"
    assert writers[0].proto.component_name == "glassbox_owner_cookie"
    assert json.loads(writers[0].proto.json) == {"token": _token(at)}
    # the writer hides its own container: nothing to see, no gap in the page
    assert f".st-key-{owner._KEY}" in writers[0].proto.css_content
    assert "display: none" in writers[0].proto.css_content


def test_the_writer_sets_the_documented_cookie_attributes():
    js = owner._JS
    for part in ("Path=/", f"Max-Age={400 * 24 * 60 * 60}", "SameSite=Lax", '"https:" ? "; Secure"'):
        assert part in js, part
    assert owner.COOKIE in js


def test_a_well_formed_cookie_is_the_token_and_nothing_is_written(monkeypatch):
    sent = secrets.token_urlsafe(32)
    _sent(monkeypatch, sent)
    at = _run()
    assert not at.exception
    assert _token(at) == sent
    assert _writers(at) == []
    at.run()
    assert _token(at) == sent and _writers(at) == []


@pytest.mark.parametrize(
    "hostile",
    [
        "",
        "short",
        "a" * 42,
        "a" * 44,
        "a" * 42 + "=",  # padding is not in the alphabet
        "a" * 42 + "+",  # plain base64, not base64url
        "a" * 40 + "<b>",
        "a" * 42 + "é",
        "a" * 42 + "\n",
        "a" * 43 + "\n",  # a regex's $ would take this one
        "a" * 43 + "; Path=/",
        '"' + "a" * 41 + '"',
        " " + "a" * 42,
    ],
)
def test_a_malformed_cookie_is_ignored_and_replaced(monkeypatch, hostile):
    _sent(monkeypatch, hostile)
    at = _run()
    assert not at.exception
    token = _token(at)
    assert owner.is_token(token) and token != hostile
    (writer,) = _writers(at)
    assert json.loads(writer.proto.json) == {"token": token}


def test_junk_in_session_state_is_replaced():
    at = _run({owner.STATE: "not a token"})
    assert not at.exception and owner.is_token(_token(at))


def test_the_session_keeps_its_token_over_a_different_cookie(monkeypatch):
    """A session's owner never changes mid-session, whatever a reconnect sends."""
    at = _run()
    token = _token(at)
    _sent(monkeypatch, secrets.token_urlsafe(32))
    at.run()
    assert _token(at) == token


def test_the_token_is_neither_in_the_url_nor_in_the_log(caplog, capsys):
    caplog.set_level(logging.DEBUG)
    at = _run()
    token = _token(at)
    at.run()
    assert dict(at.query_params) == {}
    assert token not in caplog.text
    out, err = capsys.readouterr()
    assert token not in out and token not in err
    shown = " ".join(m.value for m in at.markdown)
    assert token not in shown


def test_is_token_takes_only_the_shape_token_urlsafe_makes():
    assert all(owner.is_token(secrets.token_urlsafe(32)) for _ in range(200))
    assert not owner.is_token(None) and not owner.is_token(42) and not owner.is_token(b"a" * 43)
    assert not owner.is_token(secrets.token_urlsafe(16))
