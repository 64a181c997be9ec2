"""The owner token (pages/owner.py) in a real browser: the cookie is written, a reload keeps the
owner, another browser gets another one, and the token never reaches a URL.

No page calls owner_token() yet, so these tests run their own small script: it shows the
SHA-256 prefix of the token (never the token) between two lines of text, so a gap left by the
cookie writer would show as a shift of the second line.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import ssl
import subprocess
import sys
import textwrap
import time
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from pages.owner import _KEY, COOKIE, MAX_AGE, is_token
from tests.e2e.conftest import (
    LOGS,
    ROOT,
    _free_port,
    assert_no_exception,
    screenshot,
    server_log,
    stop_server,
    wait_idle,
)

pytestmark = pytest.mark.browser

SCRIPT = """
import hashlib

import streamlit as st

from pages.owner import owner_token

st.write("Above the owner")
token = owner_token()
st.write("Owner hash " + hashlib.sha256(token.encode()).hexdigest()[:16])
st.write("Below the owner")
st.button("Run again")
"""

WRITER = f".st-key-{_KEY}"  # the writer's element container

# Counts this page's writes of the owner cookie (document.cookie stays the browser's own).
COUNT_WRITES = """
(() => {
  const jar = Object.getOwnPropertyDescriptor(Document.prototype, "cookie");
  window.ownerCookieWrites = 0;
  Object.defineProperty(document, "cookie", {
    configurable: true,
    get() { return jar.get.call(document); },
    set(value) {
      if (String(value).startsWith("COOKIE=")) window.ownerCookieWrites += 1;
      jar.set.call(document, value);
    },
  });
})();
""".replace("COOKIE", COOKIE)


def _serve(script: Path, *args: str, scheme: str = "http") -> tuple[subprocess.Popen, str]:
    """Run `script` the way start_server runs the app (from the repo, with its .streamlit/config.toml),
    with the repo on PYTHONPATH for `from pages.owner import ...`. Returns (process, url)."""
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    LOGS.mkdir(parents=True, exist_ok=True)
    log_path = LOGS / f"server-owner-{port}.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed by stop_server
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(script), "--server.headless", "true"]
        + ["--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"]
        + list(args),
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    proc.log_path = log_path  # type: ignore[attr-defined]
    proc.log_file = log  # type: ignore[attr-defined]
    url = f"{scheme}://127.0.0.1:{port}"
    unverified = ssl._create_unverified_context()  # the https server's certificate is self-signed
    deadline = time.time() + 60
    while True:
        if proc.poll() is not None or time.time() > deadline:
            stop_server(proc)
            raise RuntimeError(f"the owner test server did not start:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2, context=unverified) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.3)


def _stop(proc: subprocess.Popen) -> None:
    log_text = server_log(proc)
    stop_server(proc)
    assert "Traceback" not in log_text, log_text


@pytest.fixture(scope="module")
def owner_script(tmp_path_factory) -> Path:
    script = tmp_path_factory.mktemp("owner") / "owner_app.py"
    script.write_text(textwrap.dedent(SCRIPT))
    return script


@pytest.fixture(scope="module")
def owner_url(owner_script):
    proc, url = _serve(owner_script)
    yield url
    _stop(proc)


class Visitor:
    """One browser profile (a Playwright context) on the owner script, recording every URL it asks for."""

    def __init__(self, browser, url: str, **context_options):
        self.url = url
        self.context = browser.new_context(viewport={"width": 900, "height": 500}, **context_options)
        self.context.add_init_script(COUNT_WRITES)
        self.urls: list[str] = []
        self.context.on("request", lambda request: self.urls.append(request.url))
        self.page = self.context.new_page()
        self.page.set_default_timeout(60_000)
        self.page.on("websocket", lambda ws: self.urls.append(ws.url))

    def open(self) -> str:
        self.page.goto(self.url)
        return self.settle()

    def reload(self) -> str:
        self.page.reload()
        return self.settle()

    def settle(self) -> str:
        """Wait for the script to finish; returns the owner prefix the page shows."""
        wait_idle(self.page)
        self.page.get_by_text("Below the owner").wait_for()
        assert_no_exception(self.page)
        text = self.page.get_by_text("Owner hash").inner_text()
        return text.split()[-1]

    def cookie(self, timeout: float = 10) -> dict | None:
        """The owner cookie in this profile's jar, waiting up to `timeout` s for it to appear."""
        deadline = time.monotonic() + timeout
        while True:
            found = [c for c in self.context.cookies() if c["name"] == COOKIE]
            if found or time.monotonic() > deadline:
                return found[0] if found else None
            time.sleep(0.1)

    def writes(self) -> int:
        return self.page.evaluate("() => window.ownerCookieWrites")

    def y_of(self, text: str) -> float:
        box = self.page.get_by_text(text).bounding_box()
        assert box is not None
        return box["y"]

    def close(self) -> None:
        self.context.close()


def _prefix(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:16]


@pytest.fixture()
def visitor(browser, owner_url):
    v = Visitor(browser, owner_url)
    yield v
    v.close()


