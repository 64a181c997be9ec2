"""core/hub.py against a fake hub on 127.0.0.1 (tests/fake_hub.py): no network needed.

Downloads report progress and land in the hub cache; a second call makes no request; Cancel
stops within a fraction of a second and leaves no file taken for complete; a hub that does
not answer gives one clear sentence. The RAM table follows its stated rule.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from core import hub
from tests.fake_hub import TINY, FakeHub, fake_hub_fixture, tiny_repos_fixture  # noqa: F401 - fixtures

WEIGHTS = "model.safetensors"


def _same_files(folder: Path, source: Path) -> None:
    for original in source.iterdir():
        assert (folder / original.name).read_bytes() == original.read_bytes(), original.name


def test_download_shows_progress_and_a_second_call_makes_no_request(fake_hub, tiny_repos):
    seen: list[hub.DownloadProgress] = []
    folder = hub.download(TINY, progress=seen.append)
    _same_files(folder, tiny_repos[TINY])
    total = sum(p.stat().st_size for p in tiny_repos[TINY].iterdir())
    assert seen, "no progress was reported"
    assert seen[-1].done == seen[-1].total == total
    assert all(a.done <= b.done for a, b in zip(seen, seen[1:], strict=False))  # never goes back
    assert all(p.total == total for p in seen)  # the size is known from the start
    assert any(p.bytes_per_s > 0 for p in seen)
    assert ("GET", f"/{TINY}/resolve/{fake_hub.sha(TINY)}/{WEIGHTS}") in fake_hub.requests

    before = len(fake_hub.requests)
    again: list[hub.DownloadProgress] = []
    assert hub.download(TINY, progress=again.append) == folder
    assert len(fake_hub.requests) == before, "the cached model made a request"
    assert again[-1].done == again[-1].total > 0
    assert hub.cached_snapshot(TINY) == folder


def test_cancel_stops_promptly_leaves_no_half_file_and_a_later_download_completes(fake_hub, tiny_repos):
    fake_hub.rate = 2e6  # bytes per second: the 29 MB model would take about 15 s
    cancel = threading.Event()
    seen: list[hub.DownloadProgress] = []
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["folder"] = hub.download(TINY, progress=seen.append, cancel=cancel)
        except hub.HubError as exc:
            outcome["error"] = exc
            outcome["at"] = time.monotonic()

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 30
    while not (seen and seen[-1].done > 3e6) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert seen and seen[-1].done > 3e6, "the download did not start"
    cancelled_at = time.monotonic()
    cancel.set()
    worker.join(5)
    assert isinstance(outcome.get("error"), hub.DownloadCancelled)
    assert outcome["at"] - cancelled_at < 0.5, "cancel took too long"
    assert seen[-1].done < seen[-1].total

    # the reading stops too (within a chunk): the server soon sends nothing more
    time.sleep(2.0)
    sent = fake_hub.bytes_sent
    time.sleep(1.0)
    assert fake_hub.bytes_sent == sent, "the download went on after Cancel"
    cache = Path(hub.hub_cache_dir())
    assert not list(cache.rglob("*.incomplete")), "a partial file was left behind"
    assert not list(cache.rglob(WEIGHTS)), "a partial weights file is in the snapshot"
    assert hub.cached_snapshot(TINY) is None  # never taken for a complete model

    fake_hub.rate = None
    folder = hub.download(TINY)
    _same_files(folder, tiny_repos[TINY])
    assert hub.cached_snapshot(TINY) == folder


def test_a_hub_that_does_not_answer_gives_one_clear_sentence(fake_hub, monkeypatch):
    fake_hub.stop()
    hub.clear_reachability()
    assert not hub.reachable(timeout=1.0)
    with pytest.raises(hub.HubUnreachable) as raised:
        hub.download(TINY)
    assert str(raised.value) == (
        "The Hugging Face hub cannot be reached from this server; the bundled model works offline."
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # huggingface_hub's own offline switch says the same
    hub.clear_reachability()
    assert not hub.reachable()
    with pytest.raises(hub.HubUnreachable):
        hub.download(TINY)


def test_a_downloaded_model_still_comes_when_the_hub_is_gone(fake_hub):
    folder = hub.download(TINY)
    fake_hub.stop()
    hub.clear_reachability()
    assert not hub.reachable(timeout=1.0)
    assert hub.download(TINY) == folder


def test_reachability_is_kept_for_a_minute(fake_hub):
    assert hub.reachable()
    probes = sum(1 for _, path in fake_hub.requests if path.endswith(hub.PROBE_REPO))
    assert hub.reachable() and hub.reachable()
    assert sum(1 for _, path in fake_hub.requests if path.endswith(hub.PROBE_REPO)) == probes == 1


def test_unknown_gated_malformed_and_too_big_models_are_refused_with_a_reason(fake_hub, tiny_repos):
    with pytest.raises(hub.HubError, match="There is no model called nobody/nothing"):
        hub.download("nobody/nothing")
    gated = FakeHub(tiny_repos, gated=(TINY,)).start()
    try:
        import os

        os.environ["HF_ENDPOINT"] = gated.url  # restored by the fake_hub fixture's monkeypatch
        with pytest.raises(hub.HubError, match="is gated: accept its licence"):
            hub.download(TINY)
    finally:
        gated.stop()
        os.environ["HF_ENDPOINT"] = fake_hub.url
    for bad in ("no-owner", "a/b/c", "owner/../etc", "owner/na me", ""):
        with pytest.raises(hub.HubError, match="owner/name"):
            hub.download(bad)
    with pytest.raises(hub.HubError, match="needs about .* GB of memory"):
        hub.download(TINY, max_gb=0.05)
    assert not any(path.endswith(WEIGHTS) for _, path in fake_hub.requests), "weights fetched anyway"


def test_the_ram_table_follows_its_rule(lm, tiny_repos):
    # the rule: 2 x 4 bytes per parameter (the load peak) + a 2,048-token KV cache, rounded up to 0.1 GB
    assert hub.BUNDLED.parameters == lm.n_params  # the table's count is the model's own
    assert hub.BUNDLED.kv_bytes_per_token == 46_080  # 46 KB per token, as the README says
    table = {m.name: m.ram_gb for m in (hub.BUNDLED, *hub.KNOWN_MODELS)}
    assert table == {
        "SmolLM2-135M-Instruct": 1.2,
        "Gemma-3-270m-it": 2.3,
        "SmolLM2-360M-Instruct": 3.1,
        "Qwen2.5-0.5B-Instruct": 4.1,
        "Qwen3-0.6B": 5.3,
        "SmolLM2-1.7B-Instruct": 14.5,
    }
    for m in (hub.BUNDLED, *hub.KNOWN_MODELS):
        exact = (8 * m.parameters + 2048 * m.kv_bytes_per_token) / 1e9
        assert exact <= m.ram_gb < exact + 0.1
    folder = tiny_repos[TINY]
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    kv = 2 * config.num_hidden_layers * config.num_key_value_heads * (config.hidden_size // 4) * 4
    assert hub.folder_need_gb(folder) == hub.ram_need_gb(hub.folder_parameters(folder), kv)


def test_folder_checks(tiny_repos, tmp_path):
    from safetensors.torch import load_file

    folder = tiny_repos[TINY]
    assert hub.folder_parameters(folder) == sum(t.numel() for t in load_file(folder / WEIGHTS).values())
    assert hub.chat_model_problem(folder, TINY) is None
    plain = tmp_path / "no-template"
    plain.mkdir()
    for f in folder.iterdir():
        if f.name != "chat_template.jinja":
            (plain / f.name).write_bytes(f.read_bytes())
    assert "has no chat template" in hub.chat_model_problem(plain, "x/plain")
    (plain / "config.json").write_text('{"model_type": "vit"}')  # an image model
    assert "not a text-generating model" in hub.chat_model_problem(plain, "x/plain")
