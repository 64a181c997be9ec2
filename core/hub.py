"""The Hugging Face hub, for the sidebar's model picker: which small chat models it offers, how
much memory each needs, whether the hub answers, and a download with progress and cancel.

Downloads go into the hub's own cache (HF_HUB_CACHE, else HF_HOME/hub, else
~/.cache/huggingface/hub), so a model fetched once is found again without a request, and anything
else that reads that cache (transformers) shares it. Tests point HF_ENDPOINT at a local server.

RAM need (the rule the picker and the deploy guide use): while a model loads, its fp32 weights
exist twice for a moment (the lean decode copy is built before the first copy is let go), so
a model needs 2 x 4 bytes per parameter, plus one conversation's KV cache at 2,048 tokens
(2 x layers x key/value heads x head size x 4 bytes per token). Measured for SmolLM2-135M: 1.18 GB
peak against 1.17 GB by the rule; a Qwen3-style model of the same size peaked at 0.83 GB. Once
loaded a model settles near 1.25 x its fp32 weights.

Never imports streamlit.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.imports import TRANSFORMERS_IMPORT

log = logging.getLogger(__name__)

HUB_UNREACHABLE = "The Hugging Face hub cannot be reached from this server; the bundled model works offline."
ENV_BUDGET = "GLASSBOX_EXTRA_MODEL_GB"  # the most memory an extra model may need (default: what is free)
RAM_CONTEXT = 2048  # tokens of KV cache counted in a model's RAM need
REACH_TTL = 60.0  # seconds a reachability answer is kept
PROBE_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"  # any answer about it (even 404) means the hub answers
# Only the top-level files a transformers chat model needs: safetensors weights (never pickled
# .bin files from an arbitrary hub id), configs, tokenizer files and the chat template.
ALLOW = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]
IGNORE = ["*/*"]  # sub-folders (onnx/, runs/, original/...) hold other formats
CHUNK = 1024 * 1024  # bytes per read while downloading: Cancel takes effect within one chunk
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


class HubError(RuntimeError):
    """A download or check failed; the message is a sentence for the visitor."""


class HubUnreachable(HubError):
    def __init__(self) -> None:
        super().__init__(HUB_UNREACHABLE)


class DownloadCancelled(HubError):
    pass


def ram_need_gb(parameters: int, kv_bytes_per_token: int = 0) -> float:
    """GB of memory a model needs, by the rule in this module's docstring, rounded up to 0.1 GB."""
    need = 2 * 4 * parameters + kv_bytes_per_token * RAM_CONTEXT
    return math.ceil(need / 1e8 - 1e-9) / 10


@dataclass(frozen=True)
class KnownModel:
    """A small chat model the picker offers by name. Parameter counts and shapes are the
    models' own (config.json), so the RAM need is computed, not guessed."""

    repo_id: str
    name: str
    parameters: int
    n_layers: int
    n_kv_heads: int
    head_dim: int
    note: str = ""

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * 4  # keys and values, fp32

    @property
    def ram_gb(self) -> float:
        return ram_need_gb(self.parameters, self.kv_bytes_per_token)

    @property
    def size(self) -> str:
        """'596M parameters' or '1.71B parameters'."""
        p = self.parameters
        return f"{p / 1e9:.2f}B parameters" if p >= 1e9 else f"{p / 1e6:.0f}M parameters"


# The bundled default, for the RAM table (the picker lists it first, from the loaded model).
BUNDLED = KnownModel("HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct", 134_515_008, 30, 3, 64)
KNOWN_MODELS: tuple[KnownModel, ...] = (  # smallest need first
    KnownModel(
        "google/gemma-3-270m-it",
        "Gemma-3-270m-it",
        268_098_176,
        18,
        1,
        256,
        note="gated: accept Google's licence on huggingface.co and give the server a token (HF_TOKEN)",
    ),
    KnownModel("HuggingFaceTB/SmolLM2-360M-Instruct", "SmolLM2-360M-Instruct", 361_821_120, 32, 5, 64),
    KnownModel("Qwen/Qwen2.5-0.5B-Instruct", "Qwen2.5-0.5B-Instruct", 494_032_768, 24, 2, 64),
    KnownModel("Qwen/Qwen3-0.6B", "Qwen3-0.6B", 596_049_920, 28, 8, 128),
    KnownModel("HuggingFaceTB/SmolLM2-1.7B-Instruct", "SmolLM2-1.7B-Instruct", 1_711_376_384, 24, 32, 64),
)


