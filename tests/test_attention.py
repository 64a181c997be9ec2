"""Attention weights from the real model: valid distributions, causal, and the weights actually used."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.explain import attention as att

LAYER = 7


@pytest.fixture(scope="module")
def overview(lm, greedy_trace) -> att.AttentionOverview:
    att.clear_caches()
    return att.overview(lm, greedy_trace, keep_layer=LAYER)


@pytest.fixture(scope="module")
def weights(lm, greedy_trace, overview) -> np.ndarray:
    return att.layer_weights(lm, greedy_trace, LAYER)  # (H, T, T), kept by the overview pass


def test_every_row_sums_to_one_and_nothing_looks_ahead(lm, greedy_trace, weights):
    T = len(greedy_trace.full_ids)
    assert weights.shape == (lm.n_heads, T, T)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
    assert np.all(weights >= 0)
    assert np.triu(weights, k=1).max() == 0.0  # causal mask: exactly zero above the diagonal
    first = att.compute_layer(lm, greedy_trace, 0)
    np.testing.assert_allclose(first.sum(-1), 1.0, atol=1e-5)
    assert np.triu(first, k=1).max() == 0.0
    assert np.all(first[:, 0, 0] == 1.0)  # the first token can only look at itself


def test_captured_weights_times_values_reproduce_the_real_attention_output(lm, greedy_trace, weights):
    """Run the model as it generates (sdpa) and hook one attention block: its values and output.

    weights @ V, then the output projection, must give the block's real output: the weights
    shown are the weights the model used.
    """
    block = att.attention_modules(lm.model)[LAYER]
    seen: dict[str, torch.Tensor] = {}
    handles = [
        block.v_proj.register_forward_hook(lambda m, a, out: seen.__setitem__("v", out[0])),
        block.register_forward_hook(lambda m, a, out: seen.__setitem__("out", out[0][0])),
    ]
    try:
        with lm.lock, torch.inference_mode():
            assert lm.model.config._attn_implementation == "sdpa"
            lm.model(input_ids=torch.tensor([greedy_trace.full_ids]), use_cache=False, logits_to_keep=1)
    finally:
        for h in handles:
            h.remove()
    T, H, d = weights.shape[1], lm.n_heads, block.head_dim
    values = seen["v"].view(T, -1, d).transpose(0, 1)  # (kv_heads, T, d)
    values = values.repeat_interleave(H // values.shape[0], dim=0)  # (H, T, d)
    mixed = torch.from_numpy(weights) @ values  # (H, T, d)
    with torch.inference_mode():
        rebuilt = block.o_proj(mixed.transpose(0, 1).reshape(T, H * d))  # (T, d_model)
    np.testing.assert_allclose(rebuilt.numpy(), seen["out"].numpy(), atol=2e-4, rtol=1e-4)
    # And a wrong head order would not pass: the check can fail.
    shuffled = torch.from_numpy(weights[::-1].copy()) @ values
    with torch.inference_mode():
        wrong = block.o_proj(shuffled.transpose(0, 1).reshape(T, H * d))
    assert not np.allclose(wrong.numpy(), seen["out"].numpy(), atol=2e-4)


def test_recomputed_rows_equal_the_eager_weights(lm, greedy_trace, overview, weights):
    """The fast path (sdpa + recomputing hooks) against the library's own eager attention."""
    assert overview.method == "hooks"
    eager = att.compute_layer(lm, greedy_trace, LAYER, method="eager")
    np.testing.assert_allclose(weights, eager, atol=2e-5)
    reference = att.compute_overview(lm, greedy_trace, method="eager")
    np.testing.assert_allclose(overview.grouped, reference.grouped, atol=2e-5)
    np.testing.assert_allclose(overview.thumbs, reference.thumbs, atol=2e-5)
    cols = ["entropy_bits", "first_token", "previous_token", "current_question"]
    np.testing.assert_allclose(overview.stats[cols], reference.stats[cols], atol=1e-4)


def test_the_model_is_back_on_sdpa_unhooked_and_unlocked_even_after_a_failure(lm, greedy_trace):
    def boom(*args):
        raise KeyError("stop")

    everything = torch.arange(len(greedy_trace.full_ids))
    with pytest.raises(KeyError):
        att.eager_pass(lm, greedy_trace.full_ids, boom)
    with pytest.raises(KeyError):
        att.hooks_pass(lm, greedy_trace.full_ids, lambda i: everything, boom)
    assert lm.model.config._attn_implementation == "sdpa"
    assert not lm.lock.locked()
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in att.attention_modules(lm.model))


def test_thumbnail_rows_sample_each_block_evenly():
    rows, blocks = att.thumbnail_rows(50, 6)  # short: every row
    assert rows.tolist() == list(range(50))
    rows, blocks = att.thumbnail_rows(2000, 6)
    assert len(rows) == 6 * att.THUMB_ROWS
    assert rows.tolist() == sorted(set(rows.tolist()))
    assert rows[0] == 0 and rows[-1] == 1999
    assert blocks.bincount().tolist() == [att.THUMB_ROWS] * 6


