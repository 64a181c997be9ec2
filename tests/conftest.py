"""Shared fixtures. Tests use the real model; the converted cache makes it load in about a second."""

from __future__ import annotations

import copy
import os
import tempfile
import threading
import time
from pathlib import Path

import pytest

from core.conversation import Message, build_prompt
from core.generation import generate, new_trace
from core.models import LoadedModel, load_chat_model
from core.scheduler import DECODE_THREAD
from core.settings import DEFAULT_SYSTEM_PROMPT, SamplingSettings
from core.trace import Trace

ROOT = Path(__file__).resolve().parent.parent
# Tests never touch the user's own conversations: every store an app opens in a test (AppTest,
# or a browser test's server, which inherits this environment) lives in a throwaway folder.
os.environ["GLASSBOX_DATA_DIR"] = tempfile.mkdtemp(prefix="glassbox-test-data-")
os.environ.pop("GLASSBOX_DB_URL", None)
APP = str(ROOT / "app.py")


@pytest.fixture(scope="session")
def lm() -> LoadedModel:
    """The real SmolLM2-135M-Instruct, from the user cache (converted on first use).

    The start leaves transformers to a background thread (core.models). Tests import it from
    their own code, outside core.imports' lock, and a thread that imports transformers while
    another runs its __init__ gets the half-made module, without its lazy names (CPython hands
    back the module it found, not the one transformers puts in its place): so tests begin once
    that load is done. tests/test_chat_tokenizer.py checks the start itself, in a subprocess.
    """
    loaded = load_chat_model()
    loaded.model  # noqa: B018 - waits for the background load
    return loaded


def make_trace(lm: LoadedModel, messages: list[Message], settings: SamplingSettings | None = None) -> Trace:
    prompt = build_prompt(lm.tokenizer, messages, budget=2048, reserve=0)
    return generate(
        lm,
        new_trace(
            lm, prompt.ids, prompt.spans, settings or SamplingSettings(temperature=0, max_new_tokens=32)
        ),
    )


def make_traces(lm: LoadedModel, jobs: list[tuple[list[Message], SamplingSettings]]) -> list[Trace]:
    """make_trace for several (messages, settings) at once: the decode loop writes them in one
    batch (core/scheduler.py), each equal to the same reply made alone (tests/test_scheduler.py)."""
    traces: list[Trace | None] = [None] * len(jobs)

    def one(i: int) -> None:
        traces[i] = make_trace(lm, *jobs[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if any(t is None for t in traces):
        raise RuntimeError("a reply failed: see the thread's traceback above")
    return traces  # type: ignore[return-value]


OCEAN = "Write a short poem about the ocean."


@pytest.fixture(scope="session")
def _ocean_poem(lm) -> Trace:
    return make_trace(
        lm,
        [Message("system", DEFAULT_SYSTEM_PROMPT), Message("user", OCEAN)],
        SamplingSettings(temperature=0, max_new_tokens=200),
    )


@pytest.fixture()
def ocean_poem(_ocean_poem) -> Trace:
    """The greedy 200-token ocean poem, which goes round in a loop: written once per test run
    (8 s), a fresh copy for each test."""
    return copy.deepcopy(_ocean_poem)


@pytest.fixture(scope="session")
def two_turn() -> list[Message]:
    return [
        Message("system", "You are a helpful assistant."),
        Message("user", "What is the capital of France?"),
        Message("assistant", "The capital of France is Paris."),
        Message("user", "And of Italy?"),
    ]


@pytest.fixture(scope="session")
def greedy_trace(lm: LoadedModel, two_turn: list[Message]) -> Trace:
    """A real greedy reply to a two-turn conversation (deterministic)."""
    return make_trace(lm, two_turn)


# -- Databases for the storage tests (tests/postgres.py) ----------------------------------------

from collections.abc import Iterator  # noqa: E402

from tests import postgres as pg  # noqa: E402


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[pg.PostgresServer]:
    """One throwaway PostgreSQL server for the whole run (started on first use, ~1 s).

    Fails, never skips, when Debian's postgresql is not installed: `make test` installs it.
    """
    with pg.postgres_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL per test, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'glassbox.db'}"
        return
    server: pg.PostgresServer = request.getfixturevalue("postgres_server")
    server.start()  # no-op when running; revives it after a fault test that failed mid-outage
    url = server.create_database()
    try:
        yield url
    finally:
        server.start()
        server.drop_database(url.rsplit("/", 1)[1])


# -- Tiny models of every architecture the app accepts (tests/tiny_models.py) -------------------


@pytest.fixture(scope="session")
def tiny_model_dir(lm: LoadedModel, tmp_path_factory: pytest.TempPathFactory):
    """tiny_model_dir(arch) -> a folder holding that tiny model (built once per session)."""
    from tests.tiny_models import build

    root = tmp_path_factory.mktemp("tiny-models")
    return lambda arch: build(arch, root / arch, lm.tokenizer)


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_dir):
    """tiny_lm(arch) -> the loaded tiny model of that architecture (loaded once per session)."""
    loaded: dict[str, LoadedModel] = {}

    def get(arch: str) -> LoadedModel:
        if arch not in loaded:
            loaded[arch] = load_chat_model(str(tiny_model_dir(arch)))
        return loaded[arch]

    return get


@pytest.fixture(scope="session", autouse=True)
def _background_work_ends_before_exit():
    """The app's background threads (the decode-thread measurement, the self-checks, a model
    loading) are daemons: one still inside torch when the interpreter exits aborts the whole
    run ("terminate called without an active exception", exit code 134). Wait for them; not
    for the decode loop (glassbox-decode), which idles between replies and never ends."""
    yield
    deadline = time.monotonic() + 120
    for thread in threading.enumerate():
        if thread.daemon and thread.name.startswith("glassbox-") and thread.name != DECODE_THREAD:
            thread.join(max(0.0, deadline - time.monotonic()))
