"""Correctness of the fast decode path and of KV-cache reuse across turns (timing is benchmarks/)."""

from __future__ import annotations

import pytest
import torch

from core.conversation import Message, build_prompt
from core.generation import generate, new_trace, warm_up
from core.kvcache import SessionKV, lean_model
from core.models import LoadedModel
from core.settings import SamplingSettings

GREEDY = SamplingSettings(temperature=0, max_new_tokens=24)


@pytest.fixture(scope="module")
def fast_lm(lm: LoadedModel) -> LoadedModel:
    if not warm_up(lm):
        pytest.fail("the bundled SmolLM2 should be covered by the lean forward")
    return lm


def _reply(lm: LoadedModel, messages: list[Message], kv: SessionKV | None, **kwargs) -> list[int]:
    prompt = build_prompt(lm.tokenizer, messages, budget=kwargs.pop("budget", 2048), reserve=0)
    trace = new_trace(lm, prompt.ids, prompt.spans, kwargs.pop("settings", GREEDY))
    return [s.token_id for s in generate(lm, trace, kv=kv, **kwargs).steps]


def _prompt_ids(lm: LoadedModel, messages: list[Message], budget: int = 2048) -> list[int]:
    return build_prompt(lm.tokenizer, messages, budget=budget, reserve=0).ids


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@pytest.mark.parametrize(
    "text",
    [
        "Write a short poem about the sea.",
        "Explain in three sentences how a refrigerator works.",
        "List five fruits and their colours.",
    ],
)
def test_greedy_tokens_match_plain_generate(fast_lm: LoadedModel, text: str) -> None:
    messages = [Message("system", "You are a helpful assistant."), Message("user", text)]
    ids = _prompt_ids(fast_lm, messages)
    with torch.inference_mode():
        plain = fast_lm.model.generate(
            torch.tensor([ids]),
            max_new_tokens=48,
            do_sample=False,
            pad_token_id=fast_lm.tokenizer.eos_token_id,
        )[0, len(ids) :].tolist()
    ours = _reply(fast_lm, messages, None, settings=SamplingSettings(temperature=0, max_new_tokens=48))
    assert ours == plain


def test_lean_logits_match_the_model(fast_lm: LoadedModel, two_turn: list[Message]) -> None:
    ids = _prompt_ids(fast_lm, two_turn)
    lean = lean_model(fast_lm.model)
    kv = SessionKV()
    with torch.inference_mode():
        want = fast_lm.model(torch.tensor([ids])).logits[0, -1]  # (vocab,)
        kv.prepare(lean, ids, len(ids) + 1)
        got = kv.forward(lean, ids)
    torch.testing.assert_close(got, want, atol=2e-3, rtol=1e-4)
    assert kv.ids == ids


def test_capture_is_the_same_with_and_without_reuse(fast_lm: LoadedModel, two_turn: list[Message]) -> None:
    kv = SessionKV()
    messages = list(two_turn)
    first = _reply(fast_lm, messages, kv)
    messages += [Message("assistant", fast_lm.tokenizer.decode(first, skip_special_tokens=True))]
    messages += [Message("user", "And of Spain?")]
    ids = _prompt_ids(fast_lm, messages)
    prompt = build_prompt(fast_lm.tokenizer, messages, budget=2048)
    reused = generate(fast_lm, new_trace(fast_lm, prompt.ids, prompt.spans, GREEDY), kv=kv)
    assert kv.reused == _common(ids, _prompt_ids(fast_lm, two_turn) + first[:-1]) > len(prompt.ids) // 2
    fresh = generate(fast_lm, new_trace(fast_lm, prompt.ids, prompt.spans, GREEDY))
    assert [s.token_id for s in reused.steps] == [s.token_id for s in fresh.steps]
    for a, b in zip(reused.steps, fresh.steps, strict=True):
        assert a.top_ids[:10] == b.top_ids[:10]
        torch.testing.assert_close(
            torch.tensor(a.top_logits), torch.tensor(b.top_logits), atol=2e-3, rtol=1e-4
        )


