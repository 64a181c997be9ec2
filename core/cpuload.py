"""How much CPU *other* processes are using right now, so a prefill knows whether a second
thread would help or only wait.

The load average cannot tell: it counts this process's own threads too, so a busy chat (or
a benchmark) would read its own decoding as "the machine is busy". This module samples
/proc/stat (all CPU time on the machine) and os.times() (this process's CPU time) about once
a second in a daemon thread; the difference is what everyone else used.
"""

from __future__ import annotations

import os
import threading
import time

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
            wall = now[0] - last[0]
            if now[1] is None or wall <= 0:
                continue
            others = max(0.0, (now[1] - last[1]) - (now[2] - last[2])) / wall
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


def spare_cores() -> float | None:
    """Cores nobody else is using (this process's own use does not count against it)."""
    others = other_processes_cores()
    return None if others is None else (os.cpu_count() or 1) - others
