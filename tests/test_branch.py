"""Branch here: a new alternative reply from step k; the original is never changed."""

from __future__ import annotations

import copy

import pytest

from core.branch import BranchError, branch, divergence
from core.conversation import Message


def test_branch_continues_with_the_chosen_candidate(lm, greedy_trace):
    original = Message("assistant", greedy_trace.text, trace=copy.deepcopy(greedy_trace))
    before = original.trace.to_json()
    k = 2
    candidate = next(t for t in original.trace.steps[k].top_ids if t != original.trace.steps[k].token_id)
    new = branch(lm, original, k, candidate)
    assert original.alternatives == [new]
    assert original.trace.to_json() == before and original.content == greedy_trace.text
    t = new.trace
    assert t.branch_of == original.trace.trace_id and t.branch_step == k
    assert t.trace_id != original.trace.trace_id
    assert t.output_ids[:k] == original.trace.output_ids[:k] and t.output_ids[k] == candidate
    assert divergence(original.trace, t) == k
    assert t.prompt_ids == original.trace.prompt_ids and t.settings == original.trace.settings
    assert new.content == t.text and t.finish_reason in ("eos", "length")
    # the forced steps still record the model's real distribution
    assert t.steps[0].top_ids == original.trace.steps[0].top_ids
    assert t.steps[k].rank > 1


def test_branch_of_an_alternative_goes_to_its_home(lm, greedy_trace):
    home = Message("assistant", greedy_trace.text, trace=copy.deepcopy(greedy_trace))
    first = branch(lm, home, 1, greedy_trace.steps[1].top_ids[1])
    second = branch(lm, first, 3, first.trace.steps[3].top_ids[1], home=home)
    assert home.alternatives == [first, second] and first.alternatives == []
    assert second.trace.branch_of == first.trace.trace_id


@pytest.mark.parametrize("step", [-1, 10_000])
def test_bad_step_is_refused(lm, greedy_trace, step):
    with pytest.raises(BranchError):
        branch(lm, Message("assistant", "", trace=greedy_trace), step, 5)


def test_same_token_is_refused(lm, greedy_trace):
    msg = Message("assistant", "", trace=greedy_trace)
    with pytest.raises(BranchError, match="already chose"):
        branch(lm, msg, 0, greedy_trace.steps[0].token_id)
    assert msg.alternatives == []