def test_six_turns_reuse_each_previous_turn(fast_lm: LoadedModel) -> None:
    """Every follow-up reads only its new tokens, and each reply equals the no-cache reply."""
    kv = SessionKV()
    messages = [Message("system", "You are a helpful assistant.")]
    settings = SamplingSettings(temperature=0, max_new_tokens=12)
    before: list[int] = []
    for question in ["Name a colour.", "Name a fruit.", "Name an animal.", "Name a city.", "Name a tree."]:
        messages.append(Message("user", question))
        ids = _prompt_ids(fast_lm, messages)
        with_kv = _reply(fast_lm, messages, kv, settings=settings)
        assert kv.reused == min(_common(before, ids), len(ids) - 1)
        assert with_kv == _reply(fast_lm, messages, None, settings=settings)
        # the cache now holds the prompt and every reply token it was fed (not the last one)
        assert kv.ids == ids + with_kv[:-1]
        before = kv.ids
        messages.append(Message("assistant", fast_lm.tokenizer.decode(with_kv, skip_special_tokens=True)))
    assert kv.reused > len(before) // 2


def _conversation() -> list[Message]:
    return [
        Message("system", "You are a helpful assistant."),
        Message("user", "What is the capital of France?"),
        Message("assistant", "The capital of France is Paris."),
        Message("user", "And of Italy?"),
        Message("assistant", "The capital of Italy is Rome."),
        Message("user", "And of Germany?"),
    ]


def _warm(lm: LoadedModel, messages: list[Message]) -> SessionKV:
    kv = SessionKV()
    _reply(lm, messages, kv)
    return kv


def _check_change(lm: LoadedModel, kv: SessionKV, messages: list[Message], budget: int = 2048) -> int:
    """After a change, the cache is cut to the unchanged prefix and the reply equals a fresh one."""
    ids = _prompt_ids(lm, messages, budget)
    expected = min(_common(kv.ids, ids), len(ids) - 1)
    got = _reply(lm, messages, kv, budget=budget)
    assert kv.reused == expected
    assert got == _reply(lm, messages, None, budget=budget)
    assert kv.ids[: len(ids)] == ids
    return expected


def test_edit_of_an_earlier_message_invalidates_from_there(fast_lm: LoadedModel) -> None:
    messages = _conversation()
    kv = _warm(fast_lm, messages)
    messages[3] = Message("user", "And what about Japan?")
    edit_at = _common(_prompt_ids(fast_lm, _conversation()), _prompt_ids(fast_lm, messages))
    assert _check_change(fast_lm, kv, messages) == edit_at


def test_regenerate_reuses_the_whole_prompt(fast_lm: LoadedModel) -> None:
    messages = _conversation()
    kv = _warm(fast_lm, messages)
    ids = _prompt_ids(fast_lm, messages)
    sampled = SamplingSettings(temperature=0.9, top_k=50, top_p=0.95, max_new_tokens=16, seed=7)
    got = _reply(fast_lm, messages, kv, settings=sampled)  # a regenerate with another seed
    assert kv.reused == len(ids) - 1
    assert got == _reply(fast_lm, messages, None, settings=sampled)


def test_branch_with_forced_tokens(fast_lm: LoadedModel) -> None:
    messages = _conversation()
    kv = _warm(fast_lm, messages)
    forced = fast_lm.tokenizer.encode("Actually, I think", add_special_tokens=False)
    got = _reply(fast_lm, messages, kv, forced=forced)
    assert got[: len(forced)] == forced
    assert kv.reused == len(_prompt_ids(fast_lm, messages)) - 1
    assert got == _reply(fast_lm, messages, None, forced=forced)
    assert _check_change(fast_lm, kv, messages) == len(_prompt_ids(fast_lm, messages)) - 1


def test_system_prompt_change_drops_nearly_everything(fast_lm: LoadedModel) -> None:
    messages = _conversation()
    kv = _warm(fast_lm, messages)
    messages[0] = Message("system", "You are a pirate. Answer like one.")
    assert _check_change(fast_lm, kv, messages) < 8  # only "<|im_start|>system\n" can be kept


def test_context_trim_drops_the_cache_after_the_system_prompt(fast_lm: LoadedModel) -> None:
    messages = _conversation()
    kv = _warm(fast_lm, messages)
    full = len(_prompt_ids(fast_lm, messages))
    budget = full - 5  # too small for all three turns: the oldest is left out
    trimmed = build_prompt(fast_lm.tokenizer, messages, budget=budget)
    assert trimmed.dropped_turns == 1
    system_end = next(s.end for s in trimmed.spans if s.role != "system" or s.kind == "footer")
    assert _check_change(fast_lm, kv, messages, budget=budget) <= system_end + 3


def test_cache_is_bounded_and_a_too_long_reply_still_works(fast_lm: LoadedModel, two_turn) -> None:
    kv = SessionKV(max_tokens=64)  # smaller than prompt + reply: stream() uses a fresh cache
    got = _reply(fast_lm, two_turn, kv)
    assert got == _reply(fast_lm, two_turn, None)
    assert kv.capacity == 0
