"""Browser fixtures: a real `streamlit run app.py` server and headless Debian Chromium.

Screenshots go to artifacts/screenshots/ (named in the README).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "artifacts" / "screenshots"
LOGS = ROOT / "artifacts" / "logs"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    env_extra: dict[str, str] | None = None, timeout: float = 120
) -> tuple[subprocess.Popen, str]:
    """Start the app on a free loopback port and wait for /_stcore/health."""
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    # The server log goes to a file: an unread pipe fills up and would freeze the server.
    LOGS.mkdir(parents=True, exist_ok=True)
    log_path = LOGS / f"server-{port}.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed by stop_server
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(ROOT / "app.py"),
            "--server.headless",
            "true",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--browser.gatherUsageStats",
            "false",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    proc.log_path = log_path  # type: ignore[attr-defined]
    proc.log_file = log  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            log.close()
            raise RuntimeError(f"streamlit exited early:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.3)
    stop_server(proc)
    raise RuntimeError("streamlit did not become healthy in time")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    log = getattr(proc, "log_file", None)
    if log is not None:
        log.close()


def server_log(proc: subprocess.Popen) -> str:
    """Everything the server printed so far (tracebacks land here, never in the browser)."""
    path = getattr(proc, "log_path", None)
    return path.read_text(errors="replace") if path else ""


@pytest.fixture(scope="session")
def app_server():
    """(process, url) of the shared test server: for tests that watch the process itself."""
    proc, url = start_server()
    yield proc, url
    stop_server(proc)


@pytest.fixture(scope="session")
def app_url(app_server):
    return app_server[1]


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed: `make test` installs it (apt-get install chromium).")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture()
def page(browser, app_url):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(app_url)
    wait_idle(pg)
    yield pg
    context.close()


def wait_idle(page, timeout: float = 120_000) -> None:
    """Wait until the Streamlit script has finished running."""
    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout)
    page.wait_for_function(
        """() => { const a = document.querySelector('[data-testid="stApp"]');
                   return a && a.getAttribute('data-test-script-state') === 'notRunning'; }""",
        timeout=timeout,
    )


def assert_no_exception(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0, "the page shows a traceback"


def send_chat(page, text: str, timeout: float = 180_000) -> None:
    box = page.locator('[data-testid="stChatInput"] textarea')
    box.fill(text)
    box.press("Enter")
    page.wait_for_timeout(500)
    wait_idle(page, timeout)


def screenshot(page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


LAYOUT = """() => { const m = document.querySelector('.stMain') || document.body;
    const c = [...document.querySelectorAll('canvas, svg.marks')].map((e) => e.clientWidth + 'x' + e.clientHeight);
    return [m.scrollHeight, m.scrollWidth, document.documentElement.scrollWidth, ...c].join(','); }"""


def settle(page, most_ms: int = 3000) -> None:
    """Wait until the layout stops changing: the page's size and every chart's size are the same
    in two readings 250 ms apart (charts draw and size themselves after the script has finished).
    A fixed wait long enough for the slowest chart cost every screenshot 2.5 s."""
    last, waited = None, 0
    while waited < most_ms:
        now = page.evaluate(LAYOUT)
        if now == last:
            return
        last = now
        page.wait_for_timeout(250)
        waited += 250


def whole_page(page, name: str, width: int | None = None) -> Path:
    """Screenshot the whole page at `width` (default: the current one), then restore the viewport.

    subtle: Streamlit scrolls an inner element, not the window, so a plain full-page screenshot
    stops at the viewport; the viewport grows to fit the page first.
    """
    before = page.viewport_size or {"width": 1400, "height": 1000}
    page.wait_for_timeout(300)
    settle(page)
    height = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": width or before["width"], "height": int(height) + 100})
    page.wait_for_timeout(250)
    settle(page)
    path = screenshot(page, name)
    page.set_viewport_size(before)
    return path


def open_view(page, name: str) -> None:
    """Pick a view in a page's segmented control (the attention and embeddings pages)."""
    page.locator('[data-testid="stButtonGroup"] button', has_text=name).first.click()
    page.wait_for_timeout(300)
    wait_idle(page)
    assert_no_exception(page)


