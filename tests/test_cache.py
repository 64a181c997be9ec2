"""BoundedCache: least-recently-used eviction by entry count and by bytes held."""

import numpy as np
import torch

from core.cache import BoundedCache, size_of


def test_entries_bound_evicts_least_recently_used() -> None:
    cache: BoundedCache[int] = BoundedCache(max_entries=2)
    cache.get_or_compute("a", lambda: 1)
    cache.get_or_compute("b", lambda: 2)
    cache.get_or_compute("a", lambda: 99)  # a hit: "a" becomes the newest
    cache.get_or_compute("c", lambda: 3)
    assert "a" in cache and "c" in cache and "b" not in cache
    assert cache.get_or_compute("a", lambda: 99) == 1


def test_bytes_bound_evicts_until_it_fits_but_keeps_the_newest() -> None:
    cache: BoundedCache[np.ndarray] = BoundedCache(max_entries=10, max_bytes=3_000)
    for key in "abc":
        cache.get_or_compute(key, lambda: np.zeros(125))  # 1,000 bytes each
    assert len(cache) == 3 and cache.total_bytes == 3_000
    cache.get_or_compute("d", lambda: np.zeros(250))  # 2,000 bytes: a and b must go
    assert [k for k in "abcd" if k in cache] == ["c", "d"]
    assert cache.total_bytes == 3_000
    cache.get_or_compute("huge", lambda: np.zeros(10_000))  # alone over the bound: still cached
    assert "huge" in cache and len(cache) == 1


def test_size_of_counts_data() -> None:
    assert size_of(torch.zeros(10, 10)) == 400
    assert size_of(np.zeros(10, dtype=np.float64)) == 80
    assert size_of((torch.zeros(4), np.zeros(2, dtype=np.float32))) == 24
