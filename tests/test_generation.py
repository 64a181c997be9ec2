"""The decode loop: determinism, seeds, stopping, and sessions that run at once."""

from __future__ import annotations

import threading

import torch

from core.conversation import Message
from core.generation import generate, new_trace, stream
from core.settings import SamplingSettings
from tests.conftest import make_trace

SAMPLED = SamplingSettings(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=20, seed=1234)


def test_greedy_is_deterministic(lm, two_turn):
    a = make_trace(lm, two_turn)
    b = make_trace(lm, two_turn)
    assert a.output_ids == b.output_ids and a.text == b.text and a.text.strip()


def test_greedy_matches_plain_model_generate(lm, greedy_trace):
    ids = torch.tensor([greedy_trace.prompt_ids])
    with torch.inference_mode():
        out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=32)
    assert out[0, ids.shape[1] :].tolist() == greedy_trace.output_ids


def test_sampling_with_a_seed_is_reproducible(lm, two_turn):
    a = make_trace(lm, two_turn, SAMPLED)
    b = make_trace(lm, two_turn, SAMPLED)
    c = make_trace(lm, two_turn, SamplingSettings(**{**SAMPLED.to_dict(), "seed": 99}))
    assert a.output_ids == b.output_ids
    assert a.output_ids != c.output_ids  # at temperature 1 and no filters, another seed differs


def test_stop_flag_ends_generation_and_keeps_the_partial_reply(lm, two_turn):
    trace = make_trace(lm, two_turn[:2], SamplingSettings(temperature=0, max_new_tokens=1))  # warm
    stop = threading.Event()
    trace = new_trace(lm, trace.prompt_ids, trace.spans, SamplingSettings(temperature=0, max_new_tokens=200))
    seen = 0
    for _ in stream(lm, trace, stop=stop):
        seen += 1
        if seen == 3:
            stop.set()
    assert trace.finish_reason == "stopped"
    assert len(trace.steps) == 3 and trace.text
    assert not lm.lock.locked()


def test_abandoned_stream_releases_the_model(lm, greedy_trace):
    trace = new_trace(
        lm, greedy_trace.prompt_ids, greedy_trace.spans, SamplingSettings(temperature=0, max_new_tokens=50)
    )
    chunks = stream(lm, trace)
    next(chunks)
    assert lm.lock.locked()
    chunks.close()  # what the chat page does when the user stops or leaves
    assert not lm.lock.locked() and trace.finish_reason == "stopped" and len(trace.steps) == 1


def test_max_new_tokens_is_respected(lm, two_turn):
    trace = make_trace(lm, two_turn, SamplingSettings(temperature=0, max_new_tokens=3))
    assert len(trace.steps) == 3 and trace.finish_reason == "length"


def test_two_sessions_at_once_get_their_own_replies(lm):
    questions = ["What is the capital of France?", "Name a primary colour."]
    solo = [make_trace(lm, [Message("system", "Be brief."), Message("user", q)]) for q in questions]
    results = [None, None]

    def run(i):
        results[i] = make_trace(lm, [Message("system", "Be brief."), Message("user", questions[i])])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [r.output_ids for r in results] == [s.output_ids for s in solo]


def test_generate_returns_the_filled_trace(lm, greedy_trace):
    trace = generate(
        lm,
        new_trace(
            lm,
            greedy_trace.prompt_ids,
            greedy_trace.spans,
            SamplingSettings(temperature=0, max_new_tokens=32),
        ),
    )
    assert trace.output_ids == greedy_trace.output_ids and trace.finish_reason in {"eos", "length"}