def chromium_available() -> bool:
    return Path(CHROMIUM).exists() or shutil.which("chromium") is not None


# -- helpers for the hardening suites (hostile input, concurrency, faults, journeys) ------------

# Hostile payloads set this window property if they ever run; it must stay unset.
FLAG = "glassboxPwned"


def new_session(browser, url: str, path: str = "", timeout: float = 120_000):
    """A fresh browser context (its own Streamlit session) on the app. Returns (context, page)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    pg.goto(url + path)
    wait_idle(pg, timeout)
    return context, pg


def open_expander(page, box):
    """Open an expander and wait until it has stopped growing: a click on its content while
    it still animates open lands where an element was a moment ago, and is lost."""
    if box.locator("details[open]").count() == 0:
        box.locator("summary").click()
    last = None
    for _ in range(100):
        size = box.bounding_box()
        if size is not None and size == last:
            break
        last = size
        page.wait_for_timeout(100)
    return box


def open_transfer(page):
    """Open the chat sidebar's "Save or load the conversation" expander; returns the expander."""
    return open_expander(
        page,
        page.locator('[data-testid="stSidebar"] [data-testid="stExpander"]').filter(
            has_text="Save or load the conversation"
        ),
    )


def flag_value(page):
    """The value hostile scripts would have set on window (None if none ran), in every frame."""
    values = []
    for frame in page.frames:
        try:
            values.append(frame.evaluate(f"() => window.{FLAG} ?? null"))
        except Exception:  # a cross-origin or detached frame cannot be read (nor could it run ours)
            continue
    return next((v for v in values if v is not None), None)


def set_slider(page, label: str, presses: list[str]) -> str:
    """Move the sidebar slider whose label starts with `label` by keyboard; returns its value."""
    slider = page.locator('[data-testid="stSlider"]').filter(has_text=label).first
    thumb = slider.locator('input[type="range"]')
    thumb.focus()
    for key in presses:
        thumb.press(key)
    thumb.blur()  # the new value is sent when the slider is released
    page.wait_for_timeout(300)
    wait_idle(page)
    return thumb.input_value()


