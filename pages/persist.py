"""The session's conversation and the store: opened from ?c=, saved as it changes.

Not a page. app.py calls open_from_url() before every page and save_if_changed() after it;
the chat page saves a streaming reply with save_streaming(). A database that fails never
stops the chat: the conversation stays in the session and the page says it is not kept.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time

import streamlit as st
from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx

from core.conversation import Message
from core.generation import RUNNING, prefill
from core.kvcache import SessionKV
from core.store import LimitReached, StoreError, StoreUnavailable, looks_like_id
from pages import common
from pages.owner import owner_token
from pages.storage import config, data_dir, store  # noqa: F401 - part of this module's interface

log = logging.getLogger(__name__)
CID = "conv.id"  # the stored conversation shown in this session (None: not saved yet)
VERSION = "conv.version"  # its version when this session last read or wrote it
READONLY = "conv.readonly"  # a shared snapshot: shown, never changed
PRINT = "conv.fingerprint"  # what was last saved, to save only on change
PROBLEM = "conv.problem"  # (kind, text, when) of the last failed save, None when saving works
FLASH = "conv.flash"  # a message for the next run ("this conversation does not exist…")
KV = "chat.kv"
RETRY_AFTER = 15.0  # seconds: after a failed save, try again at most this often (GLASSBOX_SAVE_RETRY_S)
UNREACHABLE = "conv.unreachable"  # the ?c= id that could not be opened: the database did not answer
SLOT = "conv.status_slot"  # (this run's cursors, the placeholder show_status made for save problems)
GONE = "This conversation does not exist or is no longer shared. Here is a new chat instead."
CUT_OFF = "This reply was cut off (the app restarted or the tab closed)."  # a reply's notice


def conversation_id() -> str | None:
    return st.session_state.get(CID)


def readonly() -> bool:
    return bool(st.session_state.get(READONLY))


# -- opening --------------------------------------------------------------------------------
def open_from_url() -> None:
    """Before a page: show the conversation the URL names, or keep the URL naming the one shown.

    A page switch through the menu drops the query string, so ?c= is put back; another tab's
    changes to the same conversation are read in here, on this tab's next rerun.
    """
    wanted = st.query_params.get("c")
    current = conversation_id()
    if wanted is None:
        if current is not None:
            st.query_params["c"] = current
            _follow_other_tabs(current)  # a menu switch is a rerun too
        return
    if wanted == current:
        _follow_other_tabs(current)
        return
    if st.session_state.get(UNREACHABLE) == wanted and (
        _waiting_to_retry() or any(m.role == "user" for m in common.messages())
    ):
        return  # tried a moment ago; or the visitor chats in a new chat meanwhile, which stays
    if not load(wanted):
        if st.session_state.get(UNREACHABLE) == wanted:
            return  # load() said why; the link stays in the URL and is tried again on a later run
        st.session_state[FLASH] = GONE
        start_new()


def _follow_other_tabs(cid: str) -> None:
    if _waiting_to_retry():
        return  # the database failed a moment ago: no wait on every run for it
    try:
        version = store().version(cid)
    except StoreUnavailable:
        return  # the copy in the session stands until the database answers again
    if version is None:
        st.session_state[FLASH] = GONE
        start_new()
    elif version != st.session_state.get(VERSION) and not _streaming_here():
        load(cid)


def _streaming_here() -> bool:
    return any(m.trace is not None and m.trace.trace_id in RUNNING for m in common.messages())


def load(cid: str) -> bool:
    """Put a stored conversation into this session. False when it is not there or not theirs."""
    if not looks_like_id(cid):
        return False
    try:
        stored = store().load(cid, owner_token())
    except StoreUnavailable as exc:
        # Not "does not exist": it may well exist. The link is kept and tried again.
        st.session_state[UNREACHABLE] = cid
        _problem(
            "open",
            f"This conversation cannot be opened right now: {exc}. "
            "It opens here once the database answers again.",
        )
        return False
    if stored is None:
        return False
    if st.session_state.pop(UNREACHABLE, None) is not None:
        _clear_problem()
    history = common.messages()
    loaded = stored.messages
    if not loaded or loaded[0].role != "system":
        loaded.insert(0, Message("system", common.system_prompt()))
    st.session_state[PRINT] = fingerprint(loaded, stored.settings)  # as stored, before the marks below
    # subtle: a click during a reply (Stop) starts a new run while the old one still saves, so
    # the version read here can be our own write. A reply this session holds with at least as
    # many steps is the newer copy: keep it rather than the stored one (a trace only grows).
    mine = {t.trace.trace_id: t for m in history for t in [m, *m.alternatives] if t.trace is not None}
    for m in loaded:
        for take in [m, *m.alternatives]:
            held = mine.get(take.trace.trace_id) if take.trace is not None else None
            if held is not None and len(held.trace.steps) >= len(take.trace.steps):
                take.trace, take.content = held.trace, held.content
    for m in loaded:
        for take in [m, *m.alternatives]:
            if (
                take.trace is not None
                and take.trace.finish_reason == "running"
                and take.trace.trace_id not in RUNNING
            ):
                # cut off by a restart or a closed tab. (Were another app process still writing
                # it, its next save wins: a stored trace only grows, core.store._older_copy.)
                take.trace.finish_reason = "stopped"
                if CUT_OFF not in take.trace.notices:
                    take.trace.notices.append(CUT_OFF)
    history[:] = loaded  # in place: pages hold references to this list
    st.session_state[CID] = stored.id
    st.session_state[VERSION] = stored.version
    st.session_state[READONLY] = stored.kind == "share" or not stored.mine
    st.session_state.pop(common.SELECTED, None)
    common.apply_settings(stored.settings, loaded[0].content)
    st.query_params["c"] = stored.id
    _warm_kv(loaded)
    return True


def _warm_kv(history: list[Message]) -> None:
    """Read the restored history into this session's KV cache in the background (one prefill)."""
    last = next((m.trace for m in reversed(history) if m.trace is not None), None)
    if last is None or not last.steps:
        return
    lm = common.chat_model(full=False)
    kv = st.session_state.setdefault(KV, SessionKV())
    threading.Thread(
        target=prefill, args=(lm, kv, last.full_ids), name="glassbox-restore-kv", daemon=True
    ).start()


