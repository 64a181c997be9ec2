"""The shared decode loop (core/scheduler.py): replies written in one batch are the replies
written alone; they join and leave at step boundaries; the batch is bounded and the line told."""

from __future__ import annotations

import threading
import time

from core.conversation import Message, build_prompt
from core.generation import generate, new_trace, stream
from core.kvcache import SessionKV
from core.scheduler import Scheduler, Status, scheduler_for, waiting_words
from core.settings import SamplingSettings
from core.trace import Trace

QUESTIONS = [
    "What is the capital of France?",
    "Name a primary colour.",
    "Write one sentence about the sea.",
    "What is 2 + 2?",
    "Give me a word that rhymes with cat.",
    "Who wrote Hamlet?",
]
SETTINGS = [  # each reply keeps its own settings and seed inside the batch
    SamplingSettings(temperature=0, max_new_tokens=24),
    SamplingSettings(temperature=0.8, top_k=40, top_p=0.95, max_new_tokens=24, seed=7),
    SamplingSettings(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=24, seed=1234),
    SamplingSettings(temperature=0, repetition_penalty=1.3, max_new_tokens=24),
    SamplingSettings(temperature=0.7, top_k=0, top_p=0.9, max_new_tokens=24, seed=99),
    SamplingSettings(temperature=0, max_new_tokens=24),
]


def _trace(lm, question: str, settings: SamplingSettings, history: list[Message] | None = None) -> Trace:
    messages = [Message("system", "Be brief."), *(history or []), Message("user", question)]
    prompt = build_prompt(lm.tokenizer, messages, budget=2048, reserve=0)
    return new_trace(lm, prompt.ids, prompt.spans, settings)


def _all_at_once(lm, traces: list[Trace], kvs: list[SessionKV] | None = None) -> None:
    """Start every reply while the test holds the model, so they all join one batch."""
    threads = [
        threading.Thread(target=generate, args=(lm, t), kwargs={"kv": kvs[i] if kvs else None})
        for i, t in enumerate(traces)
    ]
    with lm.lock:
        for t in threads:
            t.start()
        _until(lambda: all(t.finish_reason == "running" for t in traces))
    for t in threads:
        t.join(120)


def _until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.01)


def _same_reply(batched: Trace, alone: Trace) -> None:
    assert batched.output_ids == alone.output_ids
    assert batched.finish_reason == alone.finish_reason
    for b, a in zip(batched.steps, alone.steps, strict=True):
        assert b.top_ids[:5] == a.top_ids[:5]
        assert abs(b.prob - a.prob) < 1e-4 and abs(b.sample_prob - a.sample_prob) < 1e-4
        assert max(abs(x - y) for x, y in zip(b.top_probs, a.top_probs, strict=True)) < 1e-4
        assert abs(b.entropy - a.entropy) < 1e-3


def test_replies_made_in_one_batch_equal_the_same_replies_made_alone(lm):
    alone = [generate(lm, _trace(lm, q, s)) for q, s in zip(QUESTIONS, SETTINGS, strict=True)]
    batched = [_trace(lm, q, s) for q, s in zip(QUESTIONS, SETTINGS, strict=True)]
    scheduler = scheduler_for(lm)
    scheduler.largest_batch = 0
    _all_at_once(lm, batched)
    assert scheduler.largest_batch == len(QUESTIONS)  # one pass of the weights served all six
    for b, a in zip(batched, alone, strict=True):
        _same_reply(b, a)
    assert len({t.text for t in batched}) == len(batched)  # no reply got another's tokens
    # the loop lets go of the model once the batch is empty (a reader may return just before)
    _until(lambda: not lm.lock.locked(), 10)


def test_a_reply_stopped_in_the_batch_leaves_it_and_the_others_go_on(lm):
    alone = generate(lm, _trace(lm, QUESTIONS[2], SETTINGS[0]))
    stopped = _trace(lm, QUESTIONS[1], SamplingSettings(temperature=0, max_new_tokens=24))
    going = _trace(lm, QUESTIONS[2], SETTINGS[0])
    stop = threading.Event()
    seen: list[int] = []

    def reader() -> None:
        for chunk in stream(lm, stopped, stop=stop):
            seen.append(chunk.token_id)
            if len(seen) == 3:
                stop.set()

    threads = [threading.Thread(target=reader), threading.Thread(target=generate, args=(lm, going))]
    with lm.lock:
        for t in threads:
            t.start()
        _until(lambda: stopped.finish_reason == "running" and going.finish_reason == "running")
    for t in threads:
        t.join(120)
    assert stopped.finish_reason == "stopped" and stopped.output_ids == seen  # what the reader saw
    _same_reply(going, alone)


