"""Where conversations are kept: the store's settings and the one Store of the process.

Light on purpose (streamlit, SQLAlchemy and numpy; no torch, no model), so that app.py can
read a stored conversation on a restarted server's first run before the model code is
imported (pages/preview.py). pages/persist.py is the rest of the storage glue.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from core.store import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_CONVERSATIONS,
    Store,
    StoreError,
    default_sqlite_url,
)

log = logging.getLogger(__name__)


def setting(name: str) -> str | None:
    """A setting from the environment, else from Streamlit secrets, else None."""
    if os.environ.get(name):
        return os.environ[name]
    try:
        value = st.secrets.get(name)
    except Exception:  # no secrets file at all is the common, fine case
        value = None
    return str(value) if value else None


@dataclass(frozen=True)
class Config:
    url: str
    max_conversations: int
    max_bytes: int
    cleanup_days: float | None


def data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(setting("GLASSBOX_DATA_DIR") or Path(base) / "glassbox")


def config() -> Config:
    """GLASSBOX_DB_URL and the limits, from the environment or Streamlit secrets."""

    def number(name: str, default: float) -> float:
        try:
            return float(setting(name) or default)
        except ValueError:
            log.warning("%s is not a number; using %s", name, default)
            return default

    days = number("GLASSBOX_CLEANUP_DAYS", 0)
    return Config(
        url=setting("GLASSBOX_DB_URL") or default_sqlite_url(data_dir()),
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
