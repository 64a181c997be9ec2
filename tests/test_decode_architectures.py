"""Decoding for every architecture the app accepts: exact, reusing the session's KV cache.

Each tiny model (tests/tiny_models.py) decodes through the app's loop; the bundled SmolLM2
through both the lean Llama path and the generic one, which must agree step for step.
"""

from __future__ import annotations

import pytest
import torch

from core.conversation import Message, build_prompt
from core.generation import generate, measure_decode_threads, new_trace
from core.kvcache import SessionKV
from core.settings import SamplingSettings
from tests.tiny_models import ARCHITECTURES

GREEDY = SamplingSettings(temperature=0, max_new_tokens=12)


def chat(lm, turns: int) -> tuple[list[Message], SessionKV, list]:
    """A conversation of `turns` real turns on one session cache; returns the traces too."""
    history = [Message("system", "You are helpful.")]
    kv = SessionKV()
    traces = []
    for k in range(turns):
        history.append(Message("user", f"Question number {k + 1}: what is {k} plus {k}?"))
        prompt = build_prompt(lm.tokenizer, history, 2048, reserve=GREEDY.max_new_tokens)
        trace = generate(lm, new_trace(lm, prompt.ids, prompt.spans, GREEDY), kv=kv)
        history.append(Message("assistant", trace.text, trace=trace))
        traces.append(trace)
    return history, kv, traces


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_greedy_tokens_equal_model_generate(tiny_lm, arch):
    lm = tiny_lm(arch)
    _, _, traces = chat(lm, 2)
    for trace in traces:
        with torch.inference_mode():
            out = lm.model.generate(
                torch.tensor([trace.prompt_ids]),
                max_new_tokens=GREEDY.max_new_tokens,
                do_sample=False,
                eos_token_id=sorted(lm.eos_ids),
                pad_token_id=lm.tokenizer.eos_token_id,
            )
        assert trace.output_ids == out[0, len(trace.prompt_ids) :].tolist()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_later_turn_reads_only_its_new_tokens(tiny_lm, arch):
    """The session cache is reused: the 4th turn's prefill does not grow with the history."""
    lm = tiny_lm(arch)
    history, kv, traces = chat(lm, 4)
    cache = kv if lm.lean is not None else kv.generic
    # everything the previous turn read is reused; only the last reply (as the template writes
    # it back) and the new question are read
    assert cache.reused >= len(traces[-2].prompt_ids)
    assert len(traces[-1].prompt_ids) - cache.reused <= len(traces[-1].prompt_ids) - len(
        traces[-2].prompt_ids
    )


def test_the_lean_path_is_the_generic_path_made_faster(lm, two_turn):
    """Same prompts, same step records: tokens equal, probabilities within float noise."""
    for settings in (GREEDY, SamplingSettings(temperature=0.8, top_p=0.9, max_new_tokens=24, seed=7)):
        prompt = build_prompt(lm.tokenizer, two_turn, 2048)
        lean = generate(lm, new_trace(lm, prompt.ids, prompt.spans, settings))
        generic = generate(lm, new_trace(lm, prompt.ids, prompt.spans, settings), use_lean=False)
        assert lean.output_ids == generic.output_ids
        for a, b in zip(lean.steps, generic.steps, strict=True):
            assert a.top_ids[:10] == b.top_ids[:10]
            assert a.rank == b.rank
            assert abs(a.prob - b.prob) < 1e-4 and abs(a.sample_prob - b.sample_prob) < 1e-4
            assert abs(a.entropy - b.entropy) < 1e-3


def test_decode_threads_are_measured_not_assumed(lm):
    chosen = measure_decode_threads(lm, steps=4, rounds=1)
    assert chosen == lm.decode_threads
    assert set(lm.decode_timings) == set(range(1, torch.get_num_threads() + 1)) or len(lm.decode_timings) == 0
    assert chosen in lm.decode_timings or torch.get_num_threads() == 1
    assert all(t > 0 for t in lm.decode_timings.values())
