"""Next-word candidates: step table, what-if against the sampler, readable token text."""

from __future__ import annotations

import pytest
import torch

from core.conversation import Message
from core.explain.candidates import (
    reply_chips,
    steps_table,
    tokens_for_90,
    top_candidates,
    uncertain_moments,
    what_if,
)
from core.generation import generate, new_trace
from core.sampling import sampling_probs
from core.settings import SamplingSettings
from core.trace import TOP_CANDIDATES, Step
from tests.conftest import make_trace

WHAT_IFS = [
    SamplingSettings(temperature=t, top_k=k, top_p=p)
    for t, k, p in [
        (1.0, 0, 1.0),
        (0.3, 0, 1.0),
        (1.7, 0, 0.9),
        (0.7, 50, 0.5),
        (1.0, 10, 0.95),
        (0.0, 0, 1.0),
    ]
]


def _step_from_logits(logits: torch.Tensor) -> Step:
    """A step record as the decode loop makes it, from full-vocabulary logits (vocab,)."""
    top_logits, top_ids = torch.topk(logits, TOP_CANDIDATES)
    probs = torch.softmax(logits, -1)
    tid = int(top_ids[0])
    return Step(
        tid,
        "",
        float(probs[tid]),
        float(probs[tid]),
        1,
        1.0,
        top_ids.tolist(),
        top_logits.tolist(),
        probs[top_ids].tolist(),
        probs[top_ids].tolist(),
    )


@pytest.mark.parametrize("settings", WHAT_IFS, ids=str)
def test_what_if_matches_sampler_on_random_logits(lm, settings):
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        logits = torch.randn(lm.vocab_size, generator=gen) * 3  # (vocab,)
        step = _step_from_logits(logits)
        got = torch.tensor(what_if(lm.tokenizer, step, settings, n=TOP_CANDIDATES)["what_if"].tolist())
        # the sampler on the same 50 logits (what the page claims to show)
        want = sampling_probs(torch.tensor(step.top_logits), settings)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
        assert abs(float(got.sum()) - 1.0) < 1e-4


@pytest.mark.parametrize("settings", [WHAT_IFS[1], WHAT_IFS[3], WHAT_IFS[4]], ids=str)
def test_what_if_matches_sampler_on_real_logits(lm, greedy_trace, settings):
    """On real steps the top 50 hold nearly all the mass, so the recomputation over them agrees
    with the sampler run on the full vocabulary (exactly so when top-k <= 50 cuts the tail)."""
    ids = torch.tensor([greedy_trace.prompt_ids + greedy_trace.output_ids[:4]])
    with lm.lock, torch.inference_mode():
        logits = lm.model(input_ids=ids).logits[0, -1].float()  # (vocab,)
    step = greedy_trace.steps[4]
    full = sampling_probs(logits, settings)[torch.tensor(step.top_ids)]
    got = torch.tensor(what_if(lm.tokenizer, step, settings, n=TOP_CANDIDATES)["what_if"].tolist())
    torch.testing.assert_close(got, full / full.sum(), atol=2e-3, rtol=1e-2)


def test_what_if_reproduces_what_the_sampler_recorded(lm, two_turn):
    """A sampled reply: the decode loop recorded each step's sampled distribution; the what-if
    under the trace's own settings must give it back from the recorded logits."""
    settings = SamplingSettings(temperature=0.7, top_k=50, top_p=0.95, max_new_tokens=24, seed=3)
    trace = make_trace(lm, two_turn, settings)
    for step in trace.steps:
        got = what_if(lm.tokenizer, step, trace.settings, n=TOP_CANDIDATES)["what_if"].tolist()
        torch.testing.assert_close(
            torch.tensor(got), torch.tensor(step.top_sample_probs), atol=1e-4, rtol=1e-3
        )


def test_higher_temperature_flattens_the_distribution(lm, greedy_trace):
    step = greedy_trace.steps[0]
    cold = what_if(lm.tokenizer, step, SamplingSettings(temperature=0.3, top_k=0, top_p=1.0))
    hot = what_if(lm.tokenizer, step, SamplingSettings(temperature=2.0, top_k=0, top_p=1.0))
    assert cold["what_if"].iloc[0] > cold["original"].iloc[0] > hot["what_if"].iloc[0]


def test_steps_table_follows_the_trace(lm, greedy_trace):
    table = steps_table(lm.tokenizer, greedy_trace)
    assert len(table) == len(greedy_trace.steps)
    assert table["token_id"].tolist() == greedy_trace.output_ids
    assert (table["rank"] == 1).all()  # greedy always picks the top token
    assert ((table["top50_mass"] > 0) & (table["top50_mass"] <= 1.0 + 1e-5)).all()
    assert "Rome" in "".join(table["token"])
    cands = top_candidates(lm.tokenizer, greedy_trace.steps[0], 10)
    assert len(cands) == 10 and cands["chosen"].iloc[0] and cands["prob"].is_monotonic_decreasing


def test_uncertain_moments_are_the_lowest_probability_steps(greedy_trace):
    picked = uncertain_moments(greedy_trace, 3)
    probs = sorted(s.prob for s in greedy_trace.steps)
    assert sorted(greedy_trace.steps[i].prob for i in picked) == probs[:3]
    assert picked == sorted(picked)


def test_tokens_for_90(greedy_trace):
    for step in greedy_trace.steps:
        n = tokens_for_90(step)
        if n is not None:
            assert sum(step.top_probs[:n]) >= 0.9 - 1e-6
            assert n == 1 or sum(step.top_probs[: n - 1]) < 0.9


@pytest.mark.parametrize("text", ["I love 🍕 and 🎉!", "東京は日本の首都です。"])
def test_utf8_fragments_display_for_emoji_and_cjk(lm, text):
    """A reply made of byte-level pieces: every chip is non-empty, partial characters show as bytes,
    and the chips' bytes put together give back the text exactly."""
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    msgs = [Message("system", "Repeat."), Message("user", text)]
    trace = make_trace(lm, msgs, SamplingSettings(temperature=0, max_new_tokens=1))
    forced = new_trace(
        lm, trace.prompt_ids, trace.spans, SamplingSettings(temperature=0, max_new_tokens=len(ids))
    )
    generate(lm, forced, forced=ids)
    assert forced.text == text  # the incremental decoder joins the fragments
    items = reply_chips(lm.tokenizer, forced)
    assert all(c.text.strip() for c in items)
    assert "�" not in "".join(c.text for c in items)
    assert any("bytes" in c.css for c in items)  # at least one token is part of a character
    rebuilt = b""
    for c in items:
        for part in c.text.split("<0x"):
            if part.startswith(tuple("0123456789ABCDEF")) and len(part) >= 3 and part[2] == ">":
                rebuilt += bytes([int(part[:2], 16)]) + part[3:].replace("·", " ").encode()
            else:
                rebuilt += part.replace("·", " ").encode()
    assert rebuilt.decode("utf-8") == text
