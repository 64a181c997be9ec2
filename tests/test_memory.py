"""core.memory: freed tensors go back to the OS even after glibc's mmap threshold would have grown."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc behaviour")

# A fresh process per run: glibc's threshold is process state. A 16 MB array freed first raises
# the default dynamic threshold; then 150 arrays of 1 MB are made with small arrays in between
# (as an explanation pass leaves small live objects between its big tensors) and freed.
SCRIPT = """
import json, sys
import numpy as np, psutil
from core.memory import release_freed_memory
fixed = sys.argv[1] == "fixed"
if fixed:
    assert release_freed_memory()
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
print(json.dumps({"grew": peak - base, "kept": rss() - base}))
"""


def _run(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def _glibc_default_malloc() -> bool:
    from core.memory import release_freed_memory

    preloaded = os.environ.get("LD_PRELOAD", "") or os.environ.get("MALLOC_MMAP_THRESHOLD_")
    return release_freed_memory() and not preloaded


@pytest.mark.skipif(not _glibc_default_malloc(), reason="needs glibc's own malloc, untuned")
def test_freed_blocks_are_returned_with_the_fixed_threshold_and_kept_without_it():
    default, fixed = _run("default"), _run("fixed")
    assert default["grew"] > 140 and fixed["grew"] > 140  # both really allocated 150 MB
    assert fixed["kept"] < 20, fixed  # given back to the OS
    assert default["kept"] > 100, default  # what happens without it (so the test can tell)
