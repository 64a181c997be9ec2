"""The plain-language summary names the real hardest step."""

from __future__ import annotations

import copy

from core.explain.summary import hardest_step, percent, summarize
from core.settings import SamplingSettings
from core.tokens import readable
from tests.conftest import make_trace


def test_summary_names_the_hardest_step(lm, greedy_trace):
    text = summarize(lm.tokenizer, greedy_trace)
    steps = greedy_trace.steps
    i = min(range(len(steps)), key=lambda k: steps[k].prob)  # independent of hardest_step
    assert hardest_step(greedy_trace) == i
    step = steps[i]
    runner_up = next(t for t in step.top_ids if t != step.token_id)
    sure = sum(s.prob > 0.9 for s in steps)
    assert f"over 90% sure of {sure} of {len(steps)} tokens" in text
    assert f"(step {i + 1})" in text
    assert f"picked '{readable(lm.tokenizer, step.token_id)}' ({percent(step.prob)})" in text
    assert f"over '{readable(lm.tokenizer, runner_up)}'" in text


def test_summary_follows_a_changed_trace(lm, greedy_trace):
    """Make a different step the least sure one: the summary must move with it."""
    trace = copy.deepcopy(greedy_trace)
    target = len(trace.steps) - 2
    trace.steps[target].prob = 0.01
    assert f"(step {target + 1})" in summarize(lm.tokenizer, trace)


def test_summary_explains_a_sampled_low_rank_pick(lm, two_turn):
    settings = SamplingSettings(temperature=1.5, top_k=0, top_p=1.0, max_new_tokens=40, seed=7)
    trace = make_trace(lm, two_turn, settings)
    i = hardest_step(trace)
    text = summarize(lm.tokenizer, trace)
    if trace.steps[i].rank > 1:
        assert f"choice number {trace.steps[i].rank}: the sampler's temperature (1.5)" in text
    else:
        assert "choice number" not in text


def test_empty_reply(lm, greedy_trace):
    trace = copy.deepcopy(greedy_trace)
    trace.steps = []
    assert "nothing" in summarize(lm.tokenizer, trace)


def test_percent_never_reads_zero():
    assert (percent(0.38), percent(0.004), percent(0.00001)) == ("38%", "0.4%", "<0.1%")
