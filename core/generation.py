"""The decode loop: one token at a time, streamed, with a record of every step.

We run our own loop rather than ``model.generate`` so that each step's distribution can be
recorded as it is produced (and streamed to the page) at no extra forward passes. The
sampling itself is transformers' logits processors (core.sampling), so it matches ``generate``.

For Llama-family models the forward pass is core.kvcache's lean one (fused weights in GEMM
layout, a preallocated KV cache, one thread for single-token steps); it gives the same greedy
tokens as ``model.generate`` at about 1.5-2x the speed, and with a SessionKV a follow-up turn
reads only its new tokens. Other models use their own forward with a DynamicCache.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from core.fairlock import CHAT
from core.kvcache import LeanModel, SessionKV, lean_model, supports
from core.models import LoadedModel
from core.runner import GenericKV
from core.sampling import sampling_probs
from core.settings import SamplingSettings
from core.tokens import IncrementalDecoder
from core.trace import TOP_CANDIDATES, Step, Trace

LN2 = 0.6931471805599453
_BUILD_LOCK = threading.Lock()
# trace_ids of the replies this process is writing right now. A stored trace that says
# "running" but is not here was cut off (a restart, a closed tab): core.store readers mark it stopped.
RUNNING: set[str] = set()


@dataclass
class Chunk:
    """What the loop yields per token: the step record (None when capture is off) and the new text."""

    token_id: int
    text: str
    step: Step | None


def new_trace(lm: LoadedModel, prompt_ids: list[int], spans: list, settings: SamplingSettings) -> Trace:
    return Trace(prompt_ids=list(prompt_ids), spans=list(spans), settings=settings, model_name=lm.name)


def _record(logits: torch.Tensor, chosen: torch.Tensor, sample_probs: torch.Tensor) -> torch.Tensor:
    """Everything a Step needs, packed in one tensor so the host reads it once.

    logits: (vocab,) raw scores; chosen: () token id; sample_probs: (vocab,).
    Returns (4 + 4*K,): [rank, entropy_bits, prob, sample_prob, ids*K, logits*K, probs*K, sample_probs*K].
    """
    logp = torch.log_softmax(logits, dim=-1)  # (vocab,)
    probs = logp.exp()
    entropy = -(probs * logp).nansum() / LN2  # bits; nansum: exp(-inf) * -inf is nan, counts as 0
    top_logits, top_ids = torch.topk(logits, TOP_CANDIDATES)  # (K,), sorted high to low
    rank = (logits > logits[chosen]).sum() + 1
    head = torch.stack([rank.float(), entropy, probs[chosen], sample_probs[chosen]])
    return torch.cat([head, top_ids.float(), top_logits, probs[top_ids], sample_probs[top_ids]])


def _unpack(packed: list[float], token_id: int, text: str) -> Step:
    k = TOP_CANDIDATES
    ids = [int(v) for v in packed[4 : 4 + k]]
    return Step(
        token_id=token_id,
        text=text,
        rank=int(packed[0]),
        entropy=max(float(packed[1]), 0.0),
        prob=min(float(packed[2]), 1.0),
        sample_prob=min(float(packed[3]), 1.0),
        top_ids=ids,
        top_logits=packed[4 + k : 4 + 2 * k],
        top_probs=[min(p, 1.0) for p in packed[4 + 2 * k : 4 + 3 * k]],
        top_sample_probs=[min(p, 1.0) for p in packed[4 + 3 * k : 4 + 4 * k]],
    )


def stream(
    lm: LoadedModel,
    trace: Trace,
    stop: threading.Event | None = None,
    capture: bool = True,
    forced: list[int] | None = None,
    on_wait: Callable[[], None] | None = None,
    kv: SessionKV | None = None,
    use_lean: bool = True,
) -> Iterator[Chunk]:
    """Generate a reply for trace.prompt_ids with trace.settings, appending to trace.steps.

    Yields one Chunk per token. The trace is updated in place as the loop goes, so a reply
    that is stopped or abandoned keeps every step made so far (finish_reason "stopped").
    forced: token ids to emit for the first steps instead of sampling (a "branch": their
    steps still record the model's real distribution). The model's lock is held while the
    loop runs; close the generator (or exhaust it) to release it.
    kv: the session's KV cache, reused across turns (None: a fresh cache for this reply).
    use_lean: False runs the model's own forward even where the lean path covers it (tests
    and benchmarks compare the two; the lean path is a speed-up, not another model).
    """
    settings = trace.settings.validated()
    tokenizer = lm.tokenizer
    eos_ids = lm.eos_ids
    forced = list(forced or [])
    decoder = IncrementalDecoder(tokenizer)
    if not lm.lock.acquire(blocking=False, kind=CHAT):
        if on_wait:
            on_wait()
        # one place in line, kept until the model is free or the reply is stopped while it waits
        if not lm.lock.acquire(kind=CHAT, cancel=lambda: stop is not None and stop.is_set()):
            trace.finish_reason = "stopped"
            return
    RUNNING.add(trace.trace_id)
    try:
        threads = torch.get_num_threads()
        generator = torch.Generator().manual_seed(settings.seed)
        start = time.perf_counter()
        first_token_at = None
        trace.finish_reason = "running"
        lean = _lean(lm) if use_lean else None
        need = len(trace.prompt_ids) + settings.max_new_tokens
        if kv is None or need > kv.max_tokens:
            kv = SessionKV(max_tokens=max(need, 1))
        with torch.inference_mode():
            if lean is not None:
                reused = kv.prepare(lean, trace.prompt_ids, need)
                logits = kv.forward(lean, trace.prompt_ids[reused:])
                step_fn = _lean_step(lean, kv)
            else:
                logits, step_fn = _generic_prefill(lm.model, kv.generic, trace.prompt_ids)
            torch.set_num_threads(min(decode_threads(lm), threads))
            # the repetition penalty reads every id already in the text: prompt + reply so far
            penalised = settings.repetition_penalty != 1.0
            seen = torch.tensor(trace.prompt_ids + trace.output_ids, dtype=torch.long) if penalised else None
            for i in range(settings.max_new_tokens):
                if stop is not None and stop.is_set():
                    trace.finish_reason = "stopped"
                    break
                want_probs = capture or not settings.greedy or penalised
                probs = sampling_probs(logits, settings, seen) if want_probs else None
                if i < len(forced):
                    chosen = torch.tensor(forced[i])
                elif settings.greedy:  # the one-hot on the penalised argmax, when there is a penalty
                    chosen = probs.argmax() if penalised else logits.argmax()
                else:
                    chosen = torch.multinomial(probs, 1, generator=generator)[0]
                token_id = int(chosen)
                text = decoder.push(token_id)
                if capture:
                    step = _unpack(_record(logits, chosen, probs).tolist(), token_id, text)
                else:  # a bare record, so the reply's tokens and text are still known
                    step = _bare_step(token_id, text)
                trace.steps.append(step)
                if penalised:
                    seen = torch.cat([seen, chosen.reshape(1).long()])
                if first_token_at is None:
                    first_token_at = time.perf_counter()
                    trace.ttft_s = first_token_at - start
                yield Chunk(token_id, text, step if capture else None)
                if token_id in eos_ids:
                    trace.finish_reason = "eos"
                    break
                if i + 1 < settings.max_new_tokens:  # no forward pass for a token nobody reads
                    if lm.lock.yield_turn():  # another chat waited: it had one step, we go on
                        torch.set_num_threads(min(decode_threads(lm), threads))
                    logits = step_fn(token_id)
            else:
                trace.finish_reason = "length"
        tail = decoder.flush()
        if tail and trace.steps:
            trace.steps[-1].text += tail
            yield Chunk(trace.steps[-1].token_id, tail, None)
    finally:
        if trace.finish_reason == "running":
            trace.finish_reason = "stopped"
        end = time.perf_counter()
        trace.total_s = end - start
        if first_token_at is not None and len(trace.steps) > 1:
            trace.decode_tokens_per_s = (len(trace.steps) - 1) / max(end - first_token_at, 1e-9)
        torch.set_num_threads(threads)
        RUNNING.discard(trace.trace_id)
        lm.lock.release()


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
    if len(ids) < 2 or len(ids) > kv.max_tokens:
        return 0
    while not lm.lock.acquire(timeout=0.1):
        if stop is not None and stop.is_set():
            return 0
    try:
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
        threading.Thread(
            target=measure_decode_threads, args=(lm,), name="glassbox-threads", daemon=True
        ).start()
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


def _bare_step(token_id: int, text: str) -> Step:
    return Step(token_id, text, 0.0, 0.0, 1, 0.0, [], [], [], [])
