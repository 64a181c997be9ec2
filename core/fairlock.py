"""The model's lock, handed over in turn, so that no visitor keeps the others waiting.

One model serves every session of the process, and a forward pass must not interleave with
another inside a layer, so the model is behind a lock. A plain threading.Lock lets whoever
holds it keep it: a 30-second attention pass over an imported 8,000-token conversation then
freezes every other visitor's chat for 30 seconds. This lock is the same lock with turns:

- a holder calls yield_turn() between chunks of its work (a long pass between decoder
  layers, a reply between tokens); when somebody waits who may go first, the lock goes to
  them and the holder queues again;
- who goes first: a chat step (CHAT) before a long pass (PASS); within a kind, first come,
  first served. So three chats share the model token by token, and a long pass waits for the
  chats, a chunk at a time. A pass that has waited PATIENCE_S counts as a chat, so a class
  that never stops chatting slows a pass down but cannot starve it.

Drop-in for threading.Lock where the app used one: `with lm.lock:`, acquire(blocking,
timeout), release(), locked().
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

CHAT = 0  # a reply being written: short steps, a person watching each token
PASS = 1  # an explanation pass, a warm-up, a background prefill: anything else
PATIENCE_S = 2.0  # a pass that waited this long goes in turn with the chats
TICK_S = 0.05  # waiters look again this often (a pass's patience runs out with no event)


class FairLock:
    def __init__(self, patience_s: float = PATIENCE_S) -> None:
        self.patience_s = patience_s
        self._cond = threading.Condition(threading.Lock())
        self._held: int | None = None  # the holder's kind (CHAT or PASS); None: free
        self._queue: list[tuple[int, int, float]] = []  # (kind, ticket, since) of every waiter
        self._tickets = itertools.count()

    def _rank(self, waiter: tuple[int, int, float], now: float) -> tuple[int, int]:
        kind, ticket, since = waiter
        return (CHAT if kind == CHAT or now - since >= self.patience_s else PASS, ticket)

    def _next(self) -> tuple[int, int, float]:
        now = time.monotonic()
        return min(self._queue, key=lambda w: self._rank(w, now))

    def acquire(
        self,
        blocking: bool = True,
        timeout: float = -1,
        kind: int = PASS,
        cancel: Callable[[], bool] | None = None,
    ) -> bool:
        """As threading.Lock.acquire; kind: CHAT or PASS; cancel: checked while waiting (every
        TICK_S), a True gives up like a timeout, without losing the place in line before that."""
        with self._cond:
            if self._held is None and not self._queue:
                self._held = kind
                return True
            if not blocking:
                return False
            me = (kind, next(self._tickets), time.monotonic())
            self._queue.append(me)
            deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
            while self._held is not None or self._next() != me:
                left = TICK_S if deadline is None else min(TICK_S, deadline - time.monotonic())
                if left <= 0 or (cancel is not None and cancel()):
                    self._queue.remove(me)
                    self._cond.notify_all()  # the next in line may be free to go now
                    return False
                self._cond.wait(left)
            self._queue.remove(me)
            self._held = kind
            return True

    def release(self) -> None:
        with self._cond:
            if self._held is None:
                raise RuntimeError("release of an unlocked FairLock")
            self._held = None
            self._cond.notify_all()

    def locked(self) -> bool:
        return self._held is not None

    def __enter__(self) -> FairLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def waiting(self, before: int | None = None) -> int:
        """How many wait; before=kind: how many would go before a holder of that kind."""
        with self._cond:
            now = time.monotonic()
            return sum(1 for w in self._queue if before is None or self._rank(w, now)[0] <= before)

    def yield_turn(self) -> bool:
        """From the holder, between two chunks of its work: when a waiter may go first (a chat
        before a pass, a pass that waited too long, an equal kind in turn), hand the lock over
        and queue again. True when the holder waited (it then holds the lock again, with
        anything set up under it, such as torch's thread count, possibly changed)."""
        with self._cond:
            mine = self._held
            if mine is None:
                raise RuntimeError("yield_turn without holding the lock")
            now = time.monotonic()
            if not any(self._rank(w, now)[0] <= mine for w in self._queue):
                return False
        self.release()
        self.acquire(kind=mine)
        return True
