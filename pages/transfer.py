"""Export the conversation (every trace included) as JSON, and load one back.

Not a page: a widget. pages/chat.py calls it in the sidebar (`with st.sidebar: transfer.show()`);
the candidates page shows it too. A rejected file leaves the current conversation untouched.
"""

from __future__ import annotations

import streamlit as st

from core.conversation import Message
from core.export import MAX_BYTES, ImportRejected, conversation_json, load_conversation
from pages import common, persist

UPLOAD = "transfer.upload"
RESULT = "transfer.result"  # ("success" | "error", text) from the last import
FRESH = "transfer.fresh"  # True on the run right after an import attempt


def _import() -> None:
    """on_change of the uploader: runs before the script, so it may set other widgets' state."""
    uploaded = st.session_state.get(UPLOAD)
    if uploaded is None:
        return
    lm = common.chat_model(full=False)  # only its name and vocabulary
    st.session_state[FRESH] = True
    try:
        loaded = load_conversation(uploaded.getvalue(), lm.name, lm.vocab_size, lm.context_length)
    except ImportRejected as exc:
        st.session_state[RESULT] = ("error", f"{uploaded.name} was not loaded: {exc}")
        return
    if loaded[0].role != "system":
        loaded.insert(0, Message("system", common.system_prompt()))
    persist.start_new()  # an import is a conversation of its own: the one shown stays as it was saved
    history = common.messages()
    history[:] = loaded  # in place: pages hold references to this list
    # both the widget's state and the kept copy: on another page Streamlit drops the former,
    # and restore() would then bring back the old prompt over the imported one
    st.session_state[common.SYSTEM_PROMPT] = loaded[0].content
    st.session_state[common.KEPT + common.SYSTEM_PROMPT] = loaded[0].content
    for key in ("chat.pending", "chat.previous_take", common.SELECTED):
        st.session_state.pop(key, None)
    replies = sum(1 for m in loaded if m.role == "assistant")
    st.session_state[RESULT] = (
        "success",
        f"Loaded {uploaded.name}: {len(loaded) - 1} messages, {replies} replies.",
    )


def show() -> None:
    """Download button for the conversation, and an uploader that replaces it with a saved one."""
    lm = common.chat_model(full=False)  # only its name and vocabulary
    history = common.messages()
    st.download_button(
        "⬇ Conversation with traces (JSON)",
        data=lambda: conversation_json(history, lm.name),
        file_name="glassbox-conversation.json",
        mime="application/json",
        key="transfer.download",
        disabled=not any(m.role == "assistant" for m in history),
        on_click="ignore",
    )
    st.file_uploader(
        "Load a saved conversation (JSON)",
        type=["json"],
        key=UPLOAD,
        on_change=_import,
        max_upload_size=MAX_BYTES // (1024 * 1024),
        help="A file exported from Glassbox with this model. It replaces the current conversation; "
        "every reply can be explained again without the model running.",
    )
    result = st.session_state.get(RESULT)
    if result:
        kind, text = result
        (st.success if kind == "success" else st.error)(text)
