"""Trace invariants on real replies, and the JSON round trip."""

from __future__ import annotations

import json

import pytest

from core.settings import SamplingSettings
from core.trace import Trace, TraceFormatError
from tests.conftest import make_trace


@pytest.fixture(scope="module")
def sampled_trace(lm, two_turn) -> Trace:
    return make_trace(
        lm, two_turn, SamplingSettings(temperature=1.0, top_k=40, top_p=0.9, max_new_tokens=24, seed=7)
    )


@pytest.fixture(params=["greedy", "sampled"])
def trace(request, greedy_trace, sampled_trace) -> Trace:
    return greedy_trace if request.param == "greedy" else sampled_trace


def test_probabilities_lie_in_unit_interval(trace):
    assert trace.steps
    for step in trace.steps:
        assert 0.0 <= step.prob <= 1.0 and 0.0 <= step.sample_prob <= 1.0
        assert all(0.0 <= p <= 1.0 for p in step.top_probs + step.top_sample_probs)
        assert sum(step.top_probs) <= 1.0 + 1e-4


def test_candidates_are_sorted_and_at_least_ten(trace):
    for step in trace.steps:
        assert len(step.top_ids) >= 10
        assert step.top_probs == sorted(step.top_probs, reverse=True)
        assert step.top_logits == sorted(step.top_logits, reverse=True)


def test_recorded_rank_matches_position_among_candidates(trace):
    for step in trace.steps:
        if step.token_id in step.top_ids:
            assert step.rank == step.top_ids.index(step.token_id) + 1
            assert step.prob == pytest.approx(step.top_probs[step.rank - 1])
        else:
            assert step.rank > len(step.top_ids)


def test_greedy_choices_all_have_rank_one(greedy_trace):
    assert all(step.rank == 1 and step.sample_prob == 1.0 for step in greedy_trace.steps)


def test_sampled_distribution_respects_top_k_and_top_p(sampled_trace):
    for step in sampled_trace.steps:
        kept = [p for p in step.top_sample_probs if p > 0]
        assert len(kept) <= 40
        assert step.sample_prob > 0


def test_entropy_is_plausible(trace):
    for step in trace.steps:
        assert 0.0 <= step.entropy <= 15.6  # log2(49152) = 15.58 bits


def test_spans_cover_the_prompt_exactly(trace):
    pos = 0
    for span in trace.spans:
        assert span.start == pos and span.end > span.start
        pos = span.end
    assert pos == len(trace.prompt_ids)
    assert [s.role for s in trace.spans if s.kind == "content"] == ["system", "user", "assistant", "user"]
    assert trace.spans[-1].role == "assistant" and trace.spans[-1].kind == "header"


def test_settings_seed_and_timings_are_recorded(sampled_trace):
    assert sampled_trace.settings.seed == 7 and sampled_trace.settings.temperature == 1.0
    assert sampled_trace.ttft_s is not None and sampled_trace.ttft_s > 0
    assert sampled_trace.decode_tokens_per_s is not None and sampled_trace.decode_tokens_per_s > 0


def test_json_round_trip_is_lossless(trace, lm):
    again = Trace.from_json(trace.to_json(), vocab_size=lm.vocab_size)
    assert again == trace
    assert json.loads(again.to_json()) == json.loads(trace.to_json())


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["steps"][0].update(prob=1.7), "probability"),
        (lambda d: d["steps"][0].update(top_ids=[10**7] * len(d["steps"][0]["top_ids"])), "vocabulary"),
        (lambda d: d["spans"].pop(), "cover"),
        (lambda d: d.pop("prompt_ids"), "missing"),
        (lambda d: d.update(format="something-else"), "Not a Glassbox trace"),
        (lambda d: d["steps"][0].update(top_probs=list(reversed(d["steps"][0]["top_probs"]))), "sorted"),
    ],
)
def test_malformed_traces_are_rejected_with_a_reason(greedy_trace, lm, mutate, message):
    data = json.loads(greedy_trace.to_json())
    mutate(data)
    with pytest.raises(TraceFormatError, match=message):
        Trace.from_dict(data, vocab_size=lm.vocab_size)


def test_invalid_json_is_rejected():
    with pytest.raises(TraceFormatError, match="not valid JSON"):
        Trace.from_json("{nope")
