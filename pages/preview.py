"""The first paint after a restart: the stored conversation, drawn before the model code loads.

A restarted server's first run imports torch and transformers and loads the model: about
3 s on a 2-core laptop before the chat page can draw a thing. A learner who reloads a
30-turn conversation then looks at an empty page. So app.py calls show_stored() first: while
this process has not imported torch yet, it reads the conversation that ?c= names (SQLAlchemy
only) and draws its messages as plain text, with a note that the rest is on its way. The
real chat page replaces it in the same run, once the model is ready.

Not a page. Only what the visitor may see is drawn: their own conversation (the owner
cookie the browser sent) or a share. Any doubt (no id, not theirs, the database not
answering) draws nothing; the chat page then says what is wrong, as it always did.
"""

from __future__ import annotations

import sys

import streamlit as st

from core.html import markdown_safe
from core.store import StoreError, looks_like_id
from pages.owner import COOKIE, is_token
from pages.storage import store

STARTING = "⏳ The app has just started: the model is loading. Your conversation is below; Explain and the chat box come in a moment."


def cold() -> bool:
    """True on a process's first runs, before the model code (torch) is imported."""
    return "torch" not in sys.modules


def show_stored(slot) -> bool:
    """Draw the conversation ?c= names into `slot` (an st.empty()); False when there is none to draw."""
    cid = st.query_params.get("c")
    if cid is None or not looks_like_id(cid):
        return False
    sent = st.context.cookies.get(COOKIE)
    try:
        stored = store().load(cid, sent if is_token(sent) else None)
    except StoreError:
        return False
    if stored is None:
        return False
    with slot.container():
        st.caption(STARTING)
        for m in stored.messages:
            if m.role in ("user", "assistant"):
                with st.chat_message(m.role):
                    st.markdown(markdown_safe(m.content) if m.content.strip() else "*(empty reply)*")
    return True