def start_new() -> None:
    """An empty chat (not saved until its first message)."""
    history = common.messages()
    history[:] = [Message("system", common.system_prompt())]
    for key in (
        CID,
        VERSION,
        READONLY,
        PRINT,
        PROBLEM,
        UNREACHABLE,
        common.SELECTED,
        "chat.pending",
        "chat.previous_take",
    ):
        st.session_state.pop(key, None)
    if "c" in st.query_params:
        del st.query_params["c"]


# -- saving ---------------------------------------------------------------------------------
def fingerprint(history: list[Message], settings: dict) -> str:
    """A digest of everything saved: messages, takes, trace lengths and endings, settings."""
    h = hashlib.sha256(repr(sorted(settings.items())).encode())
    for m in history:
        for take in [m, *m.alternatives]:
            t = take.trace
            h.update(repr((take.id, take.role, take.content, take.notice, len(m.alternatives))).encode())
            if t is not None:
                h.update(repr((t.trace_id, len(t.steps), t.finish_reason, t.total_s, t.notices)).encode())
    return h.hexdigest()


def save_if_changed() -> None:
    """After a page: write the conversation if anything in it changed (creating it if new)."""
    if readonly():
        return
    history = common.messages()
    cid = conversation_id()
    if cid is None and not any(m.role == "user" for m in history):
        return  # nothing worth keeping yet
    settings = common.saved_settings()
    digest = fingerprint(history, settings)
    if digest == st.session_state.get(PRINT) or _waiting_to_retry():
        return
    lm = common.chat_model(full=False)
    try:
        if cid is None:
            cid = store().create(owner_token(), history, settings, lm.name)
            st.session_state[CID] = cid
            st.session_state[VERSION] = store().version(cid)
            st.query_params["c"] = cid
        else:
            st.session_state[VERSION] = store().save(cid, owner_token(), history, settings)
    except StoreError as exc:
        _save_failed(exc)
        return
    st.session_state[PRINT] = digest
    if st.session_state.get(PROBLEM) is not None:
        _clear_problem()
        st.toast("The conversation is being saved again.", icon="💾")


def save_streaming(reply: Message) -> None:
    """During a reply: its text and new steps (called every few tokens by the chat page).

    Not after a failed save: the stored rows may lack this reply's message, so only the full
    save (save_if_changed, after the reply) can write it once the database answers again."""
    cid = conversation_id()
    if cid is None or readonly() or st.session_state.get(PROBLEM) is not None:
        return
    try:
        st.session_state[VERSION] = store().save_reply(cid, owner_token(), reply)
    except StoreError as exc:
        _save_failed(exc)


def _save_failed(exc: StoreError) -> None:
    if isinstance(exc, StoreUnavailable):
        _problem("unavailable", f"This conversation will not be kept: {exc}. The chat goes on in this tab.")
    elif isinstance(exc, LimitReached):
        _problem("limit", str(exc))
    else:
        _problem("error", str(exc))


def retry_after() -> float:
    """Seconds between tries after a failed save: GLASSBOX_SAVE_RETRY_S, else RETRY_AFTER."""
    try:
        return max(0.0, float(common.config("GLASSBOX_SAVE_RETRY_S") or RETRY_AFTER))
    except ValueError:
        log.warning("GLASSBOX_SAVE_RETRY_S is not a number; using %s", RETRY_AFTER)
        return RETRY_AFTER


def _waiting_to_retry() -> bool:
    problem = st.session_state.get(PROBLEM)
    return problem is not None and time.monotonic() - problem[2] < retry_after()


def _problem(kind: str, text: str) -> None:
    """Remember a failure, and show it now: a save fails during the page, after show_status ran."""
    log.warning("store: %s", text)
    st.session_state[PROBLEM] = (kind, text, time.monotonic())
    slot = _slot()
    if slot is not None:
        slot.warning(text, icon="💾")


def _clear_problem() -> None:
    st.session_state.pop(PROBLEM, None)
    slot = _slot()
    if slot is not None:
        slot.empty()


def _slot():
    """This run's placeholder for the save problem (None before show_status, or from an earlier run)."""
    ctx = get_script_run_ctx()
    held = st.session_state.get(SLOT)
    if ctx is None or held is None or held[0] is not ctx.cursors:  # cursors: new for every run
        return None
    return held[1]


def show_status() -> None:
    """Messages about the store for this run: a set-aside file, a failed save, a bad link."""
    for note in store().notices:
        if not st.session_state.get("conv.noticed." + note):
            st.warning(note, icon="🗄️")
            st.session_state["conv.noticed." + note] = True
    flash = st.session_state.pop(FLASH, None)
    if flash:
        st.warning(flash, icon="🔗")
    slot = st.empty()  # a save that fails later in this run shows here, at once
    ctx = get_script_run_ctx()
    st.session_state[SLOT] = (ctx.cursors if ctx is not None else None, slot)
    problem = st.session_state.get(PROBLEM)
    if problem is not None:
        slot.warning(problem[1], icon="💾")
