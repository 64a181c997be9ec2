"""How many cores this process may use: its CPU set, capped by a container's CPU quota.

torch counts the host's cores. In a container with a CPU quota (Streamlit Community Cloud:
about 2 cores of a large host) it would start one OpenMP thread per host core, and they would
wait on each other at every op. Which thread count is fastest for a decode step is measured
at warm-up (core.generation.measure_decode_threads), within this bound.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def _quota_cores(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int | None:
    """The cgroup v2 CPU quota in whole cores (rounded up), or None without one."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def usable_cores() -> int:
    """Cores this process may run on: its CPU set, capped by its cgroup's quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _quota_cores()
    return min(cores, quota) if quota else cores


_FITTED: int | None = None  # what fit_torch_threads settled on


def fit_torch_threads() -> int:
    """Use at most the usable cores (see the module's docstring); returns torch's thread count."""
    import torch

    global _FITTED
    cores = usable_cores()
    if torch.get_num_threads() > cores:
        torch.set_num_threads(cores)
    _FITTED = torch.get_num_threads()
    return _FITTED


def torch_threads() -> int:
    """The thread count for work over many tokens (a prompt, an explanation pass).

    subtle: torch.set_num_threads in one thread also sets the count that threads started
    later begin with. The decode loop sets 1 thread for some single-token steps, so a page
    run on a thread started meanwhile would begin with 1: passes set this count themselves.
    """
    return _FITTED or usable_cores()