def test_a_new_visitor_gets_a_cookie_that_a_reload_keeps(browser, owner_url, visitor):
    shown = visitor.open()
    cookie = visitor.cookie()
    assert cookie is not None, "the owner cookie was not written"
    token = cookie["value"]
    assert is_token(token) and _prefix(token) == shown
    assert visitor.writes() == 1
    assert cookie["path"] == "/" and cookie["sameSite"] == "Lax"
    assert not cookie["secure"]  # plain http here; the writer adds Secure on https
    expires = datetime.fromtimestamp(cookie["expires"])
    assert abs(expires - (datetime.now() + timedelta(seconds=MAX_AGE))) < timedelta(minutes=5)

    # the writer draws nothing: its element container is hidden, so it leaves no gap
    assert visitor.page.locator(WRITER).count() == 1
    assert visitor.page.locator(WRITER).evaluate("e => getComputedStyle(e).display") == "none"
    gap_with_writer = visitor.y_of("Below the owner") - visitor.y_of("Above the owner")
    screenshot(visitor.page, "owner-cookie-written")

    # a rerun of the same session keeps the owner and writes nothing more
    visitor.page.get_by_role("button", name="Run again").click()
    visitor.page.wait_for_timeout(300)
    assert visitor.settle() == shown
    assert visitor.writes() == 1

    # a reload is a new Streamlit session: the handshake carries the cookie, nothing is written
    assert visitor.reload() == shown
    assert visitor.writes() == 0
    assert visitor.page.locator(WRITER).count() == 0
    assert visitor.cookie()["value"] == token
    gap_without_writer = visitor.y_of("Below the owner") - visitor.y_of("Above the owner")
    assert gap_with_writer == pytest.approx(gap_without_writer, abs=0.5)
    screenshot(visitor.page, "owner-reloaded")

    # another browser profile is another visitor
    other = Visitor(browser, owner_url)
    try:
        other_shown = other.open()
        other_cookie = other.cookie()
        assert other_cookie is not None and other_cookie["value"] != token
        assert other_shown != shown and _prefix(other_cookie["value"]) == other_shown
    finally:
        other.close()

    assert visitor.urls, "no request was recorded"
    assert not [u for u in visitor.urls if token in u or shown in u]
    assert token not in visitor.page.url
    assert token not in visitor.page.content()


def test_a_well_formed_cookie_is_taken_as_it_is(visitor, owner_url):
    token = secrets.token_urlsafe(32)
    visitor.context.add_cookies([{"name": COOKIE, "value": token, "url": owner_url}])
    assert visitor.open() == _prefix(token)
    assert visitor.page.locator(WRITER).count() == 0
    assert visitor.writes() == 0
    assert visitor.cookie()["value"] == token


def test_a_cookie_written_since_the_session_began_is_not_overwritten(visitor):
    """Another tab of this visitor may write the cookie after this session's handshake: this
    session's writer then leaves it alone (replacing it would lose what is filed under it)."""
    token = secrets.token_urlsafe(32)
    # Once the websocket is open (the handshake went without a cookie), another "tab" writes one,
    # straight into the jar so that ownerCookieWrites counts only the writer's writes.
    visitor.context.add_init_script(
        """(() => {
          const jar = Object.getOwnPropertyDescriptor(Document.prototype, "cookie");
          const Native = window.WebSocket;
          window.WebSocket = class extends Native {
            constructor(...args) {
              super(...args);
              this.addEventListener("open", () => jar.set.call(document, "COOKIE=TOKEN; Path=/"), { once: true });
            }
          };
        })();""".replace("COOKIE", COOKIE).replace("TOKEN", token)
    )
    shown = visitor.open()
    assert shown != _prefix(token)  # this session had no cookie and made its own owner
    assert visitor.page.locator(WRITER).count() == 1  # its writer was mounted ...
    visitor.page.wait_for_timeout(500)
    assert visitor.writes() == 0  # ... and wrote nothing
    assert visitor.cookie()["value"] == token
    assert visitor.reload() == _prefix(token)


@pytest.mark.parametrize("hostile", ["a" * 42, "a" * 44, "%3Cscript%3E", "a" * 40 + "%0A"])
def test_a_malformed_cookie_is_replaced(visitor, owner_url, hostile):
    visitor.context.add_cookies([{"name": COOKIE, "value": hostile, "url": owner_url}])
    shown = visitor.open()
    assert shown != _prefix(hostile)
    deadline = time.monotonic() + 10
    while visitor.cookie()["value"] == hostile and time.monotonic() < deadline:
        time.sleep(0.1)
    token = visitor.cookie()["value"]
    assert is_token(token) and _prefix(token) == shown
    assert visitor.reload() == shown


def test_on_https_the_cookie_is_secure(browser, owner_script, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the test server's certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    proc, url = _serve(
        owner_script, "--server.sslCertFile", str(cert), "--server.sslKeyFile", str(key), scheme="https"
    )
    visitor = Visitor(browser, url, ignore_https_errors=True)
    try:
        shown = visitor.open()
        cookie = visitor.cookie()
        assert cookie is not None and cookie["secure"] and cookie["sameSite"] == "Lax"
        assert _prefix(cookie["value"]) == shown
        assert visitor.reload() == shown
    finally:
        visitor.close()
        _stop(proc)