def known(repo_id: str) -> KnownModel | None:
    return next((m for m in (*KNOWN_MODELS, BUNDLED) if m.repo_id == repo_id), None)


def display_name(repo_id: str) -> str:
    """'Qwen3-0.6B' for a known model, else the hub id itself."""
    model = known(repo_id)
    return model.name if model else repo_id


def is_repo_id(text: str) -> bool:
    """True for a well-formed hub model id, owner/name."""
    return bool(_REPO_ID.match(text)) and ".." not in text and "--" not in text


def check_repo_id(text: str) -> str:
    """The hub id, stripped; HubError with a sentence when it is not of the form owner/name."""
    repo_id = text.strip()
    if not is_repo_id(repo_id):
        raise HubError(
            "A hub id has the form owner/name, for example HuggingFaceTB/SmolLM2-360M-Instruct "
            "(letters, digits, '-', '_' and '.')."
        )
    return repo_id


# -- where ---------------------------------------------------------------------------------------
def hub_endpoint() -> str:
    """HF_ENDPOINT, read now (huggingface_hub reads it once at import)."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_cache_dir() -> Path:
    """The hub cache, read now: HF_HUB_CACHE, else HF_HOME/hub, else huggingface_hub's default."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def _offline_mode() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").upper()
    return constants.HF_HUB_OFFLINE or flag in ("1", "ON", "YES", "TRUE")


# -- does the hub answer? -----------------------------------------------------------------------
_REACH: dict[str, tuple[float, bool]] = {}  # endpoint -> (when, answered)
_REACH_LOCK = threading.Lock()


def reachable(timeout: float = 1.5) -> bool:
    """Whether the hub answers from this server; each answer is kept for a minute (REACH_TTL)."""
    endpoint = hub_endpoint()
    with _REACH_LOCK:
        seen = _REACH.get(endpoint)
    if seen is not None and time.monotonic() - seen[0] < REACH_TTL:
        return seen[1]
    answered = _probe(endpoint, timeout)
    with _REACH_LOCK:
        _REACH[endpoint] = (time.monotonic(), answered)
    return answered


def clear_reachability() -> None:
    """Forget the kept answers (tests; or after the network came back)."""
    with _REACH_LOCK:
        _REACH.clear()


def _probe(endpoint: str, timeout: float) -> bool:
    if _offline_mode():
        return False
    from huggingface_hub.utils import get_session

    try:
        get_session().head(f"{endpoint}/api/models/{PROBE_REPO}", timeout=timeout)
    except Exception:  # noqa: BLE001 - any failure to get an answer means "not reachable"
        return False
    return True  # any HTTP answer, even an error status, means the hub is there


