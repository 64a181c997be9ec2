"""core.explain.tokenization: tables from the trace's own ids, spans, counts, budget, lookups."""

from __future__ import annotations

import pytest

from core.conversation import Message, build_prompt, encode_messages
from core.explain import tokenization as tz
from core.html import chips, esc
from core.trace import Trace
from tests.hostile_text import HOSTILE


@pytest.fixture(scope="module")
def tok(lm):
    return lm.tokenizer


def test_trace_table_is_the_prompt_then_the_reply(tok, greedy_trace: Trace):
    table = tz.trace_table(tok, greedy_trace)
    assert table["id"].tolist() == greedy_trace.prompt_ids + greedy_trace.output_ids
    assert table["position"].tolist() == list(range(len(table)))
    for span in greedy_trace.spans:
        rows = table.iloc[span.start : span.end]
        assert set(rows["message"]) == {span.message_index}
        assert set(rows["role"]) == {span.role} and set(rows["part"]) == {span.kind}
    reply = table[table["part"] == tz.REPLY_PART]
    assert reply["id"].tolist() == greedy_trace.output_ids
    assert set(reply["message"]) == {tz.reply_index(greedy_trace)} == {4}
    assert tz.table_text(reply[~reply["special"]]) == greedy_trace.text  # what the chat page showed
    # the template tokens are badges; the typed text never is
    assert set(table.loc[table["special"], "text"]) <= {"<|im_start|>", "<|im_end|>"}
    assert not table.loc[table["part"] == "content", "special"].any()


def test_message_tokens_come_from_the_prompt_that_read_them(tok, two_turn, greedy_trace):
    messages = [*two_turn, Message("assistant", greedy_trace.text, trace=greedy_trace)]
    for index in range(len(two_turn)):
        found = tz.message_tokens(tok, messages, index)
        assert found.trace is greedy_trace and "prompt of reply 2" in found.source
        positions = found.table["position"].tolist()
        assert found.table["id"].tolist() == [greedy_trace.prompt_ids[p] for p in positions]
        assert list(found.table["part"]) == sorted(
            found.table["part"], key=["header", "content", "footer"].index
        )
        assert tz.joined_bytes(tok, found.text_ids) == two_turn[index].content.encode()
    own = tz.message_tokens(tok, messages, 4)  # the newest reply: the ids the model wrote
    assert own.text_ids == greedy_trace.output_ids and "Written by the model" in own.source
    with pytest.raises(IndexError):
        tz.message_tokens(tok, messages, 9)


def test_spans_round_trip_every_hostile_message(tok):
    messages = [Message("system", HOSTILE["markup"])]
    for name in sorted(HOSTILE):
        messages += [Message("user", HOSTILE[name]), Message("assistant", HOSTILE[name][::-1])]
    prompt = encode_messages(tok, messages)
    table = tz.token_table(tok, prompt.ids, prompt.spans)
    for index, message in enumerate(messages):
        content = table[(table["message"] == index) & (table["part"] == "content")]
        assert tz.joined_bytes(tok, content["id"].tolist()) == message.content.encode("utf-8"), index
        assert not content["special"].any()
    # the bytes column is the same thing in hex, so a downloaded table round-trips too
    assert b"".join(bytes.fromhex(h) for h in table["bytes"]) == tz.joined_bytes(tok, prompt.ids)
    assert tz.message_tokens(tok, messages, 3).trace is None  # not read by any reply yet


def test_partial_bytes_and_chips_are_escaped(tok):
    table = tz.text_table(tok, "<b>x</b> 😀")
    assert table["partial"].any() and not table["special"].any()
    html = chips(tz.chips_for(table))
    assert "<b>" not in html and all(esc(t) in html for t in table["text"])
    assert html.count("gb-chip bytes") == int(table["partial"].sum())


