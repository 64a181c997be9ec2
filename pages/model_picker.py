"""The sidebar's model picker, drawn by the chat page: the default model first, a short list of
small chat models from the Hugging Face hub (with the memory each needs), or any hub id.

Picking a hub model downloads it in a background thread (a progress bar with MB done, total
and speed, and a Cancel button), then loads it, and the chat's next reply comes from it.
Each visitor picks for their own session (common.CHOICE). Models that cannot be picked now
(no network, not enough memory) are left out of the list, and a caption under it says why.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st

from core import hub
from core.redact import scrub
from pages import common

SELECT = "model.select"  # the selectbox: DEFAULT, a known hub id, or ANY
CUSTOM = "model.custom"  # the "any hub id" text input
TARGET = "model.any_target"  # the hub id confirmed under "any hub id"
JOB = "model.job"  # this session's download (running, or just ended)
NOTE = "model.note"  # (kind, text) to show once, after the rerun that follows a download
REVERT = "model.revert"  # put the selectbox back on the model in use (before it is drawn)
DEFAULT, ANY = "default", "any"

log = logging.getLogger(__name__)


@dataclass
class Download:
    """One download, run in a background thread; the page reads its fields."""

    repo_id: str
    cancel: threading.Event = field(default_factory=threading.Event)
    progress: hub.DownloadProgress | None = None
    folder: Path | None = None
    error: str | None = None
    cancelled: bool = False
    thread: threading.Thread | None = None

    def start(self, max_gb: float) -> Download:
        self.thread = threading.Thread(
            target=self._run, args=(max_gb,), name=f"glassbox-picker-{self.repo_id}", daemon=True
        )
        self.thread.start()
        return self

    def _run(self, max_gb: float) -> None:
        try:
            self.folder = hub.download(self.repo_id, self._seen, self.cancel, max_gb=max_gb)
        except hub.DownloadCancelled:
            self.cancelled = True
        except hub.HubError as exc:
            self.error = scrub(str(exc))
        except Exception as exc:  # noqa: BLE001 - shown to the visitor as a sentence, logged in full
            log.warning("download of %s failed", self.repo_id, exc_info=True)
            self.error = f"The download of {hub.display_name(self.repo_id)} failed: {scrub(str(exc))}"

    def _seen(self, progress: hub.DownloadProgress) -> None:
        self.progress = progress

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


def _option(repo_id: str | None) -> str:
    """The selectbox option that stands for a model (None: the default)."""
    if repo_id is None:
        return DEFAULT
    return repo_id if hub.known(repo_id) in hub.KNOWN_MODELS else ANY


def _choices(online: bool, budget: float, keep: set[str]) -> tuple[dict[str, str], list[str]]:
    """({option: label} of what can be picked now, [why each other model cannot]).

    keep: options listed whatever the network or memory (the model in use, a download under way).
    """
    default = common.default_model(full=False)
    where = "bundled, works offline" if "bundled" in default.public_source else "this server's default"
    labels = {DEFAULT: f"{default.name} · {where} (default)"}
    offline, too_big = [], []
    for m in hub.KNOWN_MODELS:
        downloaded = hub.cached_snapshot(m.repo_id) is not None
        if m.repo_id not in keep and not (online or downloaded):
            offline.append(m.name)
        elif m.repo_id not in keep and m.ram_gb > budget:
            too_big.append(f"{m.name} (needs {m.ram_gb:.1f} GB)")
        else:
            labels[m.repo_id] = f"{m.name} · needs {m.ram_gb:.1f} GB" + (
                " · downloaded" if downloaded else ""
            )
    if online or ANY in keep:
        labels[ANY] = "Any hub id…"
    notes = []
    if not online:
        notes.append(f"{hub.HUB_UNREACHABLE} Until it answers: {', '.join(offline) or 'nothing else'}.")
    if too_big:
        notes.append(f"Too big for the memory free here ({budget:.1f} GB): {', '.join(too_big)}.")
    return labels, notes


def show() -> None:
    """The picker, at the top of the chat page's sidebar."""
    current = st.session_state.get(common.CHOICE)
    job: Download | None = st.session_state.get(JOB)
    online = hub.reachable()
    budget = common.extra_budget_gb()
    keep = {_option(current), *([_option(job.repo_id)] if job else [])}
    labels, notes = _choices(online, budget, keep)
    if st.session_state.pop(REVERT, False):
        st.session_state[SELECT] = _option(current)
        st.session_state.pop(TARGET, None)
    # Streamlit drops a widget's state on a page that does not draw it: come back to what is
    # in use, or to the download still under way
    if st.session_state.get(SELECT) not in labels:
        st.session_state[SELECT] = _option(job.repo_id if job else current)
    sb = st.sidebar
    picked = sb.selectbox(
        "Model",
        list(labels),
        format_func=labels.__getitem__,
        key=SELECT,
        disabled=len(labels) == 1 and job is None,
        help="The chat's next reply comes from the model picked here (for you only). Downloads are "
        "kept in the Hugging Face cache; besides the default, one model at a time is loaded.",
    )
    for note in notes:
        sb.caption(note)
    shown = st.session_state.pop(NOTE, None)
    if shown:
        getattr(sb, shown[0])(shown[1])

    if picked != ANY:
        st.session_state.pop(TARGET, None)  # picking "any hub id" again asks for an id again
    if picked == DEFAULT:
        target: str | None = None
    elif picked == ANY:
        target = _any_hub_id(current)
        if target is None:  # waiting for an id: the chat keeps its model
            _drop(job)
            return
    else:
        target = picked
    if target == common.default_model(full=False).name:  # the default's own hub id (Community Cloud)
        target = None
    if job is not None and job.repo_id != target:
        _drop(job)
        job = None
    if target == current:
        return
    if target is None:
        common.switch_to(None)
        st.session_state[NOTE] = ("success", f"Back to {labels[DEFAULT].split(' · ')[0]} for the next reply.")
        st.rerun()
    if job is None:
        job = st.session_state[JOB] = Download(target).start(max_gb=budget)
    if job.running:
        with sb:
            _progress()
    else:
        _finish(job)


