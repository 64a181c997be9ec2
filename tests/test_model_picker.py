"""The sidebar's model picker and the models behind it (pages/model_picker.py, pages/common.py),
driven by AppTest against the fake hub (tests/fake_hub.py): no network needed.
"""

from __future__ import annotations

import gc
import json
import struct
import time
import weakref

import pytest
from streamlit.testing.v1 import AppTest

from core import hub
from core.models import BUNDLED_NAME
from pages import common
from tests.conftest import APP
from tests.fake_hub import TINY, TINY_QWEN, FakeHub, fake_hub_fixture, tiny_repos_fixture  # noqa: F401 - fixtures


@pytest.fixture()
def no_extra():
    """No extra model resident before or after the test."""

    def unload() -> None:
        with common._EXTRA_LOCK:
            for source in list(common._RESIDENT):
                common._unload(source)

    unload()
    yield
    unload()


def _app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.session_state["chat.temperature"] = 0.0
    at.session_state["chat.max_new_tokens"] = 8
    return at.run()


def test_the_picker_switches_the_chat_to_a_hub_model_and_explanations_follow_each_reply(
    lm, fake_hub, no_extra
):
    at = _app()
    assert not at.exception
    picker = at.selectbox(key="model.select")
    assert picker.value == "default"  # the bundled model stays the default
    assert picker.options[0].startswith(f"{BUNDLED_NAME} · bundled, works offline")
    assert "Qwen3-0.6B · needs 5.3 GB" in picker.options
    assert picker.options[-1] == "Any hub id…"

    at.chat_input[0].set_value("What is the capital of France?").run()
    first = at.session_state["chat.messages"][-1]
    assert first.trace.model_name == BUNDLED_NAME

    fake_hub.rate = 10e6  # slow enough that the first run after the click shows the progress bar
    at.selectbox(key="model.select").set_value("any").run()
    at.text_input(key="model.custom").input(TINY).run()
    at.button(key="model.use_id").click().run()
    assert not at.exception
    bars = at.get("progress")
    assert bars and "glassbox-test/tiny-llama" in bars[0].proto.text
    assert any(b.label == "Cancel" for b in at.button)
    job = at.session_state["model.job"]
    job.thread.join(120)
    assert job.folder is not None, job.error
    at.run()
    assert not at.exception
    assert at.session_state["model.choice"] == TINY
    assert any("is loaded: the next reply comes from it" in s.value for s in at.success)

    at.chat_input[0].set_value("Hello").run()
    assert not at.exception
    second = at.session_state["chat.messages"][-1]
    assert second.trace.model_name == TINY  # the reply records which model wrote it

    for page in ("candidates", "attention", "walkthrough", "tokens", "embeddings"):
        at.session_state[common.SELECTED] = first.trace.trace_id  # an earlier reply, by the bundled model
        at.session_state[f"{page}.reply"] = first.trace.trace_id
        at.switch_page(f"pages/{page}.py").run()
        assert not at.exception, page
        said = [c.value for c in at.caption if "was written by" in c.value]
        if page != "tokens":  # the tokenization page opens on a message, not a reply
            assert said == [f"Reply 1 was written by {BUNDLED_NAME}; this view uses that model."], page
    at.query_params["reply"] = second.trace.trace_id  # as a link to the newer reply
    at.switch_page("pages/candidates.py").run()
    assert not at.exception
    assert not [c.value for c in at.caption if "was written by" in c.value]  # the chat's own model

    at.switch_page("pages/chat.py").run()  # back on the chat: the picker still shows the pick
    assert not at.exception
    assert at.selectbox(key="model.select").value == "any"
    assert at.text_input(key="model.custom").value == TINY
    at.selectbox(key="model.select").set_value("default").run()
    assert not at.exception
    assert "model.choice" not in at.session_state
    at.chat_input[0].set_value("And of Italy?").run()
    assert at.session_state["chat.messages"][-1].trace.model_name == BUNDLED_NAME


def test_cancel_in_the_picker_keeps_the_model_in_use(lm, fake_hub, no_extra):
    fake_hub.rate = 1e6
    at = _app()
    at.selectbox(key="model.select").set_value("any").run()
    at.text_input(key="model.custom").input(TINY).run()
    at.button(key="model.use_id").click().run()
    job = at.session_state["model.job"]
    at.button(key="model.cancel").click().run()
    assert not at.exception
    assert job.cancel.is_set() and not job.running
    assert "model.choice" not in at.session_state
    assert at.selectbox(key="model.select").value == "default"  # back on the model in use
    assert any("Download cancelled" in i.value for i in at.info)
    assert hub.cached_snapshot(TINY) is None


