"""The walkthrough's stage data matches the model itself, step by step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.conversation import Message
from core.explain import walkthrough as wt
from core.html import architecture_svg
from core.runner import runner_for
from core.sampling import sampling_probs
from core.settings import SamplingSettings
from tests.conftest import make_trace


@pytest.fixture(scope="module")
def sampled_trace(lm):
    """A real sampled reply (temperature, top-k and top-p all active), so the filters matter."""
    messages = [Message("system", "You are a helpful assistant."), Message("user", "Name three fruits.")]
    return make_trace(lm, messages, SamplingSettings(temperature=0.9, top_k=40, top_p=0.9, max_new_tokens=12))


@pytest.fixture(scope="module")
def walk(lm, greedy_trace):
    return wt.walk_step(lm, greedy_trace, 2)


def test_context_is_prompt_plus_earlier_reply_tokens(lm, greedy_trace, walk):
    table = wt.context_tokens(lm, greedy_trace, 2)
    assert table["token_id"].tolist() == greedy_trace.prompt_ids + greedy_trace.output_ids[:2]
    assert walk.context == table["token_id"].tolist()
    assert table["role"].iloc[1] == "system"
    assert table["kind"].tolist()[-2:] == ["reply", "reply"]
    assert table["special"].iloc[0]  # <|im_start|>


def test_embedding_row_is_the_models_own(lm, walk):
    expected = lm.model.get_input_embeddings().weight[walk.last_id].detach().numpy()
    d = runner_for(lm).facts.d_model
    assert walk.embedding.shape == (d,)
    np.testing.assert_array_equal(walk.embedding, expected)
    assert walk.embedding_norm == pytest.approx(float(np.linalg.norm(expected)), rel=1e-6)
    cells = wt.embedding_cells(walk.embedding)
    assert len(cells) == d and cells["row"].max() == (d - 1) // 64


def test_final_layer_lens_equals_the_recorded_distribution(lm, greedy_trace, walk):
    step = greedy_trace.steps[2]
    probs = torch.softmax(walk.logits, dim=-1)
    top = torch.topk(probs, 10)
    assert top.indices.tolist() == step.top_ids[:10]
    np.testing.assert_allclose(top.values.numpy(), step.top_probs[:10], atol=1e-3)
    layers = walk.layers
    assert len(layers) == lm.n_layers + 1
    assert layers["lens_id"].iloc[-1] == step.top_ids[0] == step.token_id
    assert layers["lens_prob"].iloc[-1] == pytest.approx(step.top_probs[0], abs=1e-3)
    assert layers["cosine_to_final"].iloc[-1] == pytest.approx(1.0, abs=1e-5)
    logits = wt.top_logits(lm, walk.logits)
    assert logits["token_id"].tolist() == step.top_ids[:10]
    np.testing.assert_allclose(logits["logit"], step.top_logits[:10], atol=1e-2)


def test_attention_row_matches_eager_attention(lm, walk):
    # transformers' own eager attention weights, the last query row of every layer: (layers, heads, T)
    reference = np.stack([w[:, -1].numpy() for w in runner_for(lm).eager_attention(walk.context)])
    assert lm.model.config._attn_implementation == "sdpa"  # restored for generation
    assert walk.attention.shape == (lm.n_layers, lm.n_heads, len(walk.context))
    np.testing.assert_allclose(walk.attention, reference, atol=1e-5)
    table = wt.attention_table(lm, walk)
    assert table["weight"].sum() == pytest.approx(1.0, abs=1e-4)
    one = wt.attention_table(lm, walk, layer=5)
    np.testing.assert_allclose(one["weight"], reference[5].mean(axis=0), atol=1e-5)


@pytest.mark.parametrize("temperature", [0.3, 1.0, 1.7])
def test_temperature_redraw_matches_the_sampler(lm, walk, temperature):
    table = wt.temperature_table(lm, walk.logits, temperature, chosen=walk.context[-1])
    sampler = sampling_probs(walk.logits, SamplingSettings(temperature=temperature, top_k=0, top_p=1.0))
    ids = table["token_id"].tolist()
    np.testing.assert_allclose(table["prob"], sampler[ids].numpy(), rtol=1e-5, atol=1e-7)
    by_hand = torch.softmax(walk.logits / temperature, dim=-1)[ids].numpy()
    np.testing.assert_allclose(table["prob"], by_hand, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(table["raw_prob"], torch.softmax(walk.logits, -1)[ids].numpy(), rtol=1e-4)


def test_choices_reproduce_the_sampled_step(lm, sampled_trace):
    for index in range(min(4, len(sampled_trace.steps))):
        step = sampled_trace.steps[index]
        walk = wt.walk_step(lm, sampled_trace, index)
        table = wt.choice_table(lm, walk.logits, sampled_trace.settings, step.token_id).set_index("rule")
        assert table.loc["this reply", "chosen_prob"] == pytest.approx(step.sample_prob, abs=2e-3)
        assert table.loc["greedy", "pool"] == 1
        assert table.loc["greedy", "pick_id"] == step.top_ids[0]
        assert table.loc["top-k", "pool"] == 40
        assert table.loc["this reply", "pool"] <= 40


def test_step_outside_the_reply_is_refused(lm, greedy_trace):
    with pytest.raises(IndexError):
        wt.walk_step(lm, greedy_trace, len(greedy_trace.steps))


def test_architecture_diagram_escapes_the_model_name():
    svg = architecture_svg("<script>alert(1)</script>", 30)
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert svg.startswith("<svg") and svg.endswith("</svg>") and "30 decoder blocks" in svg


def test_charts_build_from_live_data(lm, walk):
    from core.charts import walkthrough as charts

    specs = [
        charts.embedding_strip(wt.embedding_cells(walk.embedding)).to_dict(),
        charts.layer_trajectory(walk.layers).to_dict(),
        charts.logit_dots(wt.top_logits(lm, walk.logits)).to_dict(),
        charts.temperature_bars(wt.temperature_table(lm, walk.logits, 0.5, walk.context[-1]), 0.5).to_dict(),
    ]
    assert all("$schema" in spec for spec in specs)
    strip = specs[0]
    assert len(strip["datasets"][next(iter(strip["datasets"]))]) == runner_for(lm).facts.d_model