def test_a_layer_pass_stops_after_its_layer(lm, greedy_trace):
    calls: list[int] = []
    later = att.attention_modules(lm.model)[3]
    handle = later.register_forward_hook(lambda *a: calls.append(3))
    try:
        att.compute_layer(lm, greedy_trace, 2)
    finally:
        handle.remove()
    assert calls == []
    with pytest.raises(ValueError):
        att.compute_layer(lm, greedy_trace, lm.n_layers)


def test_turn_groups_match_the_spans(lm, greedy_trace, overview):
    groups, group_of = overview.groups, overview.group_of
    P = len(greedy_trace.prompt_ids)
    for span in greedy_trace.spans:
        assigned = {groups[g].name for g in group_of[span.start : span.end]}
        if span.kind != "content":
            assert assigned <= {"Template tokens"}
        elif span.role == "system":
            assert assigned == {"System prompt"}
        else:
            (name,) = assigned
            assert name.startswith(f"{span.role.capitalize()} (msg {span.message_index})")
    assert {groups[g].name for g in group_of[P:]} == {"This reply"}
    categories = {g.name: g.category for g in groups}
    assert categories["User (msg 3): And of Italy?"] == "Current question"
    assert categories["User (msg 1): What is the capital of F…"] == "Earlier turns"


def test_turn_grouping_sums_to_one_per_row(lm, greedy_trace, overview, weights):
    R = len(greedy_trace.steps)
    assert overview.grouped.shape == (lm.n_layers, lm.n_heads, R, len(overview.groups))
    np.testing.assert_allclose(overview.grouped.sum(-1), 1.0, atol=1e-5)
    P = overview.n_prompt
    # The grouped sums are the layer's own weights summed over each group's columns.
    direct = np.stack(
        [weights[:, P:, overview.group_of == g].sum(-1) for g in range(len(overview.groups))], -1
    )
    np.testing.assert_allclose(overview.grouped[LAYER], direct, atol=1e-5)
    turns = att.turn_frame(overview)
    np.testing.assert_allclose(turns.groupby("step")["share"].sum(), 1.0, atol=1e-5)
    assert set(turns["category"]) == set(att.CATEGORIES)
    by_group = att.head_frame_by_group(weights[2], overview, range(overview.n_tokens))
    np.testing.assert_allclose(by_group.groupby("query")["weight"].sum(), 1.0, atol=1e-5)


def test_head_statistics_match_the_layer_weights(overview, weights):
    P = overview.n_prompt
    R = overview.n_reply
    stats = overview.stats.set_index(["layer", "head"])
    for h in range(weights.shape[0]):
        reply = weights[h, P:]  # (R, T)
        row = stats.loc[(LAYER, h)]
        assert row["first_token"] == pytest.approx(reply[:, 0].mean(), abs=1e-5)
        assert row["previous_token"] == pytest.approx(
            reply[np.arange(R), P - 1 + np.arange(R)].mean(), abs=1e-5
        )
        ent = -(reply * np.log2(np.clip(reply, 1e-30, None))).sum(-1).mean()
        assert row["entropy_bits"] == pytest.approx(ent, abs=1e-3)
    assert len(overview.stats) == 30 * 9
    assert (overview.stats["looks_like"] == "sink head").sum() > 0  # SmolLM2 has many sink heads


def test_summaries_are_valid_and_bounded(overview):
    np.testing.assert_allclose(overview.thumbs.sum(-1), 1.0, atol=1e-5)  # block rows share 1
    np.testing.assert_allclose(overview.reply_mean.sum(-1), 1.0, atol=1e-5)
    P = overview.n_prompt
    for s in range(overview.n_reply):
        assert overview.reply_mean[s, P + s + 1 :].max(initial=0.0) == 0.0
    frame = att.model_view_frame(overview)
    assert len(frame) <= 10_000  # the cells sent to the browser for the model view
    assert frame["relative"].max() == pytest.approx(1.0)


def test_token_row_and_top_attended(overview, weights):
    row = att.token_row(overview, 1, weights, head=4)
    np.testing.assert_array_equal(row, weights[4, overview.n_prompt + 1])
    mean = att.token_row(overview, 1, weights)
    np.testing.assert_allclose(mean, weights[:, overview.n_prompt + 1].mean(0))
    top = att.top_attended(overview, row, n=5)
    assert list(top["weight"]) == sorted(top["weight"], reverse=True)
    assert top["weight"].iloc[0] == pytest.approx(row.max())


def test_results_are_cached_per_reply(lm, greedy_trace, overview):
    assert att.overview(lm, greedy_trace) is overview
    assert att.is_cached(greedy_trace, LAYER)
    assert not att.is_cached(greedy_trace, LAYER + 1)
