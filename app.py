"""Glassbox Chat: the entry point. Sets up the page, the navigation and the shared sidebar."""

from pathlib import Path

import streamlit as st

from core.html import PAGE_STYLE, close_sidebar_script
from pages import preview

st.set_page_config(page_title="Glassbox Chat", page_icon="🔍", layout="wide")

HERE = Path(__file__).parent
# (file, title, icon). A page is listed once its file exists, so the menu never links to nothing.
PAGES = [
    ("pages/chat.py", "Chat", "💬"),
    ("pages/candidates.py", "Next-word candidates", "🎲"),
    ("pages/why.py", "Why this word?", "🔎"),
    ("pages/tokens.py", "Tokenization", "🧩"),
    ("pages/embeddings.py", "Embeddings", "🧭"),
    ("pages/attention.py", "Attention", "👀"),
    ("pages/walkthrough.py", "From prompt to reply", "🚶"),
    ("pages/encoder_decoder.py", "Encoder vs decoder", "🔀"),
    ("pages/about.py", "How to read this app", "📖"),
]

pages = [
    st.Page(path, title=title, icon=icon, default=(i == 0))
    for i, (path, title, icon) in enumerate(PAGES)
    if (HERE / path).is_file()
]
navigation = st.navigation(pages)
# A restarted server: the stored conversation is drawn before the model code loads, below the
# menu (drawn first, so the menu is never Streamlit's own list of pages/). See pages/preview.py.
first_paint = st.empty() if preview.cold() and navigation.url_path == pages[0].url_path else None
early = first_paint is not None and preview.show_stored(first_paint)

from core.memory import give_back_freed_memory  # noqa: E402 - torch and the model code: seconds, once
from pages import history, persist  # noqa: E402

persist.open_from_url()  # ?c=<id>: the stored conversation this page shows (core/store.py)
with st.sidebar:
    history.show()
persist.show_status()
st.html(PAGE_STYLE)  # a stylesheet alone takes no room on the page
if early and first_paint is not None:
    first_paint.empty()  # the page draws the real conversation now
try:
    navigation.run()
finally:  # also when the page stops or reruns early
    if st.session_state.get("app.page", navigation.url_path) != navigation.url_path:  # a page switch
        visit = st.session_state["app.visit"] = st.session_state.get("app.visit", 0) + 1
        # at the sidebar's end, where the empty element moves nothing; on a phone it closes the sidebar
        st.sidebar.html(close_sidebar_script(visit), unsafe_allow_javascript=True)
    st.session_state["app.page"] = navigation.url_path
    persist.save_if_changed()  # whatever the page changed is written now (a reply, a branch, a setting)
    give_back_freed_memory()  # long chats: freed explanation tensors go back to the OS (core/memory.py)
