"""The session's conversation and the store: opened from ?c=, saved as it changes.

Not a page. app.py calls open_from_url() before every page and save_if_changed() after it;
the chat page saves a streaming reply with save_streaming(). A database that fails never
stops the chat: the conversation stays in the session and the page says it is not kept.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from core.conversation import Message
from core.generation import RUNNING, prefill
from core.kvcache import SessionKV
from core.store import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_CONVERSATIONS,
    LimitReached,
    Store,
    StoreError,
    StoreUnavailable,
    default_sqlite_url,
    looks_like_id,
)
from pages import common
from pages.owner import owner_token

log = logging.getLogger(__name__)
CID = "conv.id"  # the stored conversation shown in this session (None: not saved yet)
VERSION = "conv.version"  # its version when this session last read or wrote it
READONLY = "conv.readonly"  # a shared snapshot: shown, never changed
PRINT = "conv.fingerprint"  # what was last saved, to save only on change
PROBLEM = "conv.problem"  # (kind, text, when) of the last failed save, None when saving works
FLASH = "conv.flash"  # a message for the next run ("this conversation does not exist…")
KV = "chat.kv"
RETRY_AFTER = 15.0  # seconds: after a failed save, try again at most this often
GONE = "This conversation does not exist or is no longer shared. Here is a new chat instead."
CUT_OFF = "This reply was cut off (the app restarted or the tab closed)."  # a reply's notice


@dataclass(frozen=True)
class Config:
    url: str
    max_conversations: int
    max_bytes: int
    cleanup_days: float | None


def data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(common.config("GLASSBOX_DATA_DIR") or Path(base) / "glassbox")


def config() -> Config:
    """GLASSBOX_DB_URL and the limits, from the environment or Streamlit secrets."""

    def number(name: str, default: float) -> float:
        try:
            return float(common.config(name) or default)
        except ValueError:
            log.warning("%s is not a number; using %s", name, default)
            return default

    days = number("GLASSBOX_CLEANUP_DAYS", 0)
    return Config(
        url=common.config("GLASSBOX_DB_URL") or default_sqlite_url(data_dir()),
        max_conversations=int(number("GLASSBOX_MAX_CONVERSATIONS", DEFAULT_MAX_CONVERSATIONS)),
        max_bytes=int(number("GLASSBOX_MAX_CONVERSATION_MB", DEFAULT_MAX_BYTES / 2**20) * 2**20),
        cleanup_days=days or None,
    )


@st.cache_resource(show_spinner=False)
def _store(cfg: Config) -> Store:
    store = Store(cfg.url, cfg.max_conversations, cfg.max_bytes)
    if cfg.cleanup_days:
        threading.Thread(target=_cleanup_loop, args=(store, cfg.cleanup_days), daemon=True).start()
    return store


def _cleanup_loop(store: Store, days: float) -> None:
    while True:
        try:
            removed = store.cleanup(days)
            if removed:
                log.info("clean-up: deleted %d conversations unchanged for %s days", removed, days)
        except StoreError:
            log.warning("clean-up could not reach the database", exc_info=True)
        time.sleep(3600)


def store() -> Store:
    return _store(config())


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
    if not load(wanted):
        st.session_state[FLASH] = GONE
        start_new()


def _follow_other_tabs(cid: str) -> None:
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
        _problem("unavailable", f"The conversation could not be opened: {exc}.")
        return False
    if stored is None:
        return False
    history = common.messages()
    loaded = stored.messages
    if not loaded or loaded[0].role != "system":
        loaded.insert(0, Message("system", common.system_prompt()))
    st.session_state[PRINT] = fingerprint(loaded, stored.settings)  # as stored, before the marks below
    for m in loaded:
        for take in [m, *m.alternatives]:
            if (
                take.trace is not None
                and take.trace.finish_reason == "running"
                and take.trace.trace_id not in RUNNING
            ):
                take.trace.finish_reason = "stopped"  # cut off by a restart or a closed tab
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
    except LimitReached as exc:
        _problem("limit", str(exc))
        return
    except StoreUnavailable as exc:
        _problem("unavailable", f"This conversation will not be kept: {exc}. The chat goes on in this tab.")
        return
    except StoreError as exc:
        _problem("error", str(exc))
        return
    st.session_state[PRINT] = digest
    if st.session_state.pop(PROBLEM, None) is not None:
        st.toast("The conversation is being saved again.", icon="💾")


def save_streaming(reply: Message) -> None:
    """During a reply: its text and new steps (called every few tokens by the chat page)."""
    cid = conversation_id()
    if cid is None or readonly() or _waiting_to_retry():
        return
    try:
        st.session_state[VERSION] = store().save_reply(cid, owner_token(), reply)
    except StoreError as exc:
        _problem("unavailable", f"This reply is not being saved: {exc}. It stays in this tab.")


def _waiting_to_retry() -> bool:
    problem = st.session_state.get(PROBLEM)
    return problem is not None and time.monotonic() - problem[2] < RETRY_AFTER


def _problem(kind: str, text: str) -> None:
    log.warning("store: %s", text)
    st.session_state[PROBLEM] = (kind, text, time.monotonic())


def show_status() -> None:
    """Messages about the store for this run: a set-aside file, a failed save, a bad link."""
    for note in store().notices:
        if not st.session_state.get("conv.noticed." + note[:40]):
            st.warning(note, icon="🗄️")
            st.session_state["conv.noticed." + note[:40]] = True
    flash = st.session_state.pop(FLASH, None)
    if flash:
        st.warning(flash, icon="🔗")
    problem = st.session_state.get(PROBLEM)
    if problem is not None:
        st.warning(problem[1], icon="💾")
