"""The sidebar's history: this visitor's conversations (new, switch, rename, delete) and sharing.

Not a page: app.py draws it in the sidebar of every page. Changes run in button callbacks,
before the page script, so the chat's widgets can take the opened conversation's settings.
"""

from __future__ import annotations

import streamlit as st

from core.store import StoreError
from pages import persist
from pages.owner import owner_token

SHOWN = 30  # conversations listed before "show all"
CHAT_PAGE = "pages/chat.py"


def _new_chat() -> None:
    persist.start_new()
    st.session_state["history.go_chat"] = True


def _open(cid: str) -> None:
    if not persist.load(cid):
        st.session_state[persist.FLASH] = persist.GONE
        persist.start_new()
    st.session_state["history.go_chat"] = True


def _rename(cid: str) -> None:
    _try(lambda: persist.store().rename(cid, owner_token(), st.session_state.get("history.title", "")))


def _delete(cid: str) -> None:
    if _try(lambda: persist.store().delete(cid, owner_token())):
        persist.start_new()
        st.session_state["history.go_chat"] = True
        st.toast("The conversation was deleted.", icon="🗑")


def _share(cid: str) -> None:
    persist.save_if_changed()  # the snapshot holds everything up to now
    _try(lambda: persist.store().share(cid, owner_token()))


def _revoke(share_id: str) -> None:
    if _try(lambda: persist.store().revoke(share_id, owner_token())):
        st.toast("The link was revoked: it now opens nothing.", icon="🔒")


def _fork(cid: str) -> None:
    try:
        new = persist.store().fork(cid, owner_token())
    except StoreError as exc:
        st.session_state[persist.FLASH] = str(exc)
        return
    persist.load(new)
    st.session_state["history.go_chat"] = True
    st.toast("A copy is now in your conversations: you can continue it.", icon="🍴")


def _try(action) -> bool:
    try:
        action()
        return True
    except StoreError as exc:
        st.session_state[persist.FLASH] = str(exc)
        return False


def share_url(cid: str) -> str:
    base = st.context.url.split("?")[0] if st.context.url else ""
    root = base.rsplit("/", 1)[0] if base.count("/") > 2 else base
    return f"{root}/?c={cid}"


def show() -> None:
    """The history block of the sidebar."""
    if st.session_state.pop("history.go_chat", False) and st.context.url and "/?" not in st.context.url:
        st.switch_page(CHAT_PAGE)
    sb = st.sidebar
    current = persist.conversation_id()
    sb.button("➕ New chat", key="history.new", on_click=_new_chat, width="stretch")
    if persist.readonly() and current is not None:
        sb.info("You are viewing a **read-only** shared conversation.", icon="👀")
        sb.button(
            "🍴 Continue from here",
            key="history.fork",
            on_click=_fork,
            args=(current,),
            width="stretch",
            help="Copy this conversation into your own history, where you can continue it.",
        )
    try:
        items = persist.store().list(owner_token())
    except StoreError:
        sb.caption("Your saved conversations cannot be listed right now (the database does not answer).")
        return
    with sb.expander(f"🗂 Your conversations ({len(items)})", expanded=bool(items)):
        if not items:
            st.caption("Conversations are saved as you chat and listed here.")
        show_all = st.session_state.get("history.all", False)
        for item in items if show_all else items[:SHOWN]:
            mark = "▶ " if item.id == current else ""
            st.button(
                f"{mark}{item.title}",
                key=f"history.open.{item.id}",
                on_click=_open,
                args=(item.id,),
                width="stretch",
                type="primary" if item.id == current else "secondary",
            )
        if len(items) > SHOWN and not show_all:
            st.checkbox(f"Show all {len(items)}", key="history.all")
    if current is not None and not persist.readonly():
        manage(current, next((i.title for i in items if i.id == current), ""))


def manage(cid: str, title: str) -> None:
    """Rename, share and delete the conversation shown."""
    with st.sidebar.popover("⚙️ This conversation", width="stretch"):
        st.text_input("Title", value=title, key="history.title", max_chars=200)
        st.button("Rename", key="history.rename", on_click=_rename, args=(cid,))
        st.divider()
        st.markdown("**Share a read-only link**")
        st.caption(
            "Freezes the conversation as it is now. Anyone with the link sees it and every "
            "explanation, but cannot change it."
        )
        st.button("🔗 Create a share link", key="history.share", on_click=_share, args=(cid,))
        try:
            links = persist.store().shares(cid, owner_token())
        except StoreError:
            links = []
        for link in links:
            st.code(share_url(link.id), language=None)
            st.button("Revoke this link", key=f"history.revoke.{link.id}", on_click=_revoke, args=(link.id,))
        st.divider()
        sure = st.checkbox("Yes, delete it for good", key="history.sure")
        st.button(
            "🗑 Delete this conversation",
            key="history.delete",
            on_click=_delete,
            args=(cid,),
            disabled=not sure,
            help="Deletes the conversation, every reply's trace and its share links from the database.",
        )