# -- memory --------------------------------------------------------------------------------------
def _cgroup_free() -> int | None:
    """Bytes this container may still allocate under its cgroup limit (None: no limit)."""
    pairs = (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    )
    for limit_path, used_path in pairs:
        try:
            limit = Path(limit_path).read_text().strip()
            used = int(Path(used_path).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or int(limit) >= 2**60:
            return None
        return max(int(limit) - used, 0)
    return None


def memory_free_gb() -> float:
    """Memory free for a new model now: the machine's available memory, within the container's limit."""
    import psutil

    free = psutil.virtual_memory().available
    capped = _cgroup_free()
    return (min(free, capped) if capped is not None else free) / 1e9


def memory_budget_gb(freed_gb: float = 0.0) -> float:
    """The most an extra model may need: GLASSBOX_EXTRA_MODEL_GB when set, else free memory plus
    what unloading the current extra model would free (freed_gb)."""
    configured = os.environ.get(ENV_BUDGET)
    if configured:
        try:
            return float(configured)
        except ValueError:
            log.warning("%s=%r is not a number; using the free memory", ENV_BUDGET, configured)
    return memory_free_gb() + freed_gb


# -- a downloaded folder ------------------------------------------------------------------------
def cached_snapshot(repo_id: str, cache_dir: Path | None = None) -> Path | None:
    """The complete downloaded snapshot of repo_id, or None. Never makes a request."""
    from huggingface_hub import snapshot_download

    if not is_repo_id(repo_id):
        return None
    try:
        folder = Path(
            snapshot_download(
                repo_id,
                cache_dir=cache_dir or hub_cache_dir(),
                local_files_only=True,
                allow_patterns=ALLOW,
                ignore_patterns=IGNORE,
            )
        )
    except Exception:  # noqa: BLE001 - not cached, or incomplete (a cancelled download)
        return None
    return folder if _complete(folder) else None


def _complete(folder: Path) -> bool:
    """config.json and every weights file present (the hub's own check needs its tree listing,
    which a snapshot made by transformers file by file does not have)."""
    if not (folder / "config.json").is_file():
        return False
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return all((folder / s).is_file() for s in shards)
    return any(folder.glob("*.safetensors"))


def folder_parameters(folder: Path) -> int:
    """Parameters in a folder's safetensors files, from their headers (no weights are read)."""
    total = 0
    for path in sorted(folder.glob("*.safetensors")):
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        for name, entry in header.items():
            if name != "__metadata__":
                total += math.prod(entry["shape"])
    return total


def _config(folder: Path) -> dict[str, Any]:
    config = json.loads((folder / "config.json").read_text())
    return config.get("text_config") or config


def folder_need_gb(folder: Path) -> float:
    """The RAM need of a downloaded model, by the module's rule, from its own files."""
    c = _config(folder)
    heads = int(c.get("num_attention_heads") or c.get("n_head") or 1)
    hidden = int(c.get("hidden_size") or c.get("n_embd") or 0)
    layers = int(c.get("num_hidden_layers") or c.get("n_layer") or 0)
    kv_heads = int(c.get("num_key_value_heads") or heads)
    head_dim = int(c.get("head_dim") or hidden // heads)
    return ram_need_gb(folder_parameters(folder), 2 * layers * kv_heads * head_dim * 4)


def chat_model_problem(folder: Path, repo_id: str) -> str | None:
    """Why a downloaded folder cannot be the chat model (None when it can): not a causal
    language model transformers knows, or no chat template."""
    with TRANSFORMERS_IMPORT:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return f"{repo_id} has no readable config.json"
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return f"{repo_id} is not a text-generating model this app can load (its type is {model_type!r})"
    try:
        tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        tokenizer_config = {}
    has_template = bool(tokenizer_config.get("chat_template")) or any(
        (folder / name).is_file() for name in ("chat_template.jinja", "chat_template.json")
    )
    if not has_template:
        return f"{repo_id} has no chat template, so it cannot hold a conversation"
    return None


# -- download ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DownloadProgress:
    done: int  # bytes on disk (files already in the cache count as done)
    total: int  # bytes of every file the model needs
    bytes_per_s: float  # over the last few seconds

    @property
    def fraction(self) -> float:
        return min(self.done / self.total, 1.0) if self.total else 1.0


Progress = Callable[[DownloadProgress], None]


class _Tracker:
    """Counts the bytes huggingface_hub reports through its progress bars, and stops the
    download from inside the read loop when cancel is set."""

    def __init__(self, total: int, already: int, progress: Progress | None, cancel: threading.Event) -> None:
        self.total, self.already, self.progress, self.cancel = total, already, progress, cancel
        self.lock = threading.Lock()
        self.bars: list[Any] = []
        self.samples: deque[tuple[float, int]] = deque([(time.monotonic(), already)], maxlen=64)
        self.last_report = 0.0

    def done(self) -> int:
        # snapshot_download feeds the same bytes to two bars (network and disk): take the larger
        return self.already + max((bar.n for bar in self.bars if bar.counts), default=0)

    def restart(self, already: int) -> None:
        """A new attempt: count from the bytes already complete on disk."""
        with self.lock:
            self.already, self.bars = already, []

    def moved(self, final: bool = False) -> None:
        now = time.monotonic()
        with self.lock:
            done = self.done()
            self.samples.append((now, done))
            if not final and now - self.last_report < 0.1:
                return
            self.last_report = now
            while len(self.samples) > 2 and now - self.samples[0][0] > 3.0:
                self.samples.popleft()
            t0, d0 = self.samples[0]
            speed = (done - d0) / (now - t0) if now > t0 else 0.0
        if self.progress is not None:
            self.progress(DownloadProgress(min(done, self.total), self.total, max(speed, 0.0)))

    def bar_class(self) -> type:
        tracker = self

        class Bar:
            """Enough of tqdm for huggingface_hub; every other call is a no-op."""

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                self.counts = kwargs.get("unit") == "B"  # bytes (not the count of files)
                self.n = 0
                self.total = kwargs.get("total")
                self.format_dict: dict[str, Any] = {}
                with tracker.lock:
                    tracker.bars.append(self)

            def update(self, n: float | None = 1) -> None:
                if tracker.cancel.is_set():
                    # raised inside huggingface_hub's read loop: it deletes its temporary file
                    raise DownloadCancelled("The download was cancelled.")
                self.n += int(n or 0)
                if self.counts:
                    tracker.moved()

            def __enter__(self) -> Bar:
                return self

            def __exit__(self, *exc: object) -> None:
                return None

            def __getattr__(self, name: str) -> Callable[..., None]:
                return lambda *args, **kwargs: None  # refresh, close, set_description, ...

        return Bar


def _configure_hub() -> None:
    """Make a download stoppable within a chunk.

    subtle: Xet downloads run in Rust and ignore an exception raised from their progress
    callback (hf_xet logs "Python exception updating progress" and goes on), so Cancel could
    not stop one; plain HTTPS downloads read in Python, and stop at the next chunk. The hub
    serves every file over HTTPS as well. The read size drops from 10 MB to 1 MB so a stop
    is prompt on a slow line. Both are process-wide settings of huggingface_hub.
    """
    from huggingface_hub import constants

    constants.HF_HUB_DISABLE_XET = True
    constants.DOWNLOAD_CHUNK_SIZE = CHUNK


def _explained(exc: BaseException, repo_id: str) -> HubError:
    """A sentence for the visitor from whatever the hub client raised."""
    import httpx2
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    if isinstance(exc, HubError):
        return exc
    if isinstance(exc, (httpx2.ConnectError, httpx2.TimeoutException, OfflineModeIsEnabled)):
        return HubUnreachable()
    if isinstance(exc, LocalEntryNotFoundError):  # the hub did not answer and nothing is cached
        return HubUnreachable()
    if isinstance(exc, GatedRepoError):
        return HubError(
            f"{repo_id} is gated: accept its licence on huggingface.co, then give this server a "
            "Hugging Face token (the HF_TOKEN secret)."
        )
    if isinstance(exc, RepositoryNotFoundError):
        return HubError(f"There is no model called {repo_id} on the Hugging Face hub (or it is private).")
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        return HubError(f"The Hugging Face hub refused the download of {repo_id} (HTTP {status}).")
    if isinstance(exc, OSError):
        return HubError(f"The download of {repo_id} could not be saved on this server: {exc}")
    detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return HubError(f"The download of {repo_id} failed: {detail}")


def download(
    repo_id: str,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    *,
    max_gb: float | None = None,
    cache_dir: Path | None = None,
) -> Path:
    """Download a chat model's files from the hub into the hub cache; returns the snapshot folder.

    A model already in the cache returns at once, without a request. progress receives the
    bytes done and total and the speed, from the download's threads, at most ten times a
    second. Setting cancel stops it: this returns within a tenth of a second raising
    DownloadCancelled, and the file being read stops within a chunk (its temporary file is
    deleted, so no half file is ever taken for a complete one). max_gb: refuse, before any
    weights are fetched, a model whose RAM need is larger. Raises HubError (HubUnreachable
    when the hub does not answer) with a sentence for the visitor.
    """
    import httpx2
    from huggingface_hub import HfApi, snapshot_download, try_to_load_from_cache
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import filter_repo_objects

    repo_id = check_repo_id(repo_id)
    cache = Path(cache_dir) if cache_dir else hub_cache_dir()
    cancel = cancel or threading.Event()
    found = cached_snapshot(repo_id, cache)
    if found is not None:
        size = sum(p.stat().st_size for p in found.iterdir() if p.is_file())
        if progress is not None:
            progress(DownloadProgress(size, size, 0.0))
        return found
    _configure_hub()
    endpoint = hub_endpoint()
    api = HfApi(endpoint=endpoint)
    try:
        info = api.model_info(repo_id, timeout=15)
        tree = [
            f
            for f in api.list_repo_tree(repo_id, revision=info.sha, recursive=True)
            if isinstance(f, RepoFile)
        ]
    except Exception as exc:  # noqa: BLE001 - every failure becomes a sentence
        raise _explained(exc, repo_id) from exc
    wanted = set(filter_repo_objects([f.path for f in tree], allow_patterns=ALLOW, ignore_patterns=IGNORE))
    files = [f for f in tree if f.path in wanted]
    weights = [f for f in files if f.path.endswith(".safetensors")]
    if not any(f.path == "config.json" for f in files):
        raise HubError(f"{repo_id} is not a transformers model (it has no config.json).")
    if not weights:
        raise HubError(f"{repo_id} has no safetensors weights; the picker loads only safetensors models.")
    if max_gb is not None:
        st_info = getattr(info, "safetensors", None)
        # without the hub's count, assume 2 bytes per parameter (bf16), which overestimates fp32 files
        parameters = st_info.total if st_info else sum(f.size for f in weights) // 2
        need = ram_need_gb(parameters)
        if need > max_gb:
            raise HubError(
                f"{repo_id} needs about {need:.1f} GB of memory to load ({parameters / 1e6:,.0f}M parameters "
                f"in fp32), and this server has {max(max_gb, 0):.1f} GB for it."
            )
    total = sum(f.size for f in files)

    def cached_bytes() -> int:
        revision = info.sha
        return sum(
            f.size
            for f in files
            if isinstance(try_to_load_from_cache(repo_id, f.path, cache_dir=cache, revision=revision), str)
        )

    tracker = _Tracker(total, cached_bytes(), progress, cancel)
    outcome: dict[str, Any] = {}
    finished = threading.Event()

    def run() -> None:
        try:
            for attempt in (1, 2):
                try:
                    outcome["path"] = snapshot_download(
                        repo_id,
                        cache_dir=cache,
                        endpoint=endpoint,
                        allow_patterns=ALLOW,
                        ignore_patterns=IGNORE,
                        tqdm_class=tracker.bar_class(),
                        max_workers=4,
                    )
                    return
                except (httpx2.ReadError, httpx2.RemoteProtocolError):
                    # subtle: huggingface_hub closes its shared HTTP client whenever a request in the
                    # process fails to connect, which cuts every other download under way. Go on
                    # once more: the files already complete are kept.
                    if attempt == 2 or cancel.is_set():
                        raise
                    tracker.restart(cached_bytes())
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
            outcome["error"] = exc
        finally:
            finished.set()

    threading.Thread(target=run, name=f"glassbox-download-{repo_id}", daemon=True).start()
    # The caller returns as soon as cancel is set; the reading thread stops at its next chunk.
    while not finished.wait(0.05):
        if cancel.is_set():
            raise DownloadCancelled(f"The download of {display_name(repo_id)} was cancelled.")
    error = outcome.get("error")
    if error is not None:
        if isinstance(error, DownloadCancelled) or cancel.is_set():
            raise DownloadCancelled(f"The download of {display_name(repo_id)} was cancelled.") from error
        raise _explained(error, repo_id) from error
    folder = Path(outcome["path"])
    if not _complete(folder):
        raise HubError(f"The download of {repo_id} ended without all of its weights.")
    tracker.already, tracker.bars = total, []
    tracker.moved(final=True)
    return folder
