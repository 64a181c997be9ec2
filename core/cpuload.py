"""How many cores this process may use, and how much CPU *other* processes are using right
now, so a prefill knows whether a second thread would help or only wait.

The load average cannot tell: it counts this process's own threads too, so a busy chat (or
a benchmark) would read its own decoding as "the machine is busy". This module samples
/proc/stat (all CPU time on the machine) and os.times() (this process's CPU time) about once
a second in a daemon thread; the difference is what everyone else used.

In a container with a CPU quota or a narrower CPU set (Streamlit Community Cloud: 2 cores of
a large host), /proc/stat describes the whole host and other tenants' load says nothing about
our quota; there the measure is not used (spare_cores() is None).
"""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path

INTERVAL_S = 1.0
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _machine_busy_s() -> float | None:
    """CPU seconds spent busy on the whole machine since boot (Linux); None elsewhere."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != b"cpu":
        return None
    # user nice system idle iowait irq softirq steal ...: busy is all but idle and iowait
    values = [int(v) for v in fields[1:9]]
    return (sum(values) - values[3] - values[4]) / _CLK_TCK


def _own_busy_s() -> float:
    t = os.times()
    return t.user + t.system


Sample = tuple[float, float | None, float]  # (monotonic s, machine busy CPU s, own CPU s)


def others_rate(before: Sample, after: Sample) -> float | None:
    """Cores' worth of CPU everyone but this process used between two samples."""
    wall = after[0] - before[0]
    if before[1] is None or after[1] is None or wall <= 0:
        return None
    return max(0.0, (after[1] - before[1]) - (after[2] - before[2])) / wall


class _Sampler:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._others: float | None = None
        self._started = False

    def others(self) -> float | None:
        """Cores used by other processes over the last completed interval (None: unknown yet)."""
        with self._lock:
            if not self._started:
                self._started = True
                threading.Thread(target=self._run, name="glassbox-cpuload", daemon=True).start()
            return self._others

    def _run(self) -> None:
        last = (time.monotonic(), _machine_busy_s(), _own_busy_s())
        if last[1] is None:
            return
        while True:
            time.sleep(INTERVAL_S)
            now = (time.monotonic(), _machine_busy_s(), _own_busy_s())
            others = others_rate(last, now)
            if others is None:
                continue
            with self._lock:
                self._others = others
            last = now


_SAMPLER = _Sampler()


def other_processes_cores() -> float | None:
    """Cores' worth of CPU other processes used in the last second or so.

    None until the first second of sampling has passed (the sampler starts on the first call),
    or where /proc/stat does not exist.
    """
    return _SAMPLER.others()


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


def whole_machine() -> bool:
    """True when this process may use every core /proc/stat counts (no container limit)."""
    return usable_cores() == (os.cpu_count() or 1) and _quota_cores() is None


def spare_cores() -> float | None:
    """Cores nobody else is using (this process's own use does not count against it).

    None when unknown: in the first second of sampling, off Linux, or in a container whose
    host-wide /proc/stat says nothing about its own quota.
    """
    if not whole_machine():
        return None
    others = other_processes_cores()
    return None if others is None else usable_cores() - others


def fit_torch_threads() -> int:
    """Use at most the usable cores: torch counts the host's cores, and a 2-core quota on a
    large host would otherwise run many OpenMP threads that wait on each other."""
    import torch

    cores = usable_cores()
    if torch.get_num_threads() > cores:
        torch.set_num_threads(cores)
    return torch.get_num_threads()