def quick_replies(page, max_new_tokens: int = 8, greedy: bool = True) -> None:
    """Short, deterministic replies: temperature 0 and a small token limit (keeps tests fast).

    The token slider runs 8, 16, ... in steps of 8.
    """
    if greedy:
        set_slider(page, "Temperature", ["Home"])
    steps = max(0, (max_new_tokens - 8) // 8)
    set_slider(page, "Maximum new tokens", ["Home", *(["ArrowRight"] * steps)])


def chat_texts(page) -> list[str]:
    """The visible text of every chat message, in order."""
    return page.locator('[data-testid="stChatMessage"]').all_inner_texts()


def start_send(page, text: str) -> None:
    """Type a message and press Enter without waiting for the reply.

    subtle: a rerun that redraws the chat input just as Enter is pressed can swallow the
    submit (the text stays in the box and no reply ever starts). Streamlit empties the box
    on a submit, so that is waited for, and the message is sent again if it did not go.
    """
    box = page.locator('[data-testid="stChatInput"] textarea')
    for _ in range(3):
        box.fill(text)
        box.press("Enter")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if box.input_value() == "":
                return
            page.wait_for_timeout(100)
    raise AssertionError(f"the chat input did not take the message {text[:40]!r}")


def go_to(page, title: str) -> None:
    """Open another page through the sidebar menu (keeps the session, unlike page.goto)."""
    link = page.locator('[data-testid="stSidebarNav"] a').filter(has_text=title).first
    target = link.get_attribute("href") or ""
    for attempt in range(3):
        link.click()
        if not target:
            break
        # wait for the switch itself: the script state alone can still read "notRunning".
        # subtle: a click that lands while the page reruns (the first reply saves the
        # conversation and reruns to list it) can be lost, as a submit can (start_send)
        try:
            page.wait_for_function(
                "(t) => location.href.split('?')[0] === new URL(t, location.href).href.split('?')[0]",
                arg=target,
                timeout=20_000,
            )
            break
        except PlaywrightTimeout:
            if attempt == 2:
                raise
            wait_idle(page)
    page.wait_for_timeout(300)
    wait_idle(page)


def nav_titles(page) -> list[str]:
    """The titles in the sidebar menu: the pages that exist right now."""
    texts = page.locator('[data-testid="stSidebarNav"] a').all_inner_texts()
    return [[line.strip() for line in t.splitlines() if line.strip()][-1] for t in texts]


def send_and_wait(page, text: str, timeout: float = 300_000) -> list[str]:
    """Send a message and wait for its complete reply (the footer line appears); returns chat_texts.

    Sturdier than send_chat on a busy machine: it waits for the reply itself, not a script state
    that may not have changed yet.
    """
    before = page.locator('[data-testid="stChatMessage"]').count()
    start_send(page, text)
    page.wait_for_function(
        """(n) => { const m = document.querySelectorAll('[data-testid="stChatMessage"]');
                    const app = document.querySelector('[data-testid="stApp"]');
                    return m.length >= n + 2 && / tokens/.test(m[m.length - 1].innerText)
                           && app.getAttribute('data-test-script-state') === 'notRunning'; }""",
        arg=before,
        timeout=timeout,
    )
    wait_idle(page, timeout)
    return chat_texts(page)


def choose(page, box, option, typed: str = "") -> None:
    """Open the selectbox `box` and click `option` (a locator of the open list), as a user does.

    subtle: a rerun that lands just after the click (the conversation being saved, a fragment
    refreshing) closes the list again, and the option never shows (CI of stop 23). The box is
    opened again then, at most three times. `typed` is typed first, for a list that shows only
    some of its options.
    """
    for attempt in range(3):
        wait_idle(page)
        box.click()
        if typed:  # over whatever a first try left in the box
            page.keyboard.press("ControlOrMeta+a")
            page.keyboard.type(typed)
        try:
            option.first.wait_for(state="visible", timeout=10_000)
            break
        except PlaywrightTimeout:
            if attempt == 2:
                raise
            print(f"choose: the list closed before {option} showed; opening it again")  # seen with -s
            page.keyboard.press("Escape")
    option.first.click()
    page.wait_for_timeout(300)
    wait_idle(page)


def selectbox_text(page, label: str) -> str:
    """Everything a selectbox shows for its current value (text, input value, title attributes)."""
    box = page.locator('[data-testid="stSelectbox"]').filter(has_text=label).first
    return box.evaluate(
        """(el) => [el.innerText, ...[...el.querySelectorAll('input')].map(i => i.value),
                   ...[...el.querySelectorAll('[title]')].map(e => e.getAttribute('title'))].join(' ')"""
    )


# -- the model picker against a fake hub on 127.0.0.1 (tests/fake_hub.py) --------------------------
PICKER_REPO = "HuggingFaceTB/SmolLM2-360M-Instruct"  # a name from the picker's list, served by a tiny model


@pytest.fixture(scope="session")
def picker_hub(lm, tmp_path_factory):
    """A fake hub serving a tiny random model under a listed hub id, at 4 MB/s (about 7 s for its
    29 MB), so the progress bar can be watched."""
    from tests.fake_hub import FakeHub
    from tests.tiny_models import build

    folder = build("llama", tmp_path_factory.mktemp("picker-hub") / "tiny", lm.tokenizer)
    with FakeHub({PICKER_REPO: folder}, rate=4e6) as served:
        yield served


@pytest.fixture(scope="session")
def picker_app(picker_hub, tmp_path_factory):
    """(process, url) of an app server whose hub is the fake one, with an empty hub cache. The
    listed model's RAM need is the real one's (3.1 GB), so the memory check is set aside."""
    proc, url = start_server(
        {
            "HF_ENDPOINT": picker_hub.url,
            "HF_HUB_OFFLINE": "0",
            "HF_HUB_CACHE": str(tmp_path_factory.mktemp("picker-hub-cache")),
            "GLASSBOX_EXTRA_MODEL_GB": "100",
        }
    )
    yield proc, url
    stop_server(proc)