def test_offline_the_list_says_so_and_only_the_bundled_model_can_be_picked(lm, fake_hub, no_extra):
    fake_hub.stop()
    hub.clear_reachability()
    at = _app()
    assert not at.exception
    picker = at.selectbox(key="model.select")
    assert picker.options == [f"{BUNDLED_NAME} · bundled, works offline (default)"]
    assert picker.disabled
    notes = [c.value for c in at.sidebar.caption]
    assert any(hub.HUB_UNREACHABLE in n and "Qwen3-0.6B" in n for n in notes)


def test_a_downloaded_model_is_offered_offline(lm, fake_hub, no_extra, monkeypatch):
    monkeypatch.setattr(
        hub, "KNOWN_MODELS", (*hub.KNOWN_MODELS, hub.KnownModel(TINY, "Tiny", 1000, 3, 2, 16))
    )
    hub.download(TINY)
    fake_hub.stop()
    hub.clear_reachability()
    at = _app()
    picker = at.selectbox(key="model.select")
    assert [o.split(" · ")[0] for o in picker.options] == [BUNDLED_NAME, "Tiny"]
    assert picker.options[1].endswith("downloaded")
    at.selectbox(key="model.select").set_value(TINY).run()  # cached: no request, loads at once
    if "model.job" in at.session_state:  # the run may have ended before the (instant) "download"
        at.session_state["model.job"].thread.join(60)
        at.run()
    assert not at.exception and at.session_state["model.choice"] == TINY


def test_one_extra_model_at_most_the_first_is_unloaded_and_freed(lm, fake_hub, no_extra):
    hub.download(TINY)
    hub.download(TINY_QWEN)
    first = common._load_extra(TINY)
    assert common._load_extra(TINY) is first  # loaded once
    gone = weakref.ref(first)
    del first
    second = common._load_extra(TINY_QWEN)
    assert list(common._RESIDENT) == [TINY_QWEN]
    deadline = time.monotonic() + 30  # a warm-up thread may hold the first model for a moment
    while gone() is not None and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.2)
    assert gone() is None, "the unloaded model is still in memory"
    assert second.name == TINY_QWEN and second.model is not None


def test_a_model_that_does_not_fit_or_is_not_here_is_refused_with_a_reason(
    lm, fake_hub, no_extra, monkeypatch
):
    hub.download(TINY)
    monkeypatch.setenv(hub.ENV_BUDGET, "0.01")
    with pytest.raises(
        common.ModelNotHere, match=r"needs about 0\.1 GB of memory to load, and this server has 0\.0 GB"
    ):
        common._load_extra(TINY)
    monkeypatch.delenv(hub.ENV_BUDGET)
    with pytest.raises(common.ModelNotHere, match="it is not downloaded here"):
        common._load_extra(TINY_QWEN)
    assert not common._RESIDENT


def test_broken_weights_are_a_reason_not_a_silent_fallback_to_the_default(
    lm, tiny_repos, tmp_path, monkeypatch, no_extra
):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_repos[TINY].iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    header = json.dumps({"model.norm.weight": {"dtype": "F32", "shape": [64], "data_offsets": [0, 256]}})
    # a readable header over missing data: the download completes, the load fails
    (broken / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\0" * 8)
    with FakeHub({"glassbox-test/broken": broken}) as served:
        monkeypatch.setenv("HF_ENDPOINT", served.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
        hub.download("glassbox-test/broken")
    with pytest.raises(common.ModelNotHere, match=r"its files could not be loaded \(.+\)") as raised:
        common._load_extra("glassbox-test/broken")
    assert "did not load" not in str(raised.value)  # the reason is the folder's own failure
    assert not common._RESIDENT


def test_explanation_pages_say_why_when_the_model_that_wrote_a_reply_is_not_here(lm, fake_hub, no_extra):
    at = _app()
    at.chat_input[0].set_value("Hi").run()
    reply = at.session_state["chat.messages"][-1]
    reply.trace.model_name = "someone/absent-model"  # as a conversation made on another server
    at.session_state[common.SELECTED] = reply.trace.trace_id
    for page in ("candidates", "attention", "walkthrough"):
        at.session_state[f"{page}.reply"] = reply.trace.trace_id
        at.switch_page(f"pages/{page}.py").run()
        assert not at.exception, page
        assert [i.value for i in at.info] == [
            "Reply 1 was written by someone/absent-model, which is not loaded on this server: it is not "
            "downloaded here; pick it in the chat's model picker to download it first."
        ], page
    reply.trace.model_name = "Some-Other-Model"  # not a hub id: nothing to download
    at.switch_page("pages/candidates.py").run()
    assert [i.value for i in at.info] == [
        f"Reply 1 was written by Some-Other-Model, which this server does not have (it runs {BUNDLED_NAME})."
    ]
    at.switch_page("pages/chat.py").run()  # the Explain panel says so too, and the chat goes on
    at.toggle(key=f"explain.toggle.{reply.id}").set_value(True).run()
    assert not at.exception
    assert any("Some-Other-Model" in i.value for i in at.info)
    assert at.chat_input  # the page was not stopped
