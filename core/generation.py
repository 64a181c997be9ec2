"""The decode loop: one token at a time, streamed, with a record of every step.

We run our own loop rather than ``model.generate`` so that each step's distribution can be
recorded as it is produced (and streamed to the page) at no extra forward passes. The
sampling itself is transformers' logits processors (core.sampling), so it matches ``generate``.

For Llama-family models the forward pass is core.kvcache's lean one (fused weights in GEMM
layout, a preallocated KV cache, one thread for single-token steps); it gives the same greedy
tokens as ``model.generate`` at about 1.5-2x the speed, and with a SessionKV a follow-up turn
reads only its new tokens. Other models use their own forward with a DynamicCache.

Every reply is written by the model's one decode loop, core.scheduler, which batches the
replies of all sessions writing at the same moment; stream() hands a reply to it and reads
the tokens back.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator

import torch

from core.kvcache import LeanModel, SessionKV, lean_model, supports
from core.models import LoadedModel
from core.runner import GenericKV
from core.scheduler import RUNNING, Chunk, Reply, scheduler_for, waiting_words
from core.settings import SamplingSettings
from core.trace import Trace

__all__ = ["RUNNING", "Chunk", "generate", "new_trace", "prefill", "stream", "warm_up"]

_BUILD_LOCK = threading.Lock()
WAIT_NOTICE_S = 0.3  # a reply with no first token after this long tells its reader why
THREADS_THREAD = "glassbox-threads"  # measures the decode thread count at load (measure_decode_threads)


def new_trace(lm: LoadedModel, prompt_ids: list[int], spans: list, settings: SamplingSettings) -> Trace:
    return Trace(prompt_ids=list(prompt_ids), spans=list(spans), settings=settings, model_name=lm.name)


def stream(
    lm: LoadedModel,
    trace: Trace,
    stop: threading.Event | None = None,
    capture: bool = True,
    forced: list[int] | None = None,
    on_wait: Callable[[str], None] | None = None,
    kv: SessionKV | None = None,
    use_lean: bool = True,
) -> Iterator[Chunk]:
    """Generate a reply for trace.prompt_ids with trace.settings, appending to trace.steps.

    Yields one Chunk per token. The reply is written by the model's shared decode loop
    (core.scheduler), in a batch with every other reply being written at the same moment;
    the tokens are those the reply would get alone. The trace is updated in place as the
    loop goes; when the reader stops early (stop set, or the generator closed: the user
    pressed Stop or left), the reply leaves the batch at the next step and the trace keeps
    exactly the steps that were yielded (finish_reason "stopped").
    forced: token ids to emit for the first steps instead of sampling (a "branch": their
    steps still record the model's real distribution).
    on_wait(words): called when the first token is slow to come, with why (the place in line).
    kv: the session's KV cache, reused across turns (None: a fresh cache for this reply).
    use_lean: False runs the model's own forward even where the lean path covers it (tests
    and benchmarks compare the two; the lean path is a speed-up, not another model).
    """
    settings = trace.settings.validated()
    need = len(trace.prompt_ids) + settings.max_new_tokens
    if kv is None or need > kv.max_tokens:
        kv = SessionKV(max_tokens=max(need, 1))
    reply = Reply(
        trace=trace,
        kv=kv,
        lean=_lean(lm) if use_lean else None,
        threads=decode_threads(lm),
        capture=capture,
        forced=list(forced or []),
        stop=stop,
        settings=settings,
        start_steps=len(trace.steps),
    )
    scheduler = scheduler_for(lm)
    scheduler.submit(reply)
    yielded = reply.start_steps
    told = ""
    finished = False
    try:
        while True:
            try:
                item = reply.out.get(timeout=0.05)
            except queue.Empty:
                if stop is not None and stop.is_set():
                    break
                slow = time.perf_counter() - reply.submitted > WAIT_NOTICE_S
                if on_wait is not None and slow and reply.first_token_at is None:
                    words = waiting_words(scheduler.status(), scheduler.place(reply))
                    if words != told:
                        on_wait(words)
                        told = words
                continue
            if item is None:
                finished = True
                break
            if isinstance(item, BaseException):
                raise item
            if stop is not None and stop.is_set():
                break
            if not item.tail:
                yielded += 1  # before the yield: a close() arrives at the yield
            yield item
    finally:
        if not finished:
            scheduler.leave(reply)
            del trace.steps[yielded:]  # the reply is what its reader saw
            trace.finish_reason = "stopped"


def generate(lm: LoadedModel, trace: Trace, stop: threading.Event | None = None, **kwargs) -> Trace:
    """Run stream() to the end and return the filled trace."""
    for _ in stream(lm, trace, stop=stop, **kwargs):
        pass
    return trace


def prefill(lm: LoadedModel, kv: SessionKV, ids: list[int], stop: threading.Event | None = None) -> int:
    """Read ids into the session's KV cache ahead of the next reply; returns the tokens read.

    A conversation restored from the store (a reload, a restart) has an empty cache, so its
    next reply would read the whole history first. Reading it once here, as soon as the
    conversation is opened, gives that reply the time to first token of a warm session.
    Does nothing when the model stays busy until `stop` is set.
    """
    if len(ids) < 2 or len(ids) > kv.max_tokens or kv.busy:
        return 0
    while not lm.lock.acquire(timeout=0.1):
        if stop is not None and stop.is_set():
            return 0
    try:
        if kv.busy:  # a reply of this session got the model first and is writing into it
            return 0
        lean = _lean(lm)
        with torch.inference_mode():
            if lean is not None:
                reused = kv.prepare(lean, ids, len(ids))
                kv.forward(lean, ids[reused:])
            else:
                reused = kv.generic.prepare(lm.model, ids)
                kv.generic.forward(lm.model, ids[reused:])
        return len(ids) - reused
    finally:
        lm.lock.release()


def warm_up(lm: LoadedModel) -> bool:
    """Build the lean forward's weights now (about 0.5 s, 0.5 GB for SmolLM2-135M).

    Call it right after loading the model (with the fast start it is built already and this
    returns at once). Returns False for models the lean path does not cover. Then measures
    the decode thread count on this machine, in the background (see decode_threads).
    """
    with _BUILD_LOCK:
        if lm.lean is None:
            lm.lean = lean_model(lm.model)
        ready = lm.lean is not None
    if lm.decode_threads is None:
        threading.Thread(target=measure_decode_threads, args=(lm,), name=THREADS_THREAD, daemon=True).start()
    return ready


def decode_threads(lm: LoadedModel) -> int:
    """Threads for single-token steps: measured on this machine (measure_decode_threads), else all.

    subtle: a decode step is matrix-vector products bound by memory bandwidth, and whether a
    second OpenMP thread helps depends on the CPU: 1 thread was best on an AMD EPYC, 2 threads
    were 1.45x faster on an Intel Xeon. So it is measured where the app runs, never assumed.
    """
    return lm.decode_threads or torch.get_num_threads()


def measure_decode_threads(lm: LoadedModel, steps: int = 12, rounds: int = 3) -> int:
    """Time decode steps with 1, 2, ... threads (up to torch's count) and keep the fastest.

    Runs once per loaded model (about a second), holding the model lock between rounds only,
    so a reply that starts meanwhile waits for at most one round. Rounds alternate the
    candidates and each keeps its best round, so a burst of load elsewhere does not decide.
    """
    most = torch.get_num_threads()
    candidates = list(range(1, most + 1)) if most <= 4 else [1, 2, most // 2, most]
    if len(candidates) == 1:
        lm.decode_threads = 1
        return 1
    best = dict.fromkeys(candidates, float("inf"))
    prompt = list(range(100, 164))  # the speed of a step hardly depends on which tokens it reads
    for _ in range(rounds):
        for n in candidates:
            with lm.lock, torch.inference_mode():
                saved = torch.get_num_threads()
                try:
                    best[n] = min(best[n], _time_steps(lm, prompt, steps, n))
                finally:
                    torch.set_num_threads(saved)
    lm.decode_threads = min(best, key=best.get)
    lm.decode_timings = {n: round(t * 1000, 2) for n, t in best.items()}  # ms per step, for the about page
    return lm.decode_threads


def _time_steps(lm: LoadedModel, prompt: list[int], steps: int, threads: int) -> float:
    """Seconds per decode step with this many threads (the path replies take)."""
    kv = SessionKV(max_tokens=len(prompt) + steps + 1)
    lean = lm.lean
    if lean is not None:
        kv.prepare(lean, prompt, len(prompt) + steps + 1)
        kv.forward(lean, prompt)
        step = _lean_step(lean, kv)
    else:
        _, step = _generic_prefill(lm.model, kv.generic, prompt)
    torch.set_num_threads(threads)
    step(prompt[-1])  # the first step after a thread change pays for waking the threads
    start = time.perf_counter()
    for i in range(steps):
        step(prompt[i])
    return (time.perf_counter() - start) / steps


def _lean(lm: LoadedModel) -> LeanModel | None:
    """The lean model if it is built; otherwise start building it in the background.

    The first reply is never held up by the build: until it is ready, the model's own
    forward is used (same greedy tokens, slower).
    """
    if lm.lean is not None or not supports(lm.model):
        return lm.lean
    if _BUILD_LOCK.acquire(blocking=False):
        _BUILD_LOCK.release()
        threading.Thread(target=warm_up, args=(lm,), name="glassbox-lean-build", daemon=True).start()
    return None


def _lean_step(lean: LeanModel, kv: SessionKV) -> Callable[[int], torch.Tensor]:
    def step(token_id: int) -> torch.Tensor:
        return kv.forward(lean, [token_id])  # (vocab,)

    return step


def _generic_prefill(
    model, kv: GenericKV, prompt_ids: list[int]
) -> tuple[torch.Tensor, Callable[[int], torch.Tensor]]:
    """The model's own forward over the session's DynamicCache (core.runner.GenericKV): any model.

    A follow-up turn reads only its new tokens, as on the lean path.
    """
    reused = kv.prepare(model, prompt_ids)
    logits = kv.forward(model, prompt_ids[reused:])

    def step(token_id: int) -> torch.Tensor:
        return kv.forward(model, [token_id])  # (vocab,)

    return logits, step
