"""Export and import: round trip, and a bad file is refused with a clear message."""

from __future__ import annotations

import copy
import json

import pytest

from core.conversation import Message
from core.export import (
    ImportRejected,
    conversation_json,
    explanation_json,
    load_conversation,
    message_to_dict,
)


@pytest.fixture()
def conversation(greedy_trace, two_turn):
    reply = Message("assistant", greedy_trace.text, trace=greedy_trace)
    alt_trace = copy.deepcopy(greedy_trace)
    alt_trace.trace_id = "alt0001"
    reply.alternatives = [Message("assistant", alt_trace.text, trace=alt_trace)]
    return [*copy.deepcopy(two_turn), reply]


def test_round_trip(lm, conversation):
    text = conversation_json(conversation, lm.name)
    loaded = load_conversation(text.encode(), lm.name, lm.vocab_size)
    assert [message_to_dict(m) for m in loaded] == [message_to_dict(m) for m in conversation]
    assert loaded[-1].trace.steps[0].top_ids == conversation[-1].trace.steps[0].top_ids


def test_explanation_holds_trace_and_views(lm, greedy_trace):
    data = json.loads(
        explanation_json(lm.tokenizer, Message("assistant", greedy_trace.text, trace=greedy_trace))
    )
    assert data["trace"]["steps"][0]["token_id"] == greedy_trace.steps[0].token_id
    views = data["views"]
    assert len(views["steps"]) == len(greedy_trace.steps) == len(views["candidates"])
    assert views["summary"].startswith("The model was over 90% sure")
    assert len(views["uncertain_steps"]) == 3


def _mutate(lm, conversation, change) -> bytes:
    data = json.loads(conversation_json(conversation, lm.name))
    change(data)
    return json.dumps(data).encode()


CASES = {
    "not json": (lambda d: None, b"{not json", "not valid JSON"),
    "other model": (lambda d: d.update(model_name="gpt-9"), None, "made with 'gpt-9'"),
    "token id outside vocab": (
        lambda d: d["messages"][-1]["trace"]["steps"][0].update(token_id=10**9),
        None,
        "outside this model's vocabulary",
    ),
    "probability above 1": (
        lambda d: d["messages"][-1]["trace"]["steps"][1].update(prob=7.0),
        None,
        "not a probability",
    ),
    "bad role": (lambda d: d["messages"][1].update(role="root"), None, "unknown role"),
    "duplicate id": (lambda d: d["messages"][2].update(id=d["messages"][1]["id"]), None, "repeated id"),
    "trace on a user message": (
        lambda d: d["messages"][1].update(trace=d["messages"][-1]["trace"]),
        None,
        "carries a trace",
    ),
    "wrong format": (lambda d: d.update(format="something/2"), None, "Not a Glassbox conversation"),
    "missing steps": (lambda d: d["messages"][-1]["trace"].pop("steps"), None, "missing or has a malformed"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_files_are_refused_clearly(lm, conversation, case):
    change, raw, message = CASES[case]
    data = raw if raw is not None else _mutate(lm, conversation, change)
    with pytest.raises(ImportRejected, match=message):
        load_conversation(data, lm.name, lm.vocab_size)


def test_oversized_file_is_refused_before_parsing(lm):
    with pytest.raises(ImportRejected, match="MB"):
        load_conversation(b" " * (21 * 1024 * 1024), lm.name, lm.vocab_size)


def test_an_inflated_trace_longer_than_the_model_reads_is_refused_with_the_numbers(lm, conversation):
    """Issue 19: a 0.2 MB file whose prompt held 40,021 ids was accepted, and its attention
    pass then held the model for minutes. Prompt + reply beyond the context length is refused."""
    data = json.loads(conversation_json(conversation, lm.name))
    trace = data["messages"][-1]["trace"]
    n_steps = len(trace["steps"])
    trace["prompt_ids"] = (trace["prompt_ids"] * 1000)[:40_021]
    trace["spans"] = [{"start": 0, "end": 40_021, "role": "user", "message_index": 1, "kind": "content"}]
    raw = json.dumps(data).encode()
    assert len(raw) < 1_000_000
    with pytest.raises(ImportRejected) as err:
        load_conversation(raw, lm.name, lm.vocab_size, lm.context_length)
    text = str(err.value)
    assert f"{40_021:,}" in text and f"{40_021 + n_steps:,}" in text and f"{lm.context_length:,}" in text
    # at the limit exactly it loads
    trace["prompt_ids"] = trace["prompt_ids"][: lm.context_length - n_steps]
    trace["spans"][0]["end"] = lm.context_length - n_steps
    loaded = load_conversation(json.dumps(data).encode(), lm.name, lm.vocab_size, lm.context_length)
    assert len(loaded[-1].trace.full_ids) == lm.context_length
