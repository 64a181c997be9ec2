"""The logit lens: its last layer is the model's real next-token distribution."""

from __future__ import annotations

import time

import pytest
import torch

from core.explain.lens import first_layer_with_answer, lens_probs, lens_table


def test_last_layer_equals_real_next_token_distribution(lm, greedy_trace):
    step = 3
    probs = lens_probs(lm, greedy_trace, step)  # (layers+1, vocab)
    assert probs.shape == (lm.n_layers + 1, lm.vocab_size)
    ids = torch.tensor([greedy_trace.prompt_ids + greedy_trace.output_ids[:step]])
    with lm.lock, torch.inference_mode():
        real = torch.softmax(lm.model(input_ids=ids).logits[0, -1].float(), dim=-1)
    torch.testing.assert_close(probs[-1], real, atol=1e-5, rtol=1e-4)
    # and it agrees with what the decode loop recorded at that step
    recorded = greedy_trace.steps[step]
    assert int(probs[-1].argmax()) == recorded.token_id
    lens_top = probs[-1][torch.tensor(recorded.top_ids[:10])]
    torch.testing.assert_close(lens_top, torch.tensor(recorded.top_probs[:10]), atol=2e-4, rtol=1e-3)


def test_table_shape_and_answer_forms_late(lm, greedy_trace):
    table = lens_table(lm, greedy_trace, 2, k=5)
    assert len(table) == (lm.n_layers + 1) * 5
    last = table[(table.layer == lm.n_layers) & (table["rank"] == 1)].iloc[0]
    assert last.token_id == greedy_trace.steps[2].token_id and last.is_chosen
    layer = first_layer_with_answer(table)
    assert layer is not None and 0 < layer <= lm.n_layers
    # rows within a layer are sorted by probability
    for _, g in table.groupby("layer"):
        assert list(g["prob"]) == sorted(g["prob"], reverse=True)


def test_step_out_of_range_is_refused(lm, greedy_trace):
    with pytest.raises(IndexError):
        lens_probs(lm, greedy_trace, len(greedy_trace.steps))


def test_lens_is_fast_enough_for_a_long_context(lm, greedy_trace):
    start = time.perf_counter()
    lens_table(lm, greedy_trace, len(greedy_trace.steps) - 1)
    assert time.perf_counter() - start < 10
