"""The inline explanation under a reply (issue 3 fills this in)."""

from __future__ import annotations

import streamlit as st

from core.conversation import Message


def show(message: Message) -> None:
    trace = message.trace
    st.caption(f"{len(trace.steps)} tokens recorded for this reply.")
