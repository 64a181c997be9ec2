"""Who this visitor is: the owner token that stored conversations are filed under.

Not a page: a widget module (app.py lists its pages, so this file is not in the menu).
`owner_token()` returns the token, a secret of 256 random bits: whoever has it can list and
edit that visitor's conversations, so it is never logged, never put in st.query_params or a
URL, and never shown.

It lives in a browser cookie. The browser sends cookies with the websocket handshake, so
st.context.cookies has it on the very first script run of a session. A value that is not
a well-formed token is ignored as hostile. When there is none, a new token is made here,
kept in st.session_state at once (so the session has a stable owner from its first run),
and written to the browser by a small script, so the next session (a reload, another tab)
gets the same token.

The script is a Custom Component v2 (st.components.v2): it runs in the app's own page, so
`document.cookie` is the app's cookie jar. A components.v1.html iframe would need
allow-same-origin to reach it, and takes layout room of its own. The component draws nothing:
it hides its own element container, so the page keeps no gap where it is mounted.
"""

from __future__ import annotations

import re
import secrets

import streamlit as st
from streamlit.errors import StreamlitDuplicateElementKey

COOKIE = "glassbox_owner"
STATE = "owner.token"  # st.session_state key: this session's token
MAX_AGE = 400 * 24 * 60 * 60  # 400 days, the most Chrome keeps a cookie (it caps longer ones)
# secrets.token_urlsafe(32): 32 random bytes in unpadded base64url, 43 characters.
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{43}")
_KEY = "glassbox-owner-cookie"  # element key; streamlit gives its container the class st-key-<key>

# Writes the cookie unless the browser already holds a well-formed one: another tab of this
# visitor may have written it since this session began, and replacing that would cut the
# visitor off from every conversation filed under it. A malformed value is replaced.
_JS = f"""
export default function ({{ data }}) {{
  const name = "{COOKIE}";
  const wellFormed = /^{TOKEN_RE.pattern}$/;
  const held = document.cookie.split(";").some((pair) => {{
    const eq = pair.indexOf("=");
    return eq > 0 && pair.slice(0, eq).trim() === name && wellFormed.test(pair.slice(eq + 1).trim());
  }});
  if (held || !wellFormed.test(data.token)) return;
  const secure = window.location.protocol === "https:" ? "; Secure" : "";
  document.cookie = `${{name}}=${{data.token}}; Path=/; Max-Age={MAX_AGE}; SameSite=Lax${{secure}}`;
}}
"""
# isolate_styles=False: the style goes into the page itself, where it can hide the container.
_write_cookie = st.components.v2.component(
    "glassbox_owner_cookie",
    js=_JS,
    css=f".st-key-{_KEY} {{ display: none; }}",
    isolate_styles=False,
)


def is_token(value: object) -> bool:
    """True for a well-formed owner token (the shape secrets.token_urlsafe(32) makes)."""
    return isinstance(value, str) and TOKEN_RE.fullmatch(value) is not None


def _sent_cookie() -> str | None:
    """The cookie as the browser sent it with this session's websocket handshake (None if not)."""
    return st.context.cookies.get(COOKIE)


def owner_token() -> str:
    """This visitor's owner token: the same for every run of a session, and across sessions
    of one browser once its cookie is written. Works without a browser (AppTest): the token
    then lasts for the session.

    Call it from a script run, as often as needed: the cookie writer is mounted at most once
    a run, where the first call is, and only while the browser did not send this token.
    """
    token = st.session_state.get(STATE)
    sent = _sent_cookie()
    if not is_token(token):
        token = sent if is_token(sent) else secrets.token_urlsafe(32)
        st.session_state[STATE] = token
    if sent != token:
        try:
            _write_cookie(key=_KEY, data={"token": token}, width="content", height="content")
        except StreamlitDuplicateElementKey:
            pass  # already mounted by an earlier call in this run
    return token
