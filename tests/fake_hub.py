"""A stand-in for the Hugging Face hub on 127.0.0.1, so picker tests need no network.

It answers what huggingface_hub's model_info, list_repo_tree, snapshot_download and
hf_hub_download ask (point HF_ENDPOINT at FakeHub.url):

    GET  /api/models/<owner>/<name>[/revision/<rev>]   -> {"id", "sha", "siblings", "safetensors"}
    GET  /api/models/<owner>/<name>/tree/<rev>          -> [{"type": "file", "path", "size", "oid"}]
    HEAD /<owner>/<name>/resolve/<rev>/<file>           -> X-Repo-Commit, ETag, Content-Length
    GET  /<owner>/<name>/resolve/<rev>/<file>           -> the bytes (Range honoured), at `rate` B/s

Unknown repos answer 404 with X-Error-Code: RepoNotFound, as the hub does; repos in `gated`
answer 403 GatedRepo. Every request is logged in `requests`, so a test can check that a cached
model is found without one.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

PIECE = 64 * 1024


class FakeHub:
    def __init__(
        self, repos: dict[str, Path], rate: float | None = None, gated: tuple[str, ...] = ()
    ) -> None:
        self.repos = {repo: Path(folder) for repo, folder in repos.items()}
        self.rate = rate  # bytes per second for file bodies (None: as fast as possible)
        self.gated = set(gated)
        self.requests: list[tuple[str, str]] = []
        self.bytes_sent = 0
        self._server: ThreadingHTTPServer | None = None
        self._stopping = False
        self.url = ""

    def sha(self, repo: str) -> str:
        return hashlib.sha1(repo.encode()).hexdigest()  # 40 hex digits, like a commit id

    def files(self, repo: str) -> dict[str, Path]:
        folder = self.repos[repo]
        return {p.name: p for p in sorted(folder.iterdir()) if p.is_file()}

    def params(self, repo: str) -> int:
        from core.hub import folder_parameters

        return folder_parameters(self.repos[repo])

    def start(self, port: int = 0) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection: nothing outlives stop()

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
                hub._handle(self, head=True)

            def do_GET(self) -> None:  # noqa: N802
                hub._handle(self, head=False)

        self._stopping = False
        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop answering, and cut any transfer under way (as a network outage would)."""
        self._stopping = True
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- requests --------------------------------------------------------------------------------
    def _handle(self, req: BaseHTTPRequestHandler, head: bool) -> None:
        path = unquote(urlparse(req.path).path)
        self.requests.append(("HEAD" if head else "GET", path))
        parts = [p for p in path.split("/") if p]
        try:
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                repo = f"{parts[2]}/{parts[3]}"
                if self._refused(req, repo):
                    return
                if len(parts) >= 5 and parts[4] == "tree":
                    self._json(req, [self._entry(repo, n, p) for n, p in self.files(repo).items()])
                else:
                    self._json(req, self._info(repo))
                return
            if len(parts) >= 5 and parts[2] == "resolve":
                repo, name = f"{parts[0]}/{parts[1]}", "/".join(parts[4:])
                if self._refused(req, repo):
                    return
                files = self.files(repo)
                if name not in files:
                    self._status(req, 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": self.sha(repo)})
                    return
                self._file(req, repo, files[name], head)
                return
            self._status(req, 404)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (a cancelled download)

    def _refused(self, req: BaseHTTPRequestHandler, repo: str) -> bool:
        if repo in self.gated:
            self._status(
                req, 403, {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access to this repo is gated."}
            )
            return True
        if repo not in self.repos:
            self._status(
                req, 404, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}
            )
            return True
        return False

    def _info(self, repo: str) -> dict:
        info = {
            "id": repo,
            "modelId": repo,
            "sha": self.sha(repo),
            "private": False,
            "siblings": [{"rfilename": name} for name in self.files(repo)],
        }
        try:
            n = self.params(repo)
        except (OSError, ValueError, KeyError, TypeError):  # unreadable weights: the hub then omits the count
            return info
        return {**info, "safetensors": {"parameters": {"F32": n}, "total": n}}

    def _entry(self, repo: str, name: str, path: Path) -> dict:
        return {"type": "file", "path": name, "size": path.stat().st_size, "oid": self._etag(path)}

    @staticmethod
    def _etag(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    def _file(self, req: BaseHTTPRequestHandler, repo: str, path: Path, head: bool) -> None:
        data = path.read_bytes()
        start = 0
        ranged = req.headers.get("Range", "")
        if ranged.startswith("bytes=") and ranged[6:].split("-")[0].isdigit():
            start = int(ranged[6:].split("-")[0])
        body = data[start:]
        req.send_response(206 if start else 200)
        req.send_header("X-Repo-Commit", self.sha(repo))
        req.send_header("ETag", f'"{self._etag(path)}"')
        req.send_header("Content-Length", str(len(body)))
        req.send_header("Content-Type", "application/octet-stream")
        if start:
            req.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        req.end_headers()
        if head:
            return
        for i in range(0, len(body), PIECE):
            if self._stopping:
                raise ConnectionResetError("the fake hub stopped")
            piece = body[i : i + PIECE]
            req.wfile.write(piece)
            self.bytes_sent += len(piece)
            if self.rate:
                time.sleep(len(piece) / self.rate)

    @staticmethod
    def _json(req: BaseHTTPRequestHandler, payload: object) -> None:
        body = json.dumps(payload).encode()
        req.send_response(200)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)

    @staticmethod
    def _status(req: BaseHTTPRequestHandler, code: int, headers: dict[str, str] | None = None) -> None:
        req.send_response(code)
        for key, value in (headers or {}).items():
            req.send_header(key, value)
        req.send_header("Content-Length", "0")
        req.end_headers()


# -- pytest fixtures: import fake_hub_fixture and tiny_repos_fixture into a test module -----------------------------------------------
TINY = "glassbox-test/tiny-llama"  # a tiny random Llama with the SmolLM2 tokenizer (tests/tiny_models.py)
TINY_QWEN = "glassbox-test/tiny-qwen2"


@pytest.fixture(scope="session", name="tiny_repos")
def tiny_repos_fixture(lm, tmp_path_factory) -> dict[str, Path]:
    """{hub id: folder} of two tiny models, built once per test session."""
    from tests.tiny_models import build

    root = tmp_path_factory.mktemp("tiny-hub")
    return {
        TINY: build("llama", root / "llama", lm.tokenizer),
        TINY_QWEN: build("qwen2", root / "qwen2", lm.tokenizer),
    }


@pytest.fixture(name="fake_hub")
def fake_hub_fixture(tiny_repos, tmp_path, monkeypatch) -> Iterator[FakeHub]:
    """The fake hub serving the tiny models, with HF_ENDPOINT and an empty hub cache pointed at it."""
    from core.hub import clear_reachability

    with FakeHub(tiny_repos) as served:
        monkeypatch.setenv("HF_ENDPOINT", served.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("GLASSBOX_EXTRA_MODEL_GB", raising=False)
        clear_reachability()
        yield served
        # A cancelled download's reading thread stops at its next chunk: let it, before the server
        # goes (a thread left retrying against a dead server would close huggingface_hub's
        # shared HTTP client under the next test's download).
        for thread in threading.enumerate():
            if thread.name.startswith("glassbox-download-"):
                thread.join(30)
    clear_reachability()
