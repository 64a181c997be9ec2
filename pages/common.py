"""What every page shares: the cached models, the conversation in session state, and the
message picker. Not a page itself (app.py lists the pages).

Session-state keys are prefixed by owner: "chat.*" for the conversation, "<page>.*" for a page.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import streamlit as st
from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx

from core import hub
from core.conversation import Message, reply_number
from core.cores import fit_torch_threads
from core.generation import warm_up
from core.imports import TRANSFORMERS_IMPORT
from core.limits import Activity, Limits, RateLimiter, limits_from, wait_message
from core.memory import give_back_freed_memory
from core.models import ENV_MODEL, LoadedModel, ModelUnavailable, load_chat_model, load_embedder
from core.redact import scrub
from core.runner import prove_in_background, reporting
from core.scheduler import scheduler_for, status_words
from core.settings import DEFAULT_CONTEXT_BUDGET, DEFAULT_SYSTEM_PROMPT, SamplingSettings
from core.tokens import readable
from core.trace import Trace
from pages.storage import setting

MESSAGES = "chat.messages"
SYSTEM_PROMPT = "chat.system_prompt"
BUDGET = "chat.context_budget"
SELECTED = "explain.selected"  # trace_id of the reply the explanation pages show
TOGGLES = "explain.toggle."  # + message id: each reply's Explain toggle on the chat page
CHOICE = "model.choice"  # the hub id this visitor picked in the sidebar (absent: the default model)

log = logging.getLogger(__name__)
_DEFAULT = SamplingSettings()
# The chat page's sidebar widgets and their starting values. They are set through session
# state (restore()) rather than the widgets' value= arguments, so they survive other pages.
CHAT_WIDGETS: dict[str, object] = {
    "chat.temperature": _DEFAULT.temperature,
    "chat.top_k": _DEFAULT.top_k,
    "chat.top_p": _DEFAULT.top_p,
    "chat.max_new_tokens": _DEFAULT.max_new_tokens,
    "chat.seed": _DEFAULT.seed,
    "chat.repetition_penalty": _DEFAULT.repetition_penalty,
    BUDGET: DEFAULT_CONTEXT_BUDGET,
    SYSTEM_PROMPT: DEFAULT_SYSTEM_PROMPT,
}


KEPT = "kept."  # + a widget's key: its value, kept as plain state across pages


def restore(key: str, default: object) -> None:
    """Before drawing a widget: bring back its value if a visit to another page dropped it.

    subtle: Streamlit deletes a keyed widget's state at the end of any run that does not draw
    the widget, so a visit to another page would reset the chat's sliders, its system prompt
    and every Explain toggle. remember() keeps a copy under a key no widget owns.
    """
    if key not in st.session_state:
        st.session_state[key] = st.session_state.get(KEPT + key, default)


def remember(key: str) -> None:
    """After drawing a widget: keep its value for restore()."""
    if key in st.session_state:
        st.session_state[KEPT + key] = st.session_state[key]


config = setting  # a setting from the environment, else from Streamlit secrets, else None


def configured_model() -> str | None:
    """GLASSBOX_MODEL from the environment, else from Streamlit secrets, else None."""
    return config(ENV_MODEL)


_READY: set[str | None] = set()  # configured sources already loaded in this process


@st.cache_resource(show_spinner=False)
def _chat_model(configured: str | None) -> LoadedModel:
    fit_torch_threads()  # once per process: a container's CPU quota, not the host's core count
    lm = load_chat_model(configured)
    warm_up(lm)  # the fast decode path (already built when the model came from a local folder)
    prove_in_background(lm)  # the attention passes proven against an eager pass, once (core.runner)
    return lm


@st.cache_resource(show_spinner=False)
def _embedder():
    return load_embedder()


def chat_model(full: bool = True) -> LoadedModel:
    """The model this session chats with: the one picked in the sidebar's model picker
    (st.session_state[CHOICE], a downloaded hub id), else the default model.

    A picked model that cannot be loaded now (not downloaded, no room in memory) is dropped
    with a warning saying why, and the chat goes on with the default. full: as default_model.
    """
    choice = st.session_state.get(CHOICE)
    if choice:
        try:
            lm = _extra_here(choice)
        except ModelNotHere as exc:
            st.session_state.pop(CHOICE, None)
            st.warning(
                f"{hub.display_name(choice)} cannot be used now: {scrub(str(exc))}. "
                f"The chat uses {default_model(full=False).name} again."
            )
        else:
            if full:
                with st.spinner("Loading the model's layers for the explanations…"):
                    _wait_for_layers(lm)
            return lm
    return default_model(full)


def default_model(full: bool = True) -> LoadedModel:
    """The server's default model, loaded once per process, with a visible status on first load.

    Stops the page with a clear message (not a traceback) when no source works. The chat can
    start before the transformers model behind the explanation passes has finished loading
    in the background (full=False); every other page waits for it, with a spinner.
    """
    configured = configured_model()
    if configured in _READY:
        lm = _chat_model(configured)
        if full and lm.model_loaded:
            _wait_for_layers(lm)
        elif full:
            with st.spinner("Loading the model's layers for the explanations (a second or two)…"):
                _wait_for_layers(lm)
        return lm
    with st.status("Loading the language model (first visit only)…", expanded=True) as box:
        st.write(
            "Loading SmolLM2-135M-Instruct into memory. The very first start converts the bundled "
            "model to a fast-loading cache, which takes about 20 seconds; later starts take about one."
        )
        try:
            lm = _chat_model(configured)
        except ModelUnavailable as exc:
            box.update(label="No model could be loaded", state="error", expanded=True)
            st.error(str(exc))
            st.stop()
        box.update(label=f"{lm.name} is ready ({lm.load_seconds:.1f} s)", state="complete", expanded=False)
    _READY.add(configured)
    return default_model(full)


def _wait_for_layers(lm: LoadedModel) -> None:
    """Wait for the background load; if it failed, say so on the page and stop it (no traceback)."""
    try:
        lm.model  # noqa: B018 - waits for the background load, raises what it raised
    except Exception as exc:  # noqa: BLE001 - shown to the user instead of a traceback
        log.warning("background model load failed", exc_info=True)
        st.error(
            "The model's layers for the explanations could not be loaded, so this page cannot "
            f"be shown. The chat and the conversation are not affected.\n\nReason: {scrub(str(exc))}"
        )
        if st.button("Load the model again", icon="🔄"):
            _chat_model.clear()  # the next run loads it afresh; the conversation stays in the session
            _READY.clear()
            with _EXTRA_LOCK:
                _extra_model.clear()
                _RESIDENT.clear()
            st.rerun()
        st.stop()


# -- models picked in the sidebar (pages/model_picker.py) -----------------------------------------
# Besides the default model, at most ONE extra model is resident in the process: loading a
# second one unloads the first (its cache entry is cleared and the memory given back), so
# memory stays bounded however many visitors pick however many models. Visitors who picked
# different models take turns: each switch loads the model again from the disk cache.
EVICT_WAIT = 30.0  # seconds to wait for a reply that is using the extra model to end, before unloading it
_EXTRA_LOCK = threading.Lock()
_RESIDENT: dict[str, LoadedModel] = {}  # the extra model loaded now, by hub id (at most one entry)


class ModelNotHere(Exception):
    """An extra model cannot be used now. The message is a clause: "it is not downloaded on this server…"."""


NOT_DOWNLOADED = "it is not downloaded here; pick it in the chat's model picker to download it first"


@st.cache_resource(show_spinner=False, max_entries=1)
def _extra_model(source: str) -> LoadedModel:
    """A model downloaded from the hub (source: its hub id), loaded from the hub cache."""
    folder = hub.cached_snapshot(source)
    if folder is None:
        raise ModelNotHere(NOT_DOWNLOADED)
    problem = hub.chat_model_problem(folder, source)
    if problem:
        raise ModelNotHere(problem)

    def only_this_folder(message: str) -> None:
        # subtle: load_chat_model falls back to the default model when a configured source fails
        # (and would load a second copy of it). Each fallback announces itself through progress
        # before it loads anything, so refusing every other message keeps the failure a failure.
        if str(folder) not in message:
            raise RuntimeError(f"{source} did not load")

    try:
        lm = load_chat_model(str(folder), progress=only_this_folder)
    except ModelUnavailable as exc:
        reason = exc.attempts[0][1] if exc.attempts else str(exc)
        raise ModelNotHere(f"its files could not be loaded ({reason})") from exc
    if not lm.source.startswith("configured"):  # a fallback got through after all: never pass it off
        raise ModelNotHere("its files could not be loaded")
    lm.name = source  # traces record it: model_for finds the model again by this name
    lm.public_source = f"Hugging Face hub ({source}), picked in the sidebar"
    warm_up(lm)
    prove_in_background(lm)
    return lm


def extra_budget_gb() -> float:
    """The most memory an extra model may need now (unloading the current extra frees its weights)."""
    return hub.memory_budget_gb(sum(lm.n_params * 4 / 1e9 for lm in list(_RESIDENT.values())))


def _load_extra(source: str) -> LoadedModel:
    """The extra model `source`, loaded if needed. Loading one unloads any other extra first.

    Raises ModelNotHere when it is not downloaded, would not fit in memory, or another extra
    model is busy writing a reply for longer than EVICT_WAIT.
    """
    with _EXTRA_LOCK:
        if source in _RESIDENT:
            return _extra_model(source)
        folder = hub.cached_snapshot(source)
        if folder is None:
            raise ModelNotHere(NOT_DOWNLOADED)
        try:
            need, budget = hub.folder_need_gb(folder), extra_budget_gb()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelNotHere(f"its files could not be read ({scrub(str(exc))})") from exc
        if need > budget:
            raise ModelNotHere(
                f"it needs about {need:.1f} GB of memory to load, and this server has {budget:.1f} GB free for it"
            )
        for other in list(_RESIDENT):
            _unload(other)
        lm = _extra_model(source)
        _RESIDENT[source] = lm
        return lm


def _unload(source: str) -> None:
    """Unload the extra model `source` (the caller holds _EXTRA_LOCK)."""
    lm = _RESIDENT[source]
    if not lm.lock.acquire(timeout=EVICT_WAIT):  # a reply or an explanation is using it
        raise ModelNotHere(
            f"{hub.display_name(source)} is busy writing for another visitor, and only one extra model "
            "fits in memory; try again in a moment"
        )
    try:
        del _RESIDENT[source]
        _extra_model.clear(source)
        _forget_runner(lm)
    finally:
        lm.lock.release()
    del lm
    gc.collect()  # the model's modules hold reference cycles
    give_back_freed_memory()
    log.info("unloaded the extra model %s", source)


def _forget_runner(lm: LoadedModel) -> None:
    """core.runner keeps one Runner per model, and a Runner holds its model: drop it with the model."""
    from core import runner

    forget = getattr(runner, "forget", None)
    if forget is not None:
        forget(lm)
        return
    with runner._RUNNERS_LOCK:  # noqa: SLF001 - until core.runner offers forget(lm)
        runner._RUNNERS.pop(id(lm), None)  # noqa: SLF001


def _extra_here(source: str) -> LoadedModel:
    """_load_extra with a spinner when it has to load."""
    if source in _RESIDENT:
        return _load_extra(source)
    with st.spinner(f"Loading {hub.display_name(source)} (a few seconds)…"):
        return _load_extra(source)


@st.cache_resource(show_spinner=False, max_entries=4)
def _tokenizer_only(source: str) -> LoadedModel:
    """A downloaded model's tokenizer and facts, without its weights: for views that only read
    tokens (the chat's Explain panels, the tokenization page), so that showing an old reply
    never unloads the model another visitor is chatting with."""
    folder = hub.cached_snapshot(source)
    if folder is None:
        raise ModelNotHere(NOT_DOWNLOADED)
    with TRANSFORMERS_IMPORT:  # from_pretrained imports the model type's own modules
        from transformers import AutoConfig, AutoTokenizer

        config = AutoConfig.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    return LoadedModel(
        tokenizer=tokenizer,
        name=source,
        source=f"hub cache {folder} (tokenizer only)",
        public_source=f"Hugging Face hub ({source})",
        context_length=int(getattr(config, "max_position_embeddings", 2048)),
        n_params=hub.folder_parameters(folder),
        load_seconds=0.0,
        config=config,
        eos_ids=frozenset(),
    )


def switch_to(source: str | None) -> LoadedModel:
    """Make `source` (a downloaded hub id; None: the default) this session's chat model, for
    the next reply. Raises ModelNotHere."""
    lm = _extra_here(source) if source else default_model(full=False)
    if source:
        st.session_state[CHOICE] = source
    else:
        st.session_state.pop(CHOICE, None)
    st.session_state.pop("chat.kv", None)  # the other model's keys and values are no use to this one
    return lm


def model_for(trace: Trace, full: bool = True, stop: bool = True) -> LoadedModel | None:
    """The model that wrote `trace` (found by trace.model_name), loaded if needed.

    The default model, or an extra model downloaded on this server that fits in memory (it
    may unload another extra). Otherwise says why in a sentence and stops the page (stop=False:
    returns None instead). full=False needs only the tokenizer: a downloaded model that is not
    loaded then gives its tokenizer alone, and nothing is unloaded.
    """
    default = default_model(full=False)
    name, reply = trace.model_name, _reply_name(trace)
    lm: LoadedModel | None = None
    if name == default.name:
        lm = default_model(full)
    elif not hub.is_repo_id(name):
        why = f"which this server does not have (it runs {default.name})"
    else:
        try:
            lm = _extra_here(name) if full or name in _RESIDENT else _tokenizer_only(name)
        except ModelNotHere as exc:
            why = f"which is not loaded on this server: {exc}"
    if lm is None:
        st.info(f"{reply} was written by {hub.display_name(name)}, {why}.", icon="ℹ️")
        if stop:
            st.stop()
        return None
    if full and lm is not default:
        with st.spinner("Loading the model's layers for the explanations…"):
            _wait_for_layers(lm)
    if name != st.session_state.get(CHOICE, default.name):
        st.caption(f"{reply} was written by {hub.display_name(name)}; this view uses that model.")
    return lm


def _reply_name(trace: Trace) -> str:
    """'Reply 2' (as the reply pickers name it), or 'This reply'."""
    for ref in replies():
        if ref.message.trace is trace or ref.message.trace.trace_id == trace.trace_id:
            return ref.label.split(":", 1)[0]
    return "This reply"


def embedder():
    with st.spinner("Loading the sentence-embedding model (first use only)…"):
        try:
            return _embedder()
        except ModelUnavailable as exc:
            st.error(str(exc))
            st.stop()


def messages() -> list[Message]:
    if MESSAGES not in st.session_state:
        st.session_state[MESSAGES] = []
    return st.session_state[MESSAGES]


def _chat_setting(key: str, default: object) -> object:
    """A chat sidebar value from any page: the widget's state, else the copy remember() kept."""
    return st.session_state.get(key, st.session_state.get(KEPT + key, default))


def system_prompt() -> str:
    return str(_chat_setting(SYSTEM_PROMPT, DEFAULT_SYSTEM_PROMPT))


def settings() -> SamplingSettings:
    """The chat's sampling settings as the sidebar holds them, from any page."""
    values = {name: _chat_setting(f"chat.{name}", CHAT_WIDGETS[f"chat.{name}"]) for name in _SAMPLING}
    return SamplingSettings(**values).validated()


_SAMPLING = ("temperature", "top_k", "top_p", "max_new_tokens", "seed", "repetition_penalty")


def saved_settings() -> dict:
    """What a stored conversation keeps of the chat's settings (the system prompt is its first message)."""
    return {**settings().to_dict(), "context_budget": context_budget()}


def apply_settings(saved: dict, system: str) -> None:
    """Put a stored conversation's settings into the chat's widgets (before they are drawn)."""
    known = SamplingSettings.from_dict(saved).to_dict()
    values = {f"chat.{name}": known[name] for name in _SAMPLING}
    values[BUDGET] = int(saved.get("context_budget", DEFAULT_CONTEXT_BUDGET))
    values[SYSTEM_PROMPT] = system
    for key, value in values.items():
        st.session_state[key] = value
        st.session_state[KEPT + key] = value


def context_budget() -> int:
    return int(_chat_setting(BUDGET, DEFAULT_CONTEXT_BUDGET))


@dataclass
class ReplyRef:
    """An assistant reply somewhere in the conversation (main line or an alternative)."""

    message: Message
    position: int  # index of the main-line message it belongs to
    label: str


def replies() -> list[ReplyRef]:
    """Every assistant reply that has a trace, alternatives included, in conversation order."""
    refs: list[ReplyRef] = []
    for pos, m in enumerate(messages()):
        if m.role != "assistant":
            continue
        number = reply_number(messages(), pos)
        for k, take in enumerate([m, *m.alternatives]):
            if take.trace is None:
                continue
            tag = "" if k == 0 else f" (alternative {k})"
            preview = take.content.strip().replace("\n", " ")
            preview = preview[:50] + ("…" if len(preview) > 50 else "")
            refs.append(ReplyRef(take, pos, f"Reply {number}{tag}: {preview or '(empty)'}"))
    return refs


def reply_picker(key: str) -> ReplyRef | None:
    """A selectbox over every reply. ?reply=<trace_id> (a link) wins once; else the last one explained."""
    from pages import links  # a sibling module of pages; only the reply picker needs it

    refs = replies()
    if not refs:
        st.info("There is no reply to explain yet. Chat on the **Chat** page first, then come back.")
        st.page_link("pages/chat.py", label="Go to the chat", icon="💬")
        return None
    # Options are trace ids, not list positions: a branch adds a reply in the middle of the list,
    # and a position kept from before would then point at another reply than the one shown.
    by_id = {r.message.trace.trace_id: r for r in refs}
    linked = links.url_value("reply", key, valid=by_id.__contains__)
    if not linked and st.session_state.get(key) not in by_id:
        wanted = st.session_state.get(SELECTED)
        st.session_state[key] = wanted if wanted in by_id else refs[-1].message.trace.trace_id
    choice = st.selectbox("Reply to explain", list(by_id), format_func=lambda t: by_id[t].label, key=key)
    ref = by_id[choice]
    st.session_state[SELECTED] = ref.message.trace.trace_id
    links.set_url(reply=choice)  # the address bar names the reply shown
    return ref


def model_badge(lm: LoadedModel) -> None:
    """Sidebar: which model, how big, where from, and that it runs here on the CPU."""
    shared = public_limits()
    st.sidebar.caption(
        f"**{lm.name}** · {lm.n_params / 1e6:.0f}M parameters · runs locally on the CPU  \n"
        f"Source: {lm.public_source}"
        + (
            f"  \nShared app: each visitor may have the model write {shared.tokens_per_minute:,} tokens "
            f"and read {shared.prompt_tokens_per_minute:,} prompt tokens a minute."
            if shared.public
            else ""
        )
    )
    st.sidebar.caption(status_words(scheduler_for(lm).status()), help=BATCH_HELP)


BATCH_HELP = (
    "Every session's replies are written by one loop that batches them: one pass over the "
    "model's weights makes the next token of every reply being written, which on a CPU costs "
    "little more than one reply alone. Each reply keeps its own settings and seed, and gets "
    "the tokens it would get alone."
)


# -- a public deployment: per-session limits (core/limits.py) -------------------------------------
@st.cache_resource(show_spinner=False)
def _meters() -> tuple[RateLimiter, Activity]:
    return RateLimiter(), Activity()


def public_limits() -> Limits:
    return limits_from(config)


def _session() -> str:
    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else "bare"


def admit_reply(prompt_tokens: int, max_new_tokens: int) -> str | None:
    """None when this session may have a reply written now; else why not, and how long to wait."""
    shared = public_limits()
    if not shared.public:
        return None
    meter, _ = _meters()
    who = _session()
    wait = meter.wait_for(who, "read", prompt_tokens, shared.prompt_tokens_per_minute)
    if wait > 0:
        return wait_message("read", shared.prompt_tokens_per_minute, wait)
    wait = meter.wait_for(who, "written", max_new_tokens, shared.tokens_per_minute)
    if wait > 0:
        return wait_message("write", shared.tokens_per_minute, wait)
    return None


def charge_reply(prompt_tokens: int, written: int) -> None:
    if public_limits().public:
        meter, _ = _meters()
        meter.charge(_session(), "read", prompt_tokens)
        meter.charge(_session(), "written", written)


@contextmanager
def one_at_a_time(kind: str, busy: str) -> Iterator[bool]:
    """On a public deployment, at most one `kind` ("generation", "pass") per session at a time:
    yields False (after showing `busy`) when one is already running."""
    if not public_limits().public:
        yield True
        return
    _, running = _meters()
    who = _session()
    if not running.begin(who, kind):
        st.warning(busy, icon="⏳")
        yield False
        return
    try:
        yield True
    finally:
        running.end(who, kind)


@contextmanager
def model_pass(label: str, by_layer: bool = True) -> Iterator[Callable[[float, str], None]]:
    """A progress bar ("layer 12 of 30, tokens 1–512 of 7,551") over a pass of the model, and
    on a public deployment one such pass per session at a time.

    The pass hands the model to a waiting chat between two layers (core/fairlock.py). And it
    stops at the next update when the visitor moves on: the bar's update is a Streamlit call,
    where Streamlit stops a run that was asked to rerun or stop, the model lock released.
    by_layer False: the bar moves only when the caller reports through the function yielded,
    report(share done, words), e.g. integrated gradients' "8 of 34 points".
    """
    bar = st.progress(0.0, text=f"{label} starting…")

    def report(done: float, words: str) -> None:
        bar.progress(min(max(done, 0.0), 1.0), text=f"{label} {words}")

    try:
        with (
            one_at_a_time(
                "pass", "An explanation is already being computed for this tab; it shows here when done."
            ) as free,
            reporting(report) if by_layer else nullcontext(),
        ):
            if not free:
                st.stop()
            yield report
    finally:
        bar.empty()


def step_picker(trace: Trace, key: str, tokenizer: Any) -> int:
    """Which step of the reply: ?step=<n> (0-based) when a link brings one, else the reader's choice.

    key: the page's own session-state key, shared by every reply (a reply switch keeps the step,
    within the new reply's length)."""
    from pages import links  # a sibling module of pages

    n = len(trace.steps)
    links.url_value("step", key, int, range(n).__contains__)
    st.session_state[key] = min(max(int(st.session_state.get(key, 0)), 0), n - 1)
    if n > 1:
        st.select_slider(
            f"Step: which of the reply's {n} tokens to follow",
            options=list(range(n)),
            format_func=lambda i: f"{i + 1}: {readable(tokenizer, trace.steps[i].token_id)}",
            key=key,
        )
    step = int(st.session_state[key])
    links.set_url(step=step)
    return step


def explained_reply(key: str, no_steps: str) -> tuple[Trace, LoadedModel]:
    """The reply an explanation page explains (reply_picker) and the model that wrote it (the
    chat may use another one now). Stops the page when there is none, or when it has no
    recorded steps (`no_steps` says so)."""
    ref = reply_picker(key)
    if ref is None:
        st.stop()
    trace = ref.message.trace
    lm = model_for(trace)
    if not trace.steps or not trace.steps[0].top_ids:
        st.info(no_steps)
        st.stop()
    return trace, lm