def test_an_abandoned_reader_leaves_the_batch_at_the_next_step(lm):
    long = _trace(lm, QUESTIONS[2], SamplingSettings(temperature=0, max_new_tokens=200))
    chunks = stream(lm, long)
    next(chunks)
    chunks.close()  # the page's run was stopped: a closed tab, a click elsewhere
    assert long.finish_reason == "stopped" and len(long.steps) == 1
    assert scheduler_for(lm).status().active == 0 and not lm.lock.locked()


def test_the_batch_is_bounded_and_the_line_is_told_its_place(lm, monkeypatch):
    small = Scheduler(lm, max_batch=2)
    monkeypatch.setattr(lm, "scheduler", small)
    traces = [_trace(lm, q, SamplingSettings(temperature=0, max_new_tokens=8)) for q in QUESTIONS[:4]]
    alone = [
        generate(lm, _trace(lm, q, SamplingSettings(temperature=0, max_new_tokens=8))) for q in QUESTIONS[:4]
    ]
    told: list[list[str]] = [[] for _ in traces]
    threads = [
        threading.Thread(target=lambda i=i: generate(lm, traces[i], on_wait=told[i].append))
        for i in range(len(traces))
    ]
    with lm.lock:  # nothing runs yet: two join the batch at the first step, two wait in line
        for t in threads:
            t.start()
        _until(lambda: small.status().queued == 4)
        _until(lambda: all(told))  # every reader was told why it waits
    for t in threads:
        t.join(120)
    assert small.largest_batch == 2
    assert [t.output_ids for t in traces] == [a.output_ids for a in alone]
    assert [words[0] for words in told] == [  # the test held the model, as a long pass would
        "Waiting for the model: it is busy…",
        "Waiting for the model: it is busy… 1 reply is ahead of yours.",
        "Waiting for the model: it is busy… 2 replies are ahead of yours.",
        "Waiting for the model: it is busy… 3 replies are ahead of yours.",
    ]
    status = small.status()
    assert (status.active, status.queued) == (0, 0) and status.tokens_per_s > 0


def test_the_line_is_told_why_it_waits_and_how_many_replies_are_ahead():
    full = Status(active=16, queued=3, tokens_per_s=120.0, max_batch=16)
    assert waiting_words(full, 3) == (
        "Waiting for the model: it is writing 16 replies at once, the most it takes. "
        "2 replies are ahead of yours."
    )
    assert waiting_words(full, 2).endswith(" 1 reply is ahead of yours.")
    assert waiting_words(full, 1).endswith("the most it takes. Yours is next.")
    busy = Status(active=0, queued=2, tokens_per_s=0.0, max_batch=16)  # a pass holds the model
    assert waiting_words(busy, 2) == "Waiting for the model: it is busy… 1 reply is ahead of yours."
    assert waiting_words(full, 0) == "Waiting for the model: it is busy…"


def test_a_long_prompt_is_read_in_chunks_while_the_batch_goes_on_writing(lm):
    writing = _trace(lm, QUESTIONS[2], SamplingSettings(temperature=0, max_new_tokens=400))
    story = " ".join(f"Sentence {i} of the story tells of a fox and a dog." for i in range(150))
    long = _trace(lm, "Summarise: " + story, SamplingSettings(temperature=0, max_new_tokens=4))
    assert len(long.prompt_ids) > 1500
    alone = generate(lm, _trace(lm, "Summarise: " + story, SamplingSettings(temperature=0, max_new_tokens=4)))
    written_at_first_token: list[int] = []
    enough = threading.Event()  # the writing reply only has to outlast the long prompt's read
    first = threading.Thread(target=generate, args=(lm, writing), kwargs={"stop": enough})
    first.start()
    _until(lambda: len(writing.steps) >= 5)
    before = len(writing.steps)
    for _chunk in stream(lm, long):
        if not written_at_first_token:
            written_at_first_token.append(len(writing.steps))
    enough.set()
    first.join(120)
    # the other reply kept writing while the long prompt was read: the prompt took several chunks
    assert written_at_first_token[0] - before >= 3
    assert long.output_ids == alone.output_ids