def _any_hub_id(current: str | None) -> str | None:
    """The "any hub id" input: the id confirmed with the button (None while there is none)."""
    if CUSTOM not in st.session_state:
        st.session_state[CUSTOM] = st.session_state.get(TARGET) or (
            current if _option(current) == ANY else ""
        )
    sb = st.sidebar
    text = sb.text_input("Hub id", key=CUSTOM, placeholder="owner/name, e.g. Qwen/Qwen3-0.6B", max_chars=120)
    if sb.button("Download and use", key="model.use_id"):
        try:
            st.session_state[TARGET] = hub.check_repo_id(text)
        except hub.HubError as exc:
            sb.error(scrub(str(exc)))
            st.session_state.pop(TARGET, None)
    return st.session_state.get(TARGET)


def _drop(job: Download | None) -> None:
    """Cancel a download nobody wants any more."""
    if job is not None:
        job.cancel.set()
        st.session_state.pop(JOB, None)


@st.fragment(run_every=0.5)
def _progress() -> None:
    """The download's progress bar and Cancel button, redrawn twice a second."""
    job: Download | None = st.session_state.get(JOB)
    if job is None:
        return
    if not job.running:
        st.rerun()  # the whole page: the model is loaded (or the failure said) by show()
    name, p = hub.display_name(job.repo_id), job.progress
    if p is None or not p.total:
        st.progress(0.0, text=f"Asking the hub for {name}…")
    else:
        digits = 1 if p.total < 100e6 else 0
        st.progress(
            p.fraction,
            text=f"Downloading {name}: {p.done / 1e6:,.{digits}f} of {p.total / 1e6:,.{digits}f} MB "
            f"· {p.bytes_per_s / 1e6:,.1f} MB/s",
        )
    if st.button("Cancel", key="model.cancel", icon="✖"):
        job.cancel.set()
        if job.thread is not None:
            job.thread.join(timeout=2)
        st.rerun()


def _finish(job: Download) -> None:
    """The download has ended: load the model and make it this session's, or say what went wrong."""
    st.session_state.pop(JOB, None)
    name = hub.display_name(job.repo_id)
    current = st.session_state.get(common.CHOICE)
    before = hub.display_name(current) if current else common.default_model(full=False).name
    if job.folder is not None:
        try:
            with st.sidebar.status(f"Loading {name}…") as box:
                common.switch_to(job.repo_id)
                box.update(label=f"{name} is loaded", state="complete")
        except common.ModelNotHere as exc:
            st.session_state[NOTE] = ("error", f"{name} cannot be used: {scrub(str(exc))}.")
            st.session_state[REVERT] = True
        else:
            st.session_state[NOTE] = ("success", f"{name} is loaded: the next reply comes from it.")
    elif job.cancelled:
        st.session_state[NOTE] = ("info", f"Download cancelled. The chat still uses {before}.")
        st.session_state[REVERT] = True
    else:
        st.session_state[NOTE] = ("error", job.error or f"The download of {name} failed.")
        st.session_state[REVERT] = True
    st.rerun()
