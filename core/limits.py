"""Per-session limits for a public deployment: the model is shared, so nobody may take it all.

On a public deployment (GLASSBOX_PUBLIC=1, or Streamlit Community Cloud, detected), each
session may
- run one generation and one explanation pass at a time (Activity);
- have the model write at most `tokens_per_minute` tokens and read at most
  `prompt_tokens_per_minute` prompt tokens in any 60 seconds (RateLimiter), told how long
  to wait when it asks for more.
Locally everything is off: the one visitor is the machine's owner.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

WINDOW_S = 60.0
DEFAULT_TOKENS_PER_MINUTE = 1_500  # about 50 s of decoding on a 2-core CPU
DEFAULT_PROMPT_TOKENS_PER_MINUTE = 20_000  # ten turns at the full default budget of 2,048


@dataclass(frozen=True)
class Limits:
    public: bool
    tokens_per_minute: int = DEFAULT_TOKENS_PER_MINUTE
    prompt_tokens_per_minute: int = DEFAULT_PROMPT_TOKENS_PER_MINUTE


def on_community_cloud(app_dir: Path | None = None) -> bool:
    """Streamlit Community Cloud runs every app from a clone under /mount/src/."""
    where = Path(app_dir or Path(__file__).resolve().parents[1])
    return where.parts[:3] == ("/", "mount", "src")


def limits_from(setting: Callable[[str], str | None], app_dir: Path | None = None) -> Limits:
    """GLASSBOX_PUBLIC (1/true/on or 0/false/off; unset: on only on Community Cloud),
    GLASSBOX_TOKENS_PER_MINUTE and GLASSBOX_PROMPT_TOKENS_PER_MINUTE, read through `setting`
    (the environment, else Streamlit secrets)."""
    raw = (setting("GLASSBOX_PUBLIC") or "").strip().lower()
    public = raw in ("1", "true", "yes", "on") if raw else on_community_cloud(app_dir)

    def number(name: str, default: int) -> int:
        try:
            value = int(setting(name) or default)
        except ValueError:
            return default
        return value if value > 0 else default

    return Limits(
        public=public,
        tokens_per_minute=number("GLASSBOX_TOKENS_PER_MINUTE", DEFAULT_TOKENS_PER_MINUTE),
        prompt_tokens_per_minute=number(
            "GLASSBOX_PROMPT_TOKENS_PER_MINUTE", DEFAULT_PROMPT_TOKENS_PER_MINUTE
        ),
    )


class RateLimiter:
    """Token counts per (session, kind) over a sliding window. Thread-safe; one per process."""

    def __init__(self, window_s: float = WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s, self.clock = window_s, clock
        self._events: dict[tuple[str, str], deque[tuple[float, int]]] = {}
        self._lock = threading.Lock()

    def _live(self, key: tuple[str, str], now: float) -> deque[tuple[float, int]]:
        events = self._events.setdefault(key, deque())
        while events and events[0][0] <= now - self.window_s:
            events.popleft()
        return events

    def used(self, who: str, kind: str) -> int:
        with self._lock:
            return sum(n for _, n in self._live((who, kind), self.clock()))

    def wait_for(self, who: str, kind: str, amount: int, cap: int) -> float:
        """Seconds until `amount` more fits under `cap` in the window (0: now). An amount
        larger than the cap fits once the window is empty."""
        with self._lock:
            now = self.clock()
            events = self._live((who, kind), now)
            total = sum(n for _, n in events)
            need = total + min(amount, cap) - cap  # tokens that must leave the window first
            if need <= 0:
                return 0.0
            gone = 0
            for at, n in events:
                gone += n
                if gone >= need:
                    return max(0.0, at + self.window_s - now)
            return self.window_s

    def charge(self, who: str, kind: str, amount: int) -> None:
        if amount <= 0:
            return
        with self._lock:
            self._live((who, kind), self.clock()).append((self.clock(), amount))

    def forget(self, who: str | None = None) -> None:
        """Drop one session's counts (None: every session's)."""
        with self._lock:
            for key in [k for k in self._events if who is None or k[0] == who]:
                del self._events[key]


class Activity:
    """What each session is running now: at most one of each kind ("generation", "pass")."""

    def __init__(self) -> None:
        self._running: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def begin(self, who: str, kind: str) -> bool:
        with self._lock:
            if (who, kind) in self._running:
                return False
            self._running.add((who, kind))
            return True

    def end(self, who: str, kind: str) -> None:
        with self._lock:
            self._running.discard((who, kind))


def wait_message(what: str, cap: int, seconds: float) -> str:
    """E.g. "This app is shared: each visitor may have the model write 1,500 tokens a minute.
    Try again in 23 s." """
    return (
        f"This app is shared, so each visitor may have the model {what} {cap:,} tokens a minute. "
        f"Try again in {max(1, round(seconds))} s."
    )