def test_a_follow_up_turn_in_a_batch_reuses_its_sessions_kv_cache(lm):
    kvs = [SessionKV(), SessionKV()]
    greedy = SamplingSettings(temperature=0, max_new_tokens=12)
    first = [_trace(lm, q, greedy) for q in QUESTIONS[:2]]
    _all_at_once(lm, first, kvs)

    def follow_up(q: str, answer: Trace) -> Trace:
        return _trace(lm, "And why?", greedy, [Message("user", q), Message("assistant", answer.text)])

    follow = [follow_up(q, t) for q, t in zip(QUESTIONS[:2], first, strict=True)]
    _all_at_once(lm, follow, kvs)
    assert all(
        kv.reused > len(t.prompt_ids) for kv, t in zip(kvs, first, strict=True)
    )  # read only the new turn
    alone = [generate(lm, follow_up(q, t)) for q, t in zip(QUESTIONS[:2], first, strict=True)]
    for f, a in zip(follow, alone, strict=True):
        _same_reply(f, a)


def test_the_kv_memory_limit_keeps_replies_in_line(lm, monkeypatch):
    tight = Scheduler(lm, max_batch=16, max_kv_mb=1)  # 1 MB: one reply's cache at a time
    monkeypatch.setattr(lm, "scheduler", tight)
    traces = [_trace(lm, q, SamplingSettings(temperature=0, max_new_tokens=6)) for q in QUESTIONS[:3]]
    _all_at_once(lm, traces)
    assert tight.largest_batch == 1 and all(t.finish_reason in ("eos", "length") for t in traces)


def test_a_step_record_equals_the_distribution_written_out_in_full():
    """The captured step takes shortcuts (no one-hot is built for greedy; the argmax and the rank
    come from the top 50); the record must be what the whole distribution gives, bit for bit.
    Scores only: the model plays no part in this arithmetic."""
    import torch

    from core.sampling import sampling_probs
    from core.scheduler import LN2, _argmax, _record
    from core.trace import TOP_CANDIDATES

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5000, generator=gen) * 3
    # a tie at the top: argmax takes the first; topk puts 2 first here (its order among equals is free)
    logits[1, [1, 2]] = logits[1].max() + 1
    logits[2, :900] = float("-inf")  # masked scores
    logits[3, [11, 20]] = float("nan")  # argmax takes the first NaN as the highest; topk, here, the last
    top = torch.topk(logits, TOP_CANDIDATES, dim=-1)
    best = _argmax(logits, top)
    assert torch.equal(best, logits.argmax(-1)) and best[1] == 1 and best[3] == 11
    for r in range(len(logits)):  # alone, each row takes its own way (a tie sends the whole batch to argmax)
        one = logits[r : r + 1]
        assert torch.equal(_argmax(one, torch.topk(one, TOP_CANDIDATES, dim=-1)), one.argmax(-1)), r
    chosen = best.clone()
    chosen[4] = int(logits[4].argsort()[1000])  # a forced token far below the top 50
    chosen[5] = int(top.indices[5, 17])  # a forced token among them
    fine = torch.nan_to_num(logits[[0, 1, 2, 4, 5]], nan=0.0)  # NaN rows have no honest record
    rows = [0, 1, 2, 4, 5]
    top, chosen = torch.topk(fine, TOP_CANDIDATES, dim=-1), chosen[rows]
    best = _argmax(fine, top)
    for sample_probs in (None, sampling_probs(fine, SamplingSettings(temperature=0.7, top_k=40))):
        got = _record(fine, chosen, sample_probs, top, best)
        full = sampling_probs(fine, SamplingSettings(temperature=0)) if sample_probs is None else sample_probs
        logp = torch.log_softmax(fine, dim=-1)
        probs = logp.exp()
        at = chosen.reshape(-1, 1)
        want = torch.cat(
            [
                (fine > fine.gather(-1, at)).sum(-1, keepdim=True).float() + 1,
                -(probs * logp).nansum(-1, keepdim=True) / LN2,
                probs.gather(-1, at),
                full.gather(-1, at),
                top.indices.float(),
                top.values,
                probs.gather(-1, top.indices),
                full.gather(-1, top.indices),
            ],
            -1,
        )
        assert torch.equal(got, want)
        assert got[3, 0] > TOP_CANDIDATES and got[4, 0] == 18  # ranks of the two forced tokens
        assert sample_probs is not None or (got[3, 3] == 0 and got[0, 3] == 1)
