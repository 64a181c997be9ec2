"""Attention weights from the real model: valid distributions, causal, and the weights actually used."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from core.conversation import Message, build_prompt
from core.explain import attention as att
from core.generation import generate, new_trace
from core.kvcache import SessionKV
from core.runner import attention_rows_each_layer, runner_for, session_prefix, session_rows
from core.settings import SamplingSettings
from core.trace import Trace

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
    block = lm.model.model.layers[LAYER].self_attn  # the test may look inside; the app never does
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
    """The runner's rows pass (sdpa + the model's eager function on the rows) against eager attention."""
    assert overview.method == "rows"
    eager = att.compute_layer(lm, greedy_trace, LAYER, method="eager")
    np.testing.assert_allclose(weights, eager, atol=1e-5)
    reference = att.compute_overview(lm, greedy_trace, method="eager")
    np.testing.assert_allclose(overview.grouped, reference.grouped, atol=1e-5)
    np.testing.assert_allclose(overview.thumbs, reference.thumbs, atol=1e-5)
    cols = ["entropy_bits", "first_token", "previous_token", "current_question"]
    np.testing.assert_allclose(overview.stats[cols], reference.stats[cols], atol=1e-4)


def test_the_model_is_back_on_sdpa_unhooked_and_unlocked_even_after_a_failure(lm, greedy_trace):
    def boom(*args):
        raise KeyError("stop")

    def hooks() -> list[tuple]:  # transformers keeps output-capturing hooks of its own; ours must not stay
        return [(tuple(m._forward_pre_hooks), tuple(m._forward_hooks)) for m in lm.model.modules()]

    everything = torch.arange(len(greedy_trace.full_ids))
    runner_for(lm).eager_attention(greedy_trace.full_ids[:4])  # installs transformers' own hooks, once
    runner_for(lm).hidden_states(greedy_trace.full_ids[:4])
    before = hooks()
    with pytest.raises(KeyError):
        att.eager_pass(lm, greedy_trace.full_ids, boom)
    with pytest.raises(KeyError):
        attention_rows_each_layer(runner_for(lm), greedy_trace.full_ids, everything, boom)
    assert lm.model.config._attn_implementation == "sdpa"
    assert not lm.lock.locked()
    assert hooks() == before


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
    later = lm.model.model.layers[3].self_attn
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
    # The grouped sums are the layer's own step rows (P - 1 .. T - 2) summed over each group's columns.
    direct = np.stack(
        [weights[:, P - 1 : -1, overview.group_of == g].sum(-1) for g in range(len(overview.groups))], -1
    )
    np.testing.assert_allclose(overview.grouped[LAYER], direct, atol=1e-5)
    turns = att.turn_frame(overview)
    np.testing.assert_allclose(turns.groupby("step")["share"].sum(), 1.0, atol=1e-5)
    assert set(turns["category"]) == set(att.CATEGORIES)
    # step 1 is the last prompt token's attention, which chose the reply's first token
    assert turns["token"].iloc[0] == f"1 {overview.labels[P - 1]} → {overview.labels[P]}"
    by_group = att.head_frame_by_group(weights[2], overview, range(overview.n_tokens))
    np.testing.assert_allclose(by_group.groupby("query")["weight"].sum(), 1.0, atol=1e-5)


def test_head_statistics_match_the_layer_weights(lm, overview, weights):
    P = overview.n_prompt
    R = overview.n_reply
    stats = overview.stats.set_index(["layer", "head"])
    for h in range(weights.shape[0]):
        reply = weights[h, P - 1 : -1]  # (R, T): the step rows
        row = stats.loc[(LAYER, h)]
        assert row["first_token"] == pytest.approx(reply[:, 0].mean(), abs=1e-5)
        assert row["previous_token"] == pytest.approx(
            reply[np.arange(R), P - 2 + np.arange(R)].mean(), abs=1e-5
        )
        ent = -(reply * np.log2(np.clip(reply, 1e-30, None))).sum(-1).mean()
        assert row["entropy_bits"] == pytest.approx(ent, abs=1e-3)
    assert len(overview.stats) == runner_for(lm).facts.total_heads
    assert (overview.stats["looks_like"] == "sink head").sum() > 0  # SmolLM2 has many sink heads


def test_summaries_are_valid_and_bounded(overview):
    np.testing.assert_allclose(overview.thumbs.sum(-1), 1.0, atol=1e-5)  # block rows share 1
    np.testing.assert_allclose(overview.reply_mean.sum(-1), 1.0, atol=1e-5)
    P = overview.n_prompt
    for s in range(overview.n_reply):  # step s is row P + s - 1: nothing after it
        assert overview.reply_mean[s, P + s :].max(initial=0.0) == 0.0
        assert overview.reply_mean[s, P + s - 1] > 0.0
    frame = att.model_view_frame(overview)
    assert len(frame) <= 10_000  # the cells sent to the browser for the model view
    assert frame["relative"].max() == pytest.approx(1.0)


def test_token_row_and_top_attended(lm, greedy_trace, overview, weights):
    reply_w = att.reply_weights(lm, greedy_trace, LAYER)  # (H, R, T), sliced from the kept layer
    P = overview.n_prompt
    np.testing.assert_array_equal(reply_w, weights[:, P - 1 : -1])
    assert overview.position(1) == P  # step 1 (the second reply token) was chosen by row P
    row = att.token_row(overview, 1, reply_w, head=4)
    np.testing.assert_array_equal(row, weights[4, P])
    mean = att.token_row(overview, 1, reply_w)
    np.testing.assert_allclose(mean, weights[:, P].mean(0))
    top = att.top_attended(overview, row, n=5)
    assert list(top["weight"]) == sorted(top["weight"], reverse=True)
    assert top["weight"].iloc[0] == pytest.approx(row.max())


def test_results_are_cached_per_reply(lm, greedy_trace, overview):
    assert att.overview(lm, greedy_trace) is overview
    assert att.is_cached(greedy_trace, LAYER)
    assert att.layer_is_cached(greedy_trace, LAYER)
    assert not att.is_cached(greedy_trace, LAYER + 1)


def test_head_frames_read_reply_rows_at_their_positions(lm, greedy_trace, overview, weights):
    P, T = overview.n_prompt, overview.n_tokens
    reply_w = weights[:, P - 1 : -1]  # (H, R, T): row i is position P - 1 + i
    rows, cols = range(P - 1, T - 1), range(T)
    whole = att.head_frame(weights[3], overview.labels, rows, cols, P)
    reply = att.head_frame(reply_w[3], overview.labels, rows, cols, P, first=P - 1)
    pd.testing.assert_frame_equal(whole, reply)
    labels = overview.labels
    assert whole["query_token"].iloc[0] == f"{P - 1} {labels[P - 1]} → {labels[P]}"  # the looking token first
    whole = att.head_frame_by_group(weights[3], overview, rows)
    reply = att.head_frame_by_group(reply_w[3], overview, rows, first=P - 1)
    pd.testing.assert_frame_equal(whole, reply)


# -- the rows pass over the chat's own KV cache ------------------------------------------


def _chat_turn(lm, messages: list[Message], kv: SessionKV | None, settings: SamplingSettings) -> Trace:
    prompt = build_prompt(lm.tokenizer, messages, budget=2048, reserve=0)
    return generate(lm, new_trace(lm, prompt.ids, prompt.spans, settings), kv=kv)


@pytest.fixture(scope="module")
def chat(lm) -> tuple[SessionKV, Trace, Trace]:
    """A real two-turn greedy chat whose SessionKV was filled by generation itself."""
    kv = SessionKV()
    greedy = SamplingSettings(temperature=0, max_new_tokens=32)
    messages = [
        Message("system", "You are a helpful assistant."),
        Message("user", "What is the capital of France?"),
    ]
    first = _chat_turn(lm, messages, kv, greedy)
    messages += [Message("assistant", first.text, trace=first), Message("user", "And of Italy?")]
    second = _chat_turn(lm, messages, kv, greedy)
    assert kv.ids == second.full_ids[:-1]  # generation never reads its last token back
    return kv, first, second


def _snapshot(kv: SessionKV) -> tuple:
    return kv.ids, list(kv.ids), kv.keys, kv.keys.clone(), kv.values, kv.values.clone(), kv.model_id


def _assert_unchanged(kv: SessionKV, snap: tuple) -> None:
    ids, ids_copy, keys, keys_copy, values, values_copy, model_id = snap
    assert kv.ids is ids and kv.ids == ids_copy and kv.model_id == model_id
    # bit for bit, over the whole buffer: its unused tail is uninitialised memory (torch.empty),
    # which may hold NaN patterns that torch.equal on floats would call unequal to themselves
    assert kv.keys is keys and torch.equal(kv.keys.view(torch.int32), keys_copy.view(torch.int32))
    assert kv.values is values and torch.equal(kv.values.view(torch.int32), values_copy.view(torch.int32))


def _assert_valid_reply_rows(rows: np.ndarray, P: int) -> None:
    """(H, R, T): each row sums to 1 and is exactly 0 after its own position P + r - 1."""
    np.testing.assert_allclose(rows.sum(-1), 1.0, atol=1e-5)
    assert np.all(rows >= 0)
    for r in range(rows.shape[1]):
        assert rows[:, r, P + r :].max(initial=0.0) == 0.0


def _assert_same_overview(ov: att.AttentionOverview, ref: att.AttentionOverview) -> None:
    np.testing.assert_allclose(ov.grouped, ref.grouped, atol=1e-5)
    np.testing.assert_allclose(ov.thumbs, ref.thumbs, atol=1e-5)
    np.testing.assert_allclose(ov.reply_mean, ref.reply_mean, atol=1e-5)
    cols = ["entropy_bits", "first_token", "previous_token", "current_question"]
    np.testing.assert_allclose(ov.stats[cols], ref.stats[cols], atol=1e-3)
    assert list(ov.stats["looks_like"]) == list(ref.stats["looks_like"])


@pytest.mark.parametrize("turn", [1, 2])
def test_rows_pass_over_the_session_kv_equals_the_eager_weights(lm, chat, turn):
    """Turn 2: every token but the last is cached. Turn 1: the cache has moved on past it."""
    kv, first, second = chat
    trace = first if turn == 1 else second
    P, T = len(trace.prompt_ids), len(trace.full_ids)
    assert session_prefix(runner_for(lm), kv, trace.full_ids) >= T - 1
    att.clear_caches()  # compute_reply_rows would slice a cached whole layer instead
    snap = _snapshot(kv)
    ov = att.compute_overview(lm, trace, keep_layer=LAYER, method="kv", kv=kv)
    rows = att.compute_reply_rows(lm, trace, 20, kv=kv)  # a pass that stops after layer 20
    _assert_unchanged(kv, snap)
    assert ov.method == "kv"
    _assert_same_overview(ov, att.compute_overview(lm, trace, method="eager"))
    np.testing.assert_allclose(
        rows, att.compute_layer(lm, trace, 20, method="eager")[:, P - 1 : -1], atol=1e-5
    )
    _assert_valid_reply_rows(rows, P)
    kept = att._REPLY_ROWS.get_or_compute(att._reply_key(trace, LAYER), lambda: None)
    np.testing.assert_allclose(
        kept, att.compute_layer(lm, trace, LAYER, method="eager")[:, P - 1 : -1], atol=1e-5
    )


def test_rows_pass_computes_only_the_rows_asked_for_with_a_causal_mask_over_the_cache(lm, chat):
    """A few rows scattered over the context, at every layer, against the eager weights."""
    kv, _, second = chat
    T = len(second.full_ids)
    asked = torch.tensor([0, 3, 17, T // 2, T - 5])
    seen: dict[int, tuple[torch.Tensor, np.ndarray]] = {}
    snap, threads = _snapshot(kv), torch.get_num_threads()
    c = session_rows(
        runner_for(lm), kv, second.full_ids, asked, lambda i, p, w: seen.__setitem__(i, (p, w.numpy()))
    )
    _assert_unchanged(kv, snap)
    assert torch.get_num_threads() == threads and not lm.lock.locked()
    assert c == T - 1
    eager: dict[int, np.ndarray] = {}
    att.eager_pass(lm, second.full_ids, lambda i, w: eager.__setitem__(i, w.numpy().copy()))
    assert sorted(seen) == list(range(lm.n_layers))
    for layer, (positions, w) in seen.items():
        assert positions.tolist() == [*asked[:-1].tolist(), T - 5, T - 1]  # + the uncached last token
        np.testing.assert_allclose(w, eager[layer][:, positions], atol=1e-5)
        for i, p in enumerate(positions.tolist()):
            assert w[:, i, p + 1 :].max(initial=0.0) == 0.0
    wrong = eager[5][:, asked.flip(0)]  # the comparison can fail: rows in the wrong order
    assert not np.allclose(seen[5][1][:, :5], wrong, atol=1e-4)


def test_an_alternative_reply_reads_its_tokens_as_an_uncached_extension(lm, chat):
    """A regenerated take of the last turn: the cache holds its prompt, none of its reply."""
    kv, _, second = chat
    alt = new_trace(lm, second.prompt_ids, second.spans, SamplingSettings(temperature=0, max_new_tokens=24))
    # Another take, starting from the runner-up first token; no kv: the chat's cache stays as it was.
    alt = generate(lm, alt, forced=[second.steps[0].top_ids[1]])
    assert alt.full_ids != second.full_ids
    P = len(alt.prompt_ids)
    assert P <= session_prefix(runner_for(lm), kv, alt.full_ids) < len(alt.full_ids) - 1
    att.clear_caches()
    snap = _snapshot(kv)
    ov = att.compute_overview(lm, alt, keep_layer=LAYER, kv=kv)
    rows = att.compute_reply_rows(lm, alt, 29, kv=kv)
    _assert_unchanged(kv, snap)
    assert ov.method == "kv"
    _assert_same_overview(ov, att.compute_overview(lm, alt, method="eager"))
    np.testing.assert_allclose(rows, att.compute_layer(lm, alt, 29, method="eager")[:, P - 1 : -1], atol=1e-5)
    _assert_valid_reply_rows(rows, P)


def test_without_a_usable_kv_the_full_pass_runs_unchanged(lm, chat):
    kv, _, second = chat
    att.clear_caches()  # the fallback slices a cached whole layer when there is one
    P = len(second.prompt_ids)
    reference = att.compute_layer(lm, second, LAYER, method="eager")[:, P - 1 : -1]
    other = SessionKV()  # another conversation: only the first few template tokens agree
    _chat_turn(
        lm,
        [Message("system", "Answer in French."), Message("user", "Name three colours.")],
        other,
        SamplingSettings(temperature=0, max_new_tokens=8),
    )
    runner = runner_for(lm)
    assert session_prefix(runner, other, second.full_ids) < len(second.full_ids) // 2
    stale = SessionKV()
    stale.ids, stale.keys, stale.values, stale.model_id = kv.ids, kv.keys, kv.values, -1  # another model
    assert session_prefix(runner, stale, second.full_ids) == 0
    for cache in (None, SessionKV(), other, stale):
        snap = _snapshot(other)
        ov = att.compute_overview(lm, second, keep_layer=LAYER, kv=cache)
        _assert_unchanged(other, snap)
        assert ov.method == "rows"
        rows = att.compute_reply_rows(lm, second, LAYER, kv=cache)
        np.testing.assert_allclose(rows, reference, atol=1e-5)
        _assert_valid_reply_rows(rows, P)
        with pytest.raises(ValueError, match="does not cover"):
            att.compute_overview(lm, second, kv=cache, method="kv")
    assert not lm.lock.locked()


def test_the_page_entry_points_use_the_kv_and_cache_bounded_pieces(lm, chat):
    kv, _, second = chat
    att.clear_caches()
    ov = att.overview(lm, second, keep_layer=LAYER, kv=kv)
    assert ov.method == "kv"
    assert att.is_cached(second, LAYER)  # the reply rows of the kept layer came with the pass
    T = len(second.full_ids)
    assert T <= att.THUMB * att.THUMB_ROWS  # a short chat: every row was computed ...
    assert att.layer_is_cached(second, LAYER)  # ... so the whole layer is at hand too
    assert att._REPLY_ROWS.max_bytes and att._LAYERS.max_bytes
    reply = att.reply_weights(lm, second, LAYER)
    assert reply.shape == (lm.n_heads, len(second.steps), T)
    P = len(second.prompt_ids)
    np.testing.assert_array_equal(reply, att.layer_weights(lm, second, LAYER)[:, P - 1 : -1])
    att.clear_caches()


@pytest.mark.parametrize("step", [0, 1, 4])
def test_step_s_is_the_row_that_chose_reply_token_s_as_in_the_walkthrough(lm, greedy_trace, overview, step):
    """Issue 18: step s is the attention of the token BEFORE reply token s, on every view.

    The walkthrough's step s reads the context up to that token and takes the last row's
    attention; the attention page's step s must show that same row, not the one after it.
    """
    from core.explain import walkthrough as wt

    P = overview.n_prompt
    walk = wt.walk_step(lm, greedy_trace, step)
    assert walk.position == overview.position(step) == att.step_position(P, step) == P + step - 1
    labels = overview.labels
    assert overview.step_label(step) == f"{labels[P + step - 1]} → {labels[P + step]}"
    n = len(walk.context)  # the walkthrough's context ends at the looking token
    everything = att.token_row(overview, step)  # (T,): the mean over every layer and head
    np.testing.assert_allclose(everything[:n], walk.attention.mean(axis=(0, 1)), atol=1e-5)
    assert everything[n:].max(initial=0.0) == 0.0
    one_layer = att.token_row(overview, step, att.reply_weights(lm, greedy_trace, LAYER))
    np.testing.assert_allclose(one_layer[:n], walk.attention[LAYER].mean(axis=0), atol=1e-5)


# -- each fast path only where its self-check passed (issue 15) -----------------------------


def test_both_self_checks_run_at_load_so_a_first_page_does_not_wait(lm, monkeypatch):
    from core import runner as runner_module

    runner = runner_for(lm)
    monkeypatch.setattr(runner, "attention_exact", None)  # as a model just loaded: nothing proven
    monkeypatch.delitem(runner_module._SESSION_CHECKS, lm.lean.model_id, raising=False)
    runner_module.prove_in_background(lm).join(120)
    assert runner.attention_exact is True  # the rows pass, proven once
    assert runner_module._SESSION_CHECKS[lm.lean.model_id] <= runner_module.SELF_CHECK_TOL  # the session pass


def test_the_session_pass_is_used_only_once_its_self_check_passed(lm, chat, monkeypatch):
    from core import runner as runner_module

    kv, _, second = chat
    runner = runner_for(lm)
    assert runner_module.session_rows_exact(runner)  # the lean pass against eager_attention, at 1e-5
    lean_id = runner.lean.model_id
    assert runner_module._SESSION_CHECKS[lean_id] <= runner_module.SELF_CHECK_TOL
    monkeypatch.setitem(runner_module._SESSION_CHECKS, lean_id, 1e-3)  # as if it had failed
    assert session_rows(runner, kv, second.full_ids, torch.tensor([3]), lambda *a: None) is None
    att.clear_caches()
    ov = att.compute_overview(lm, second, kv=kv)
    assert ov.method == "rows"  # the runner's proven pass instead
    with pytest.raises(ValueError, match="does not cover"):
        att.compute_overview(lm, second, kv=kv, method="kv")
    att.clear_caches()


def test_where_the_rows_pass_failed_its_check_the_views_use_the_eager_pass_and_say_so(
    lm, greedy_trace, monkeypatch
):
    runner = runner_for(lm)
    assert runner.self_check() and att.fallback_note(lm) is None
    P = len(greedy_trace.prompt_ids)
    exact = att.compute_layer(lm, greedy_trace, LAYER, method="eager")
    monkeypatch.setattr(runner, "attention_exact", False)
    monkeypatch.setattr(runner, "check_error", 3e-3)
    att.clear_caches()
    ov = att.compute_overview(lm, greedy_trace, keep_layer=LAYER)
    assert ov.method == "eager"
    note = att.fallback_note(lm)
    assert note is not None and "3.0e-03" in note and note.count(". ") == 0  # one sentence
    np.testing.assert_allclose(att.reply_weights(lm, greedy_trace, LAYER), exact[:, P - 1 : -1], atol=1e-6)
    np.testing.assert_allclose(
        att.compute_layer(lm, greedy_trace, 3), att.compute_layer(lm, greedy_trace, 3, "eager")
    )
    walk_row = att.attention_at(lm, greedy_trace.full_ids, [P])  # (layers, heads, 1, T)
    np.testing.assert_allclose(walk_row[LAYER, :, 0], exact[:, P], atol=1e-6)
    # too long to hold every layer at once: refused in a sentence, never a crash or a zero
    monkeypatch.setattr(att, "EAGER_LIMIT_BYTES", 1000)
    att.clear_caches()
    with pytest.raises(att.AttentionUnavailable, match="pick a shorter reply"):
        att.overview(lm, greedy_trace, keep_layer=LAYER)
    with pytest.raises(att.AttentionUnavailable):
        att.reply_weights(lm, greedy_trace, LAYER)
    att.clear_caches()