def test_counts_per_message_and_in_total(tok, greedy_trace):
    table = tz.trace_table(tok, greedy_trace)
    counts = tz.counts(table).set_index("message")
    assert counts.loc["all", "tokens"] == len(table)
    assert counts.drop("all")["tokens"].sum() == len(table)
    assert counts.loc["1", "characters"] == len("What is the capital of France?")
    assert counts.loc["1", "template tokens"] == 5  # <|im_start|> user \n ... <|im_end|> \n
    text_tokens = counts.loc["1", "text tokens"]
    assert counts.loc["1", "chars per token"] == round(len("What is the capital of France?") / text_tokens, 2)


def test_budget_usage_names_the_turn_that_goes_next(tok, two_turn):
    long = [*two_turn, Message("assistant", "Rome. " * 40), Message("user", "And of Spain?")]
    roomy = tz.budget_usage(tok, long, budget=2048, reserve=256)
    assert roomy.used == len(build_prompt(tok, long, 2048, 256).ids)
    assert roomy.dropped_turns == 0 and roomy.next_to_go == "turn 1"
    assert roomy.segments["tokens"].sum() == 2048  # the window: kept + reply room + free
    assert roomy.room == 2048 - 256 - roomy.used

    tight = tz.budget_usage(tok, long, budget=roomy.used + 100 - 20, reserve=100)
    status = dict(zip(tight.segments["segment"], tight.segments["status"], strict=True))
    assert tight.dropped_turns == 1 and status["turn 1"] == "left out"
    assert status["turn 2"] == "next to go" and tight.next_to_go == "turn 2"
    assert tight.notices and "oldest 1 turn was left out" in tight.notices[0]
    kept = tight.segments[tight.segments["status"] != "left out"]
    assert kept["tokens"].sum() == tight.budget


def test_vocabulary_lookups(tok):
    entry = tz.lookup_id(tok, 2)
    assert entry["text"] == "<|im_end|>" and entry["special"]
    with pytest.raises(ValueError, match="Token ids run from 0"):
        tz.lookup_id(tok, len(tok))
    paris = tz.lookup_text(tok, "Paris")
    assert paris.single and len(paris.spaced_ids) == 1 and paris.spaced_ids != paris.ids
    typed = tz.lookup_text(tok, "<|im_end|>")
    assert not typed.single and typed.vocab_id == 2  # in the vocabulary, yet never from typed text


def test_wordpiece_differs_from_byte_level_bpe(tok):
    wp = tz.load_wordpiece_tokenizer()
    table = tz.wordpiece_table(wp, "Tokenizers differ 😀")
    assert table["text"].iloc[0] == "[CLS]" and table["text"].iloc[-1] == "[SEP]"
    assert any(t.startswith("##") for t in table["text"])
    assert table["unknown"].any()  # no byte fallback: the emoji is [UNK]
    assert len(table) != len(tz.text_table(tok, "Tokenizers differ 😀"))


def test_budget_bar_draws_only_the_window(tok, two_turn):
    from core.charts.tokens import budget_bar

    usage = tz.budget_usage(
        tok, [*two_turn, Message("assistant", "Rome."), Message("user", "Why?")], 2048, 64
    )
    spec = budget_bar(usage.segments, usage.budget).to_dict()
    (rows,) = spec["datasets"].values()
    assert sum(r["tokens"] for r in rows) == 2048 and "left out" not in {r["status"] for r in rows}
    # regression: without a y band and a step height Streamlit squeezed the bar to nothing
    assert "y" in spec["encoding"] and spec["height"] == {"step": 36}


def test_a_message_left_out_of_every_prompt_says_so(tok, two_turn):
    from core.settings import SamplingSettings

    messages = [*two_turn[:2], Message("assistant", "Paris. " * 60), two_turn[3]]
    prompt = build_prompt(tok, messages, budget=60)
    assert prompt.dropped_turns == 1
    trace = Trace(prompt.ids, prompt.spans, SamplingSettings(), "SmolLM2")  # the prompt as the model got it
    messages.append(Message("assistant", "", trace=trace))
    found = tz.message_tokens(tok, messages, 1)
    assert found.trace is None and "Left out of every later prompt" in found.source
    assert tz.joined_bytes(tok, found.text_ids) == messages[1].content.encode()
    assert tz.message_tokens(tok, messages, 3).trace is trace  # the newest question was read
