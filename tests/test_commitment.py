"""The commitment strip (core/explain/commitment.py): the layer from which the lens keeps each
reply token as its top choice, from one pass, checked against the per-step logit lens."""

from __future__ import annotations

import pytest
import torch
from streamlit.testing.v1 import AppTest

from core.conversation import Message
from core.explain.commitment import commitment, rank_bucket, strip_chips
from core.explain.lens import lens_probs
from core.html import chips
from core.runner import runner_for
from core.settings import SamplingSettings
from tests.conftest import APP, make_trace


@pytest.fixture(scope="module")
def story(lm):
    """A greedy reply long enough for many layers to appear (48 tokens)."""
    messages = [
        Message("system", "You are a helpful assistant."),
        Message("user", "Write a short story about a cat."),
    ]
    return make_trace(lm, messages, SamplingSettings(temperature=0, max_new_tokens=48))


def _settled_at(probs: torch.Tensor, token: int) -> int | None:
    """The reference: from the per-step lens (one pass per step), the first layer from which
    the token is top-1 at every layer to the end."""
    top = probs.argmax(-1).tolist()  # (layers + 1,)
    if top[-1] != token:
        return None
    layer = len(top) - 1
    while layer > 0 and top[layer - 1] == token:
        layer -= 1
    return layer


def test_the_last_layers_top_1_is_the_token_greedy_decoding_chose_at_every_step(lm, story):
    table = commitment(lm, story)
    assert len(table) == len(story.steps) > 10
    assert table["final_top1"].tolist() == story.output_ids
    n_layers = runner_for(lm).facts.n_layers
    assert table["commit_layer"].notna().all()
    assert table["commit_layer"].between(0, n_layers).all()
    assert table["commit_layer"].nunique() > 1  # not one layer for every token


def test_the_one_pass_strip_equals_the_per_step_logit_lens(lm, story):
    table = commitment(lm, story)
    n = len(story.steps)
    for step in (0, 1, n // 2, n - 1):
        reference = _settled_at(lens_probs(lm, story, step), story.output_ids[step])
        assert table["commit_layer"][step] == reference, step


def test_a_sampled_runner_up_was_never_settled_and_keeps_its_rank(lm, two_turn):
    hot = SamplingSettings(temperature=1.6, top_k=0, top_p=1.0, max_new_tokens=40, seed=5)
    trace = make_trace(lm, two_turn, hot)
    table = commitment(lm, trace)
    runners_up = table[table["rank"] > 1]
    assert len(runners_up) > 0  # at this temperature some steps took a runner-up
    assert runners_up["commit_layer"].isna().all()
    assert (runners_up["final_top1"] != runners_up["token_id"]).all()
    firsts = table[table["rank"] == 1]
    assert (firsts["final_top1"] == firsts["token_id"]).all() and firsts["commit_layer"].notna().all()


def test_ranks_fall_in_gltr_buckets_and_chips_show_both_on_hover(lm, story):
    assert [rank_bucket(r)[0] for r in (1, 2, 10, 11, 100, 101, 5000)] == [
        "top 1",
        "top 10",
        "top 10",
        "top 100",
        "top 100",
        "beyond 100",
        "beyond 100",
    ]
    table = commitment(lm, story)
    n_layers = runner_for(lm).facts.n_layers
    items = strip_chips(lm.tokenizer, table, n_layers)
    first = table.iloc[0]
    assert items[0].sub == str(first["commit_layer"])
    assert (
        f"top-1 from layer {first['commit_layer']} of {n_layers} on" in items[0].title
        or first["commit_layer"] == 0
    )
    assert "rank 1 in the model's distribution (top 1)" in items[0].title
    rank_items = strip_chips(lm.tokenizer, table, n_layers, colour_by="rank")
    assert {c.background for c in rank_items} == {"#86efac"}  # greedy: every token was the top 1
    assert "<script" not in chips(items)


def test_the_explain_panel_colours_the_reply_by_layer_and_by_rank(lm):
    at = AppTest.from_file(APP, default_timeout=180)
    at.session_state["chat.temperature"] = 0.0
    at.session_state["chat.max_new_tokens"] = 16
    at.run()
    at.chat_input[0].set_value("What is the capital of France?").run()
    reply = at.session_state["chat.messages"][-1]
    at.toggle(key=f"explain.toggle.{reply.id}").set_value(True).run()
    assert not at.exception
    at.button_group(key=f"explain.colour.{reply.id}").set_value("layer").run()
    assert not at.exception
    html = "".join(e.proto.body for e in at.get("html"))
    assert "never top-1 (sampled)" in html and "top-1 from" in html
    at.button_group(key=f"explain.colour.{reply.id}").set_value("rank").run()
    assert not at.exception
    html = "".join(e.proto.body for e in at.get("html"))
    assert "top 100" in html and "rank 1 in the model" in html
