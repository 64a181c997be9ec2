"""A small bounded cache for per-message views: revisits are instant, memory stays flat."""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

V = TypeVar("V")


def size_of(value: Any) -> int:
    """Bytes held by a cached value: tensors, arrays and DataFrames by their data, tuples summed."""
    if hasattr(value, "untyped_storage"):  # torch.Tensor
        return int(value.numel() * value.element_size())
    if hasattr(value, "nbytes"):  # numpy.ndarray
        return int(value.nbytes)
    if hasattr(value, "memory_usage"):  # pandas.DataFrame
        return int(value.memory_usage(index=True, deep=True).sum())
    if isinstance(value, tuple | list):
        return sum(size_of(v) for v in value)
    return sys.getsizeof(value)


class BoundedCache(Generic[V]):
    """Least-recently-used cache holding at most `max_entries` values. Thread-safe.

    With `max_bytes`, it also evicts the oldest entries until the values' total size (by
    size_of) fits; the newest entry is always kept, so one oversized value still caches.

    cache.get_or_compute(("attention", trace_id, layer), lambda: expensive()) -> value
    """

    def __init__(self, max_entries: int = 8, max_bytes: int | None = None) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._data: OrderedDict[Hashable, V] = OrderedDict()
        self._sizes: dict[Hashable, int] = {}
        self._lock = threading.Lock()

    def get_or_compute(self, key: Hashable, compute: Callable[[], V]) -> V:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        value = compute()  # outside the lock: computing may take seconds
        size = size_of(value) if self.max_bytes is not None else 0
        with self._lock:
            self._data[key] = value
            self._sizes[key] = size
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries or (
                self.max_bytes is not None and len(self._data) > 1 and self.total_bytes > self.max_bytes
            ):
                old, _ = self._data.popitem(last=False)
                self._sizes.pop(old, None)
        return value

    @property
    def total_bytes(self) -> int:
        """Bytes held, as measured when each value was stored (0 without max_bytes)."""
        return sum(self._sizes.values())

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._data

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._sizes.clear()
