"""The repetition penalty: transformers' processor through the one sampler, recorded in the trace."""

from __future__ import annotations

import pytest
import torch

from core.conversation import Message, build_prompt
from core.explain.candidates import find_repetition
from core.generation import generate, new_trace
from core.sampling import sampling_probs
from core.settings import DEFAULT_SYSTEM_PROMPT, SamplingSettings
from core.trace import Trace
from tests.conftest import make_trace

POEM = [Message("system", DEFAULT_SYSTEM_PROMPT), Message("user", "Write a short poem about the ocean.")]


def _poem(lm, penalty: float, n: int = 200) -> Trace:
    return make_trace(lm, POEM, SamplingSettings(temperature=0, max_new_tokens=n, repetition_penalty=penalty))


def test_penalised_greedy_matches_transformers_generate(lm):
    """The reference: model.generate with the same repetition_penalty picks the same tokens."""
    prompt = build_prompt(lm.tokenizer, POEM, 2048, reserve=0)
    ours = generate(
        lm,
        new_trace(
            lm,
            prompt.ids,
            prompt.spans,
            SamplingSettings(temperature=0, max_new_tokens=40, repetition_penalty=1.3),
        ),
    )
    ids = torch.tensor([prompt.ids])
    with lm.lock, torch.inference_mode():
        ref = lm.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=40,
            repetition_penalty=1.3,
        )
    assert ours.output_ids == ref[0, len(prompt.ids) :].tolist()
    plain = _poem(lm, 1.0, 40)
    assert plain.output_ids != ours.output_ids  # the penalty really changed the reply


def test_penalty_lowers_exactly_the_tokens_already_in_the_text():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1000, generator=gen) * 3  # (vocab,)
    context = [3, 7, 7, 500, 999]
    settings = SamplingSettings(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.5)
    got = sampling_probs(logits, settings, context)
    want = logits.clone()
    for t in set(context):  # transformers' rule: divide a positive score, multiply a negative one
        want[t] = want[t] / 1.5 if want[t] > 0 else want[t] * 1.5
    torch.testing.assert_close(got, torch.softmax(want, -1))
    off = sampling_probs(logits, SamplingSettings(temperature=1.0, top_k=0, top_p=1.0), context)
    torch.testing.assert_close(off, torch.softmax(logits, -1))  # 1.0 is off, whatever the context
    greedy = SamplingSettings(temperature=0, repetition_penalty=1.5)
    assert int(sampling_probs(logits, greedy, context).argmax()) == int(want.argmax())


def test_a_penalty_without_the_text_is_refused():
    with pytest.raises(ValueError, match="context"):
        sampling_probs(torch.zeros(10), SamplingSettings(repetition_penalty=1.2))


def test_the_trace_records_the_penalty_and_old_traces_load(lm, two_turn):
    settings = SamplingSettings(temperature=0.8, max_new_tokens=6, seed=1, repetition_penalty=1.25)
    trace = make_trace(lm, two_turn, settings)
    data = trace.to_dict()
    assert data["settings"]["repetition_penalty"] == 1.25
    assert Trace.from_dict(data).settings == settings
    del data["settings"]["repetition_penalty"]  # a trace saved before the setting existed
    assert Trace.from_dict(data).settings.repetition_penalty == 1.0
    assert SamplingSettings(repetition_penalty=0.5).validated().repetition_penalty == 1.0
    assert SamplingSettings(repetition_penalty=9).validated().repetition_penalty == 3.0
    # positional construction (the chat sidebar's) keeps its meaning: the penalty comes last
    assert SamplingSettings(0.5, 10, 0.9, 32, 4) == SamplingSettings(
        temperature=0.5, top_k=10, top_p=0.9, max_new_tokens=32, seed=4, repetition_penalty=1.0
    )


def test_the_penalty_breaks_the_greedy_poem_loop(lm, ocean_poem):
    """Without a penalty the greedy poem goes round in a loop; with 1.3 it does not."""
    assert find_repetition(ocean_poem) is not None
    assert find_repetition(_poem(lm, 1.3)) is None


def test_sampled_steps_record_the_penalised_distribution(lm, two_turn):
    """sample_prob is the chosen token's probability after the penalty: recompute it from a
    plain forward pass over the same text, through sampling_probs with that text as context."""
    settings = SamplingSettings(
        temperature=0.9, top_k=0, top_p=1.0, max_new_tokens=8, seed=5, repetition_penalty=1.4
    )
    trace = make_trace(lm, two_turn, settings)
    ids = torch.tensor([trace.full_ids])
    with lm.lock, torch.inference_mode():
        logits = lm.model(input_ids=ids).logits[0].float()  # (T, vocab)
    n = len(trace.prompt_ids)
    for i, step in enumerate(trace.steps):
        probs = sampling_probs(logits[n + i - 1], settings, trace.full_ids[: n + i])
        assert float(probs[step.token_id]) == pytest.approx(step.sample_prob, abs=2e-3)
