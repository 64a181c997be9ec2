"""The sidebar's model picker in a real browser: pick a listed hub model (served by a fake hub
on 127.0.0.1), watch the progress bar, then chat with it."""

from __future__ import annotations

import re

import pytest

from tests.e2e.conftest import (
    PICKER_REPO,
    assert_no_exception,
    chat_texts,
    new_session,
    quick_replies,
    screenshot,
    send_chat,
    server_log,
    wait_idle,
)

pytestmark = pytest.mark.browser


def test_pick_a_hub_model_watch_its_download_and_chat_with_it(browser, picker_app, picker_hub):
    proc, url = picker_app
    context, page = new_session(browser, url)
    try:
        sidebar = page.locator('[data-testid="stSidebar"]')
        picker = sidebar.locator('[data-testid="stSelectbox"]').filter(has_text="Model").first
        shown = picker.evaluate(  # the value sits in the input and in title attributes
            """(el) => [el.innerText, ...[...el.querySelectorAll('input')].map(i => i.value),
                       ...[...el.querySelectorAll('[title]')].map(e => e.getAttribute('title'))].join(' ')"""
        )
        assert "SmolLM2-135M-Instruct · bundled, works offline (default)" in shown, shown
        quick_replies(page, max_new_tokens=8)
        send_chat(page, "What is the capital of France?")

        picker.click()
        page.get_by_role("option", name="SmolLM2-360M-Instruct · needs 3.1 GB").click()
        bar = sidebar.locator('[data-testid="stProgress"]')
        bar.wait_for(state="visible", timeout=30_000)
        page.wait_for_function(
            """() => { const b = document.querySelector('[data-testid="stSidebar"] [data-testid="stProgress"]');
                       return b && /: [1-9][0-9]*\\.[0-9] of [0-9.]+ MB · [0-9.]+ MB\\/s/.test(b.innerText); }""",
            timeout=30_000,
        )
        text = bar.inner_text()
        assert re.search(r"Downloading SmolLM2-360M-Instruct: [0-9.]+ of 29\.\d MB · [0-9.]+ MB/s", text), (
            text
        )
        assert sidebar.get_by_role("button", name="Cancel").is_visible()
        screenshot(page, "model-picker-downloading")

        sidebar.get_by_text("SmolLM2-360M-Instruct is loaded: the next reply comes from it.").wait_for(
            timeout=180_000
        )
        wait_idle(page)
        send_chat(page, "Hello!")
        texts = chat_texts(page)
        assert len(texts) == 4 and texts[-1].strip()
        assert (
            sidebar.get_by_text(f"Source: Hugging Face hub ({PICKER_REPO}), picked in the sidebar").count()
            == 1
        )
        assert (
            "GET",
            f"/{PICKER_REPO}/resolve/{picker_hub.sha(PICKER_REPO)}/model.safetensors",
        ) in picker_hub.requests
        assert_no_exception(page)
        screenshot(page, "model-picker-reply")
        assert "Traceback" not in server_log(proc)
    finally:
        context.close()
