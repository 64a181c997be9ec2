"""The scheduler: the one place that decides who uses the model next, and the shared decode loop.

A class shares one deployed app. On a CPU a decode step costs about the time it takes to read
the weights once, so eight replies written in one pass of the weights cost little more than
one. Every reply therefore goes through one loop, in one background thread per model, which
runs continuous batching:

- at every step boundary, waiting replies join the batch and finished, stopped or abandoned
  ones leave it;
- one pass of the weights makes the next token of every reply in the batch
  (core.kvcache.forward_batch); each reply keeps its own KV cache, length, settings, seed,
  random generator and trace, so a reply made in a batch is the reply made alone (the same
  tokens; probabilities equal up to the summation order of the matrix products, ~1e-6);
- a new prompt is read (prefilled) in chunks sized at run time so that one chunk takes about
  PREFILL_S: a long prompt does not stall the replies already being written;
- the batch size and the KV memory of the batch are bounded (GLASSBOX_MAX_BATCH,
  GLASSBOX_MAX_KV_MB); beyond them replies wait in line and are told their place.

Why not transformers' own continuous batching (transformers.generation.continuous_batching):
see the README ("Batching"): it hands back tokens, not each step's whole distribution, which
every explanation page reads from the trace.

The loop holds the model's FairLock as a chat and hands it over between steps, so the
explanation passes share the machine with decoding exactly as before (core/fairlock.py).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from core.cores import torch_threads
from core.fairlock import CHAT
from core.kvcache import LeanModel, SessionKV, forward_batch
from core.sampling import import_for, sampling_probs
from core.settings import SamplingSettings
from core.tokens import IncrementalDecoder
from core.trace import TOP_CANDIDATES, Step, Trace

LN2 = 0.6931471805599453
MAX_BATCH = 16  # replies written at once (GLASSBOX_MAX_BATCH)
MAX_KV_MB = 1536  # KV memory the replies in the batch may need together (GLASSBOX_MAX_KV_MB)
PREFILL_S = 0.2  # a prefill chunk stalls the replies being written about this long (plus their step)
FIRST_CHUNK, MIN_CHUNK, MAX_CHUNK = 128, 16, 4096  # prefill chunk sizes (tokens)
# With nobody else writing, a chunk is at least this long: a prompt read in 64-token chunks took
# 1.76x as long as in 1,024-token ones (4,000 tokens: 18.5 s against 10.5 s), 256 took 1.05x.
# A newcomer then waits for one such chunk (about 0.6 s on a 2-core EPYC) before it joins.
ALONE_CHUNK = 256
TRIALS = 4  # batched steps timed per candidate thread count before the scheduler settles
RATE_WINDOW_S = 5.0  # the aggregate tokens per second is measured over this window
# trace_ids of the replies this process is writing right now. A stored trace that says
# "running" but is not here was cut off (a restart, a closed tab): core.store readers mark it stopped.
RUNNING: set[str] = set()
DECODE_THREAD = "glassbox-decode"  # the loop's thread; it never ends (tests/conftest.py waits for the others)


@dataclass
class Chunk:
    """What the loop yields per token: the step record (None when capture is off) and the new text."""

    token_id: int
    text: str
    step: Step | None
    tail: bool = False  # the last characters of the text, held back until the end: not a new step


@dataclass
class Reply:
    """One reply being written: what was asked, and where the loop stands with it."""

    trace: Trace
    kv: SessionKV
    lean: LeanModel | None  # None: the model's own forward (kv.generic)
    threads: int  # torch threads for this reply's single-token steps (measured per machine)
    capture: bool = True
    forced: list[int] = field(default_factory=list)
    stop: threading.Event | None = None
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)  # Chunk | None (end) | error
    done: threading.Event = field(default_factory=threading.Event)  # set once it left the loop
    cancelled: threading.Event = field(default_factory=threading.Event)  # the reader went away
    submitted: float = field(default_factory=time.perf_counter)
    start_steps: int = 0  # steps the trace held before this run (they count towards nothing)
    # the loop's state
    settings: SamplingSettings | None = None
    pending: list[int] = field(default_factory=list)  # prompt ids still to read
    logits: torch.Tensor | None = None  # (vocab,) scores for the next token, once read
    generator: torch.Generator | None = None
    seen: torch.Tensor | None = None  # ids the repetition penalty reads
    decoder: IncrementalDecoder | None = None
    first_token_at: float | None = None

    @property
    def need(self) -> int:
        """Positions of KV cache this reply may fill."""
        return len(self.trace.prompt_ids) + self.settings.max_new_tokens

    def gone(self) -> bool:
        return self.cancelled.is_set() or (self.stop is not None and self.stop.is_set())


@dataclass
class Status:
    """What the status line shows."""

    active: int  # replies in the batch
    queued: int  # replies waiting to join it
    tokens_per_s: float  # written by the whole batch, over the last RATE_WINDOW_S
    max_batch: int


def _limit(name: str, default: int) -> int:
    try:
        value = int(os.environ.get(name, default))
    except ValueError:
        return default
    return max(value, 1)


class Scheduler:
    """The decode loop of one loaded model (see the module docstring). Use scheduler_for(lm)."""

    def __init__(self, lm: Any, max_batch: int | None = None, max_kv_mb: int | None = None) -> None:
        self.lm = lm
        self.max_batch = max_batch or _limit("GLASSBOX_MAX_BATCH", MAX_BATCH)
        self.max_kv_bytes = (max_kv_mb or _limit("GLASSBOX_MAX_KV_MB", MAX_KV_MB)) * 2**20
        self._kv_per_position = _kv_bytes_per_position(lm.config)
        most = torch_threads()
        self._thread_candidates = list(range(1, most + 1)) if most <= 4 else [1, 2, most // 2, most]
        # threads for batched steps, per batch size class: tried on this machine (_threads_for_batch)
        self._thread_trials: dict[int, dict[int, list[float]]] = {}
        self.batch_threads: dict[int, int] = {}  # batch size class -> threads, once measured
        self.thread_timings: dict[int, dict[int, float]] = {}  # class -> threads -> ms per step
        self._cond = threading.Condition()
        self._queue: list[Reply] = []
        self._active: list[Reply] = []
        self._written: deque[tuple[float, int]] = deque()  # (time, tokens) per step, for the rate
        self._chunk = FIRST_CHUNK
        self.largest_batch = 0  # the most replies one pass of the weights has served (tests, benchmarks)
        self._thread: threading.Thread | None = None

    # -- for the readers -------------------------------------------------------------------
    def submit(self, reply: Reply) -> None:
        import_for(reply.settings)  # here, not in the loop, which holds the model (core.sampling)
        with self._cond:
            RUNNING.add(reply.trace.trace_id)
            reply.trace.finish_reason = "running"
            self._queue.append(reply)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=DECODE_THREAD, daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def leave(self, reply: Reply, timeout: float = 10.0) -> None:
        """The reader went away (a Stop, a closed tab): the reply leaves at the next step."""
        reply.cancelled.set()
        with self._cond:
            self._cond.notify_all()
        reply.done.wait(timeout)

    def place(self, reply: Reply) -> int:
        """0 when the reply is in the batch (or done); n when it is n-th in line."""
        with self._cond:
            return self._queue.index(reply) + 1 if reply in self._queue else 0

    def status(self) -> Status:
        with self._cond:
            now = time.perf_counter()
            while self._written and now - self._written[0][0] > RATE_WINDOW_S:
                self._written.popleft()
            span = now - self._written[0][0] if self._written else 0.0
            # under a second of history says little: no rate until then
            rate = sum(n for _, n in self._written) / span if span >= 1.0 else 0.0
            return Status(len(self._active), len(self._queue), rate, self.max_batch)

    # -- the loop ----------------------------------------------------------------------------
    def _run(self) -> None:
        lock = self.lm.lock
        while True:
            with self._cond:
                while not self._queue and not self._active:
                    self._cond.wait()
            self._drop_waiting_gone()
            if not lock.acquire(kind=CHAT, timeout=0.1):
                continue  # the model is busy (a pass): look again, so a stop while waiting is heard
            ended: list[Reply] = []
            try:
                with torch.inference_mode():
                    while True:
                        ended += self._step()
                        with self._cond:
                            if not self._active and not self._admissible():
                                break
                        lock.yield_turn()  # a waiting pass gets its chunk; threads are set again per step
            except Exception as exc:  # noqa: BLE001 - never let the loop die: fail the replies in it
                with self._cond:
                    failing, self._active = self._active, []
                for reply in failing:
                    reply.kv.busy = False
                    reply.out.put(exc)
                    ended.append(self._end(reply, "stopped"))
            finally:
                torch.set_num_threads(torch_threads())  # what threads started later begin with
                lock.release()
                for reply in ended:  # after the release: a reader that returns finds the model free
                    reply.done.set()

    def _drop_waiting_gone(self) -> None:
        with self._cond:
            gone = [r for r in self._queue if r.gone()]
            self._queue = [r for r in self._queue if not r.gone()]
        for reply in gone:
            self._end(reply, "stopped").done.set()

    def _admissible(self) -> bool:
        """True when a waiting reply could join now (called with _cond held)."""
        return any(self._fits(r) for r in self._queue) or any(r.gone() for r in self._queue)

    def _fits(self, reply: Reply) -> bool:
        if len(self._active) >= self.max_batch or reply.kv.busy:
            return False
        used = sum(r.need for r in self._active) * self._kv_per_position
        return not self._active or used + reply.need * self._kv_per_position <= self.max_kv_bytes

    def _admit(self) -> None:
        """Waiting replies join the batch, first come first served, while they fit."""
        with self._cond:
            joining = []
            for reply in list(self._queue):
                if reply.gone():
                    self._queue.remove(reply)
                    joining.append(reply)  # ends at once below, with nothing read
                elif self._fits(reply):
                    self._queue.remove(reply)
                    reply.kv.busy = True
                    self._active.append(reply)
                    joining.append(reply)
                else:
                    break  # first come, first served: nobody overtakes the head of the line
        for reply in joining:
            if reply.gone():
                with self._cond:
                    admitted = reply in self._active
                    if admitted:
                        self._active.remove(reply)
                if admitted:  # only its own admission made the cache busy: another reply may hold it
                    reply.kv.busy = False
                self._end(reply, "stopped").done.set()
            else:
                try:
                    self._start(reply)
                except Exception as exc:  # noqa: BLE001 - this reply fails, the others go on
                    reply.out.put(exc)
                    self._leave(reply, "stopped").done.set()

    def _start(self, reply: Reply) -> None:
        settings = reply.settings
        kv = reply.kv
        need = reply.need
        ids = reply.trace.prompt_ids
        if reply.lean is not None:
            reused = kv.prepare(reply.lean, ids, need)
        else:
            reused = kv.generic.prepare(self.lm.model, ids)
        reply.pending = list(ids[reused:])
        reply.generator = torch.Generator().manual_seed(settings.seed)
        if settings.repetition_penalty != 1.0:
            reply.seen = torch.tensor(ids + reply.trace.output_ids, dtype=torch.long)
        reply.decoder = IncrementalDecoder(self.lm.tokenizer)

    def _step(self) -> list[Reply]:
        """One round: admit, emit a token for every reply whose scores are ready, one pass of
        the weights for all of them, then read prompts for the rest of the time budget."""
        self._admit()
        ended: list[Reply] = []
        going: list[tuple[Reply, int]] = []
        ready = []
        for reply in list(self._active):
            if reply.gone():
                ended.append(self._leave(reply, "stopped"))
            elif reply.logits is not None:
                ready.append(reply)
        for reply, token_id, finish in self._choose_all(ready):
            if finish:
                ended.append(self._leave(reply, finish))
            else:
                going.append((reply, token_id))
        if going:
            self._forward(going)
        self._prefill()
        torch.set_num_threads(torch_threads())  # see core.cores.torch_threads: not 1 between steps
        return ended

    def _choose_all(self, ready: list[Reply]) -> list[tuple[Reply, int, str | None]]:
        """Sample (or force) the next token of every ready reply; record and emit each.

        The distributions are computed for all replies with the same settings at once (a
        (rows, vocab) call of the same logits processors), and the step records of each such
        group are packed in one tensor, read once: per reply, only the draw is done alone,
        with the reply's own random generator. A repetition penalty reads each reply's own
        text, so those replies are done one by one.
        """
        if not ready:
            return []
        groups: dict[tuple, list[Reply]] = {}
        for reply in ready:
            s = reply.settings
            key = (id(reply),) if s.repetition_penalty != 1.0 else (s.temperature, s.top_k, s.top_p)
            groups.setdefault(key, []).append(reply)
        rows: list[Reply] = []
        chosen_rows: list[torch.Tensor] = []
        packed: list[list[float]] = []
        for group in groups.values():
            settings = group[0].settings
            logits = torch.stack([r.logits for r in group])  # (rows, vocab)
            penalised = settings.repetition_penalty != 1.0
            captured = any(r.capture for r in group)
            top = torch.topk(logits, TOP_CANDIDATES, dim=-1) if captured else None
            # greedy without a penalty draws from a one-hot on the argmax: no distribution is built
            one_hot = settings.greedy and not penalised
            probs = None if one_hot else sampling_probs(logits, settings, group[0].seen)
            best = _argmax(logits, top) if one_hot else None
            chosen_group = []
            for k, reply in enumerate(group):
                i = len(reply.trace.steps) - reply.start_steps
                if i < len(reply.forced):
                    chosen = torch.tensor(reply.forced[i])
                elif one_hot:
                    chosen = best[k]
                elif settings.greedy:  # the one-hot on the penalised argmax
                    chosen = probs[k].argmax()
                else:
                    chosen = torch.multinomial(probs[k], 1, generator=reply.generator)[0]
                rows.append(reply)
                chosen_group.append(chosen)
            chosen = torch.stack(chosen_group)  # (rows,)
            chosen_rows.append(chosen)
            if captured:
                packed += _record(logits, chosen, probs, top, best).tolist()
            else:
                packed += [[]] * len(group)
        chosen = torch.cat(chosen_rows)
        now = time.perf_counter()
        out = []
        for k, (reply, token) in enumerate(zip(rows, chosen.tolist(), strict=True)):
            out.append((reply, token, self._emit(reply, token, packed[k] if reply.capture else None, now)))
        with self._cond:
            self._written.append((now, len(rows)))
        return out

    def _emit(self, reply: Reply, token_id: int, packed: list[float] | None, now: float) -> str | None:
        """Record the chosen token in the reply's trace and hand it to its reader; returns
        how the reply ends with it (None: it goes on)."""
        trace, settings = reply.trace, reply.settings
        text = reply.decoder.push(token_id)
        if packed is not None:
            step = _unpack(packed, token_id, text)
        else:  # a bare record, so the reply's tokens and text are still known
            step = Step(token_id, text, 0.0, 0.0, 1, 0.0, [], [], [], [])
        trace.steps.append(step)
        if settings.repetition_penalty != 1.0:
            reply.seen = torch.cat([reply.seen, torch.tensor([token_id], dtype=torch.long)])
        if reply.first_token_at is None:
            reply.first_token_at = now
            trace.ttft_s = now - reply.submitted
        reply.logits = None
        reply.out.put(Chunk(token_id, text, step if packed is not None else None))
        if token_id in self.lm.eos_ids:
            return "eos"
        if len(trace.steps) - reply.start_steps >= settings.max_new_tokens:
            return "length"
        return None

    def _forward(self, going: list[tuple[Reply, int]]) -> None:
        """One pass of the weights: the next scores of every reply that goes on."""
        lean = [(r, t) for r, t in going if r.lean is not None]
        self.largest_batch = max(self.largest_batch, len(going))
        if len(lean) == 1:
            reply, token = lean[0]
            torch.set_num_threads(reply.threads)
            reply.logits = reply.kv.forward(reply.lean, [token])
        elif lean:
            by_model: dict[int, list[tuple[Reply, int]]] = {}
            for reply, token in lean:  # one batch per lean build (a model reload makes another)
                by_model.setdefault(reply.lean.model_id, []).append((reply, token))
            for group in by_model.values():
                threads = self._threads_for_batch(len(group))
                torch.set_num_threads(threads)
                began = time.perf_counter()
                logits = forward_batch(group[0][0].lean, [r.kv for r, _ in group], [t for _, t in group])
                self._tried(len(group), threads, time.perf_counter() - began)
                for (reply, _), row in zip(group, logits, strict=True):
                    reply.logits = row
        for reply, token in going:  # the model's own forward, one reply at a time
            if reply.lean is None:
                torch.set_num_threads(reply.threads)
                reply.logits = reply.kv.generic.forward(self.lm.model, [token])

    def _threads_for_batch(self, rows: int) -> int:
        """The thread count for a batched step of this many rows: measured, per batch size class
        (2-3, 4-7, 8-15, 16+ rows), on the first TRIALS steps of each candidate count, in turn.

        subtle: whether a second thread helps depends on the CPU (see core.generation.
        decode_threads) and on the batch: a product of more rows is more arithmetic per weight
        read. On the EPYC here one thread was best for one row and two for eight.
        """
        size = _size_class(rows)
        if size in self.batch_threads:
            return self.batch_threads[size]
        trials = self._thread_trials.setdefault(size, {n: [] for n in self._thread_candidates})
        return min(trials, key=lambda n: len(trials[n]))

    def _tried(self, rows: int, threads: int, seconds: float) -> None:
        size = _size_class(rows)
        trials = self._thread_trials.get(size)
        if trials is None:
            return
        trials[threads].append(seconds)
        if all(len(t) >= TRIALS for t in trials.values()):
            median = {n: sorted(t)[len(t) // 2] for n, t in trials.items()}
            self.batch_threads[size] = min(median, key=median.get)
            self.thread_timings[size] = {n: round(m * 1000, 2) for n, m in median.items()}
            del self._thread_trials[size]

    def _prefill(self) -> None:
        """Read waiting prompts a chunk at a time. While other replies are being written, one
        chunk per step, sized so that it takes about PREFILL_S: that is how long they stall.
        With nobody else writing, chunks of at least ALONE_CHUNK tokens follow each other for up
        to PREFILL_S, then the loop comes round to admit newcomers."""
        writing = any(not r.pending for r in self._active)
        deadline = time.perf_counter() + PREFILL_S
        for reply in list(self._active):
            if not reply.pending or reply.gone():
                continue
            if time.perf_counter() >= deadline:
                break
            torch.set_num_threads(self._thread_candidates[-1])  # reading a prompt: all cores
            if reply.lean is None:  # the model's own forward reads the whole prompt at once
                reply.logits = reply.kv.generic.forward(self.lm.model, reply.pending)
                reply.pending = []
                continue
            while reply.pending:
                part = reply.pending[: self._chunk if writing else max(self._chunk, ALONE_CHUNK)]
                began = time.perf_counter()
                logits = reply.kv.forward(reply.lean, part)
                took = time.perf_counter() - began
                reply.pending = reply.pending[len(part) :]
                if len(part) == self._chunk:  # a full chunk: size the next one to PREFILL_S
                    # subtle: a chunk further into the prompt reads more keys and costs more, so
                    # the size follows the last chunk's time rather than a fixed tokens/s
                    scaled = self._chunk * PREFILL_S / max(took, 1e-6)
                    self._chunk = int(min(max(scaled, MIN_CHUNK), MAX_CHUNK))
                if not reply.pending:
                    reply.logits = logits
                if writing or time.perf_counter() >= deadline:
                    return  # one chunk per step while others write

    def _leave(self, reply: Reply, finish: str) -> Reply:
        with self._cond:
            self._active.remove(reply)
        reply.kv.busy = False
        return self._end(reply, finish)

    def _end(self, reply: Reply, finish: str) -> Reply:
        trace = reply.trace
        if reply.decoder is not None:
            tail = reply.decoder.flush()
            if tail and len(trace.steps) > reply.start_steps:
                trace.steps[-1].text += tail
                reply.out.put(Chunk(trace.steps[-1].token_id, tail, None, tail=True))
        end = time.perf_counter()
        trace.finish_reason = finish
        trace.total_s = end - reply.submitted
        made = len(trace.steps) - reply.start_steps
        if reply.first_token_at is not None and made > 1:
            trace.decode_tokens_per_s = (made - 1) / max(end - reply.first_token_at, 1e-9)
        RUNNING.discard(trace.trace_id)
        reply.out.put(None)
        return reply


def _size_class(rows: int) -> int:
    """2, 4, 8 or 16: the batch sizes whose thread counts are measured apart."""
    return 16 if rows >= 16 else 8 if rows >= 8 else 4 if rows >= 4 else 2


def _kv_bytes_per_position(config: Any) -> int:
    """fp32 keys and values of one position across all layers (46 KB for SmolLM2-135M)."""
    heads = int(getattr(config, "num_attention_heads", 1) or 1)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or int(getattr(config, "hidden_size", 64)) // heads)
    layers = int(getattr(config, "num_hidden_layers", 1) or 1)
    return 2 * 4 * layers * kv_heads * head_dim


_SCHEDULERS_LOCK = threading.Lock()


def scheduler_for(lm: Any) -> Scheduler:
    """The one scheduler of this loaded model (made on first use)."""
    with _SCHEDULERS_LOCK:
        found = getattr(lm, "scheduler", None)
        if found is None:
            found = Scheduler(lm)
            lm.scheduler = found
        return found


def _argmax(logits: torch.Tensor, top: Any | None) -> torch.Tensor:
    """The first index of the highest score of each row, as ``generate``'s greedy argmax picks it.

    With the top candidates at hand (topk, sorted) this is their first id, unless the highest
    score is tied or NaN, when topk's order among equals is not argmax's: then argmax itself
    (a whole pass over the vocabulary, 0.06 ms here, that the captured step saves otherwise).
    """
    if top is None:
        return logits.argmax(-1)
    values = top.values
    if values.shape[-1] > 1 and bool(((values[:, 0] == values[:, 1]) | values[:, 0].isnan()).any()):
        return logits.argmax(-1)
    return top.indices[:, 0]


def _record(
    logits: torch.Tensor,
    chosen: torch.Tensor,
    sample_probs: torch.Tensor | None,
    top: Any,
    best: torch.Tensor | None = None,
) -> torch.Tensor:
    """Everything the Steps need, packed in one tensor so the host reads it once.

    logits: (rows, vocab) raw scores; chosen: (rows,) token ids; top: torch.topk(logits, K);
    sample_probs: (rows, vocab), the distribution drawn from, or None for greedy without a
    penalty: a one-hot on `best`, the argmax (_argmax), which is then never built.
    Returns (rows, 4 + 4*K): [rank, entropy_bits, prob, sample_prob, ids*K, logits*K, probs*K, sample_probs*K].

    subtle: the step's capture cost is these passes over the vocabulary (49,152 scores for
    SmolLM2): the log-softmax, its exp and the entropy's product, plus topk. The rank reads
    the top K alone when the chosen score is above the K-th (nearly always): every higher
    score is then among them, so the count is the same as over the whole vocabulary.
    """
    logp = torch.log_softmax(logits, dim=-1)  # (rows, vocab)
    probs = logp.exp()
    entropy = -(probs * logp).nansum(-1) / LN2  # bits; nansum: exp(-inf) * -inf is nan, counts as 0
    top_logits, top_ids = top.values, top.indices  # (rows, K), sorted high to low
    at = chosen.reshape(-1, 1)
    chosen_logit = logits.gather(-1, at)  # (rows, 1)
    if bool((chosen_logit[:, 0] > top_logits[:, -1]).all()):
        rank = (top_logits > chosen_logit).sum(-1) + 1
    else:
        rank = (logits > chosen_logit).sum(-1) + 1
    if sample_probs is None:
        sample_at = (chosen == best).float()
        sample_top = (top_ids == best.reshape(-1, 1)).float()
    else:
        sample_at = sample_probs.gather(-1, at)[:, 0]
        sample_top = sample_probs.gather(-1, top_ids)
    head = torch.stack([rank.float(), entropy, probs.gather(-1, at)[:, 0], sample_at], -1)
    return torch.cat([head, top_ids.float(), top_logits, probs.gather(-1, top_ids), sample_top], -1)


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


def waiting_words(status: Status, place: int) -> str:
    """What a reader waiting for its first token is told; place as Scheduler.place gives it."""
    ahead = place - 1
    if ahead <= 0:
        line = ""
    else:
        line = " 1 reply is ahead of yours." if ahead == 1 else f" {ahead:,} replies are ahead of yours."
    if place > 0 and status.active >= status.max_batch:
        return f"Waiting for the model: it is writing {status.active} replies at once, the most it takes." + (
            line or " Yours is next."
        )
    return "Waiting for the model: it is busy…" + line


def status_words(status: Status) -> str:
    """The status line: what the shared decode loop is doing right now."""
    if not status.active and not status.queued:
        return "The model is free: no reply is being written."
    replies = "1 reply" if status.active == 1 else f"{status.active} replies"
    words = f"The model is writing {replies} at once (at most {status.max_batch})"
    if status.queued:
        words += f" · {status.queued} waiting"
    if status.tokens_per_s > 0:
        words += f" · {status.tokens_per_s:.0f} tokens/s in all"
    return words + "."
