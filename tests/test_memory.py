"""core.memory: freed tensors go back to the OS even after glibc's mmap threshold has grown."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# A fresh process: glibc's threshold is process state. A 16 MB array freed first raises the
# dynamic mmap threshold; then 150 arrays of 1 MB are made with small arrays in between (as an
# explanation pass leaves small live objects between its big tensors) and freed.
SCRIPT = """
import json
import numpy as np, psutil
from core.memory import give_back_freed_memory
rss = lambda: psutil.Process().memory_info().rss / 2**20
big = np.ones(2**21)
del big
base = rss()
blocks, pins = [], []
for _ in range(150):
    blocks.append(np.ones(2**17))  # 1 MB
    pins.append(np.ones(64))  # 512 bytes, from the heap
peak = rss()
del blocks
kept = rss() - base
trimmed = give_back_freed_memory()
print(json.dumps({"grew": peak - base, "kept": kept, "trimmed": trimmed, "after": rss() - base}))
"""


def _glibc_untuned() -> bool:
    from core.memory import give_back_freed_memory

    tuned = os.environ.get("LD_PRELOAD") or os.environ.get("MALLOC_MMAP_THRESHOLD_")
    return sys.platform.startswith("linux") and give_back_freed_memory() and not tuned


@pytest.mark.skipif(not _glibc_untuned(), reason="needs glibc's own malloc, untuned")
def test_freed_blocks_pinned_on_the_heap_are_given_back():
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, check=True)
    figures = json.loads(out.stdout)
    assert figures["grew"] > 140  # it really allocated 150 MB
    assert figures["kept"] > 100, figures  # freed, but still held by the process
    assert figures["trimmed"] and figures["after"] < 20, figures  # given back to the OS
