"""core.cpuload tells other processes' CPU use apart from this process's own."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from core import cpuload

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/stat")


def _others_after(seconds: float) -> float:
    time.sleep(seconds)
    value = cpuload.other_processes_cores()
    assert value is not None
    return value


def test_own_work_does_not_count_as_the_machine_being_busy_but_another_process_does():
    cpuload.other_processes_cores()  # starts the sampler
    done = threading.Event()

    def spin() -> None:
        while not done.is_set():
            sum(range(1000))

    worker = threading.Thread(target=spin)
    worker.start()
    try:
        own_busy = _others_after(2.5)  # a whole sampling interval inside this phase
    finally:
        done.set()
        worker.join()

    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        other_busy = _others_after(2.5)
    finally:
        hog.kill()
        hog.wait()
    # one core's worth appears only when the busy loop is someone else's
    assert other_busy >= own_busy + 0.6, (own_busy, other_busy)
    assert cpuload.spare_cores() is not None
