"""core.cpuload tells other processes' CPU use apart from this process's own."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from core import cpuload

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/stat")


def _others_after(seconds: float) -> float:
    time.sleep(seconds)
    value = cpuload.other_processes_cores()
    assert value is not None
    return value


@linux_only
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
    # one core's worth appears only when the busy loop is someone else's (0.5: the other core
    # may carry some background load in one phase and not the other)
    assert other_busy >= own_busy + 0.5, (own_busy, other_busy)
    assert cpuload.spare_cores() is not None


def test_others_rate_subtracts_this_process_and_divides_by_wall_time():
    # 2 s apart: the machine was busy for 3 CPU-seconds, 1 of them ours -> others used 1 core
    assert cpuload.others_rate((10.0, 100.0, 5.0), (12.0, 103.0, 6.0)) == pytest.approx(1.0)
    assert cpuload.others_rate((10.0, 100.0, 5.0), (12.0, 101.0, 6.0)) == 0.0  # only us
    assert cpuload.others_rate((10.0, None, 5.0), (12.0, 101.0, 6.0)) is None
    assert cpuload.others_rate((10.0, 100.0, 5.0), (10.0, 101.0, 6.0)) is None


def test_a_cgroup_quota_caps_the_usable_cores(tmp_path, monkeypatch):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("200000 100000\n")
    assert cpuload._quota_cores(cpu_max) == 2
    cpu_max.write_text("150000 100000\n")
    assert cpuload._quota_cores(cpu_max) == 2  # 1.5 cores: two threads may run
    cpu_max.write_text("max 100000\n")
    assert cpuload._quota_cores(cpu_max) is None
    assert cpuload._quota_cores(tmp_path / "absent") is None

    monkeypatch.setattr(cpuload, "_quota_cores", lambda: 1)
    assert cpuload.usable_cores() == 1
    assert not cpuload.whole_machine() and cpuload.spare_cores() is None
