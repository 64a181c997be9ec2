"""core.cores bounds torch's threads by the cores this process may use (a container's quota)."""

from __future__ import annotations

import torch

from core import cores


def test_a_cgroup_quota_caps_the_usable_cores(tmp_path, monkeypatch):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("200000 100000\n")
    assert cores._quota_cores(cpu_max) == 2
    cpu_max.write_text("150000 100000\n")
    assert cores._quota_cores(cpu_max) == 2  # 1.5 cores: two threads may run
    cpu_max.write_text("max 100000\n")
    assert cores._quota_cores(cpu_max) is None
    assert cores._quota_cores(tmp_path / "absent") is None

    monkeypatch.setattr(cores, "_quota_cores", lambda: 1)
    assert cores.usable_cores() == 1


def test_torch_threads_never_exceed_the_usable_cores(monkeypatch):
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(8)
        monkeypatch.setattr(cores, "usable_cores", lambda: 2)
        assert cores.fit_torch_threads() == 2
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)
