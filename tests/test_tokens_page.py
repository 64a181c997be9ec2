"""The tokenization page driven by streamlit's AppTest, with the real model and a real trace."""

from __future__ import annotations

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from core.conversation import Message
from core.explain.tokenization import trace_table
from core.html import esc
from tests.conftest import APP, make_trace

PAGE = "pages/tokens.py"


@pytest.fixture(scope="module")
def conversation(lm) -> list[Message]:
    """A real chat: a user message with emoji, code and a typed <|im_end|>, and the real reply."""
    messages = [
        Message("system", "You are a helpful assistant."),
        Message("user", "Fix this 😀👍🏽: `print('<b>hi</b>')` <|im_end|> please"),
    ]
    reply = make_trace(lm, messages)
    messages.append(Message("assistant", reply.text, trace=reply))
    return messages


def _open(conversation: list[Message], **state) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.session_state["chat.messages"] = conversation
    for key, value in state.items():
        at.session_state[key] = value
    at.switch_page(PAGE)
    return at.run()


def _chips_html(at: AppTest) -> str:
    return "".join(h.proto.body for h in at.get("html"))


def test_chat_message_shows_the_ids_the_model_read(conversation, lm):
    at = _open(conversation, **{"tokens.message": 1})
    assert not at.exception
    table = at.dataframe[0].value
    trace = conversation[2].trace
    expected = trace_table(lm.tokenizer, trace, include_reply=False)
    expected = expected[expected["message"] == 1]
    # the ids shown are the prompt's ids for that message, header and footer included
    assert table["id"].tolist() == expected["id"].tolist()
    assert table["id"].tolist() == [trace.prompt_ids[p] for p in table["position"]]
    html = _chips_html(at)
    assert "gb-chip special" in html and "gb-chip bytes" in html  # template badges, emoji fragments
    # token text is escaped: the typed <b> and <|im_end|> never reach the page as markup
    assert "<b>" not in html and "</b>" not in html and "&lt;" in html
    assert all(esc(t) in html for t in table["text"])
    assert any("byte for byte" in s.value for s in at.success)
    content = table[table["part"] == "content"]
    assert not content["special"].any()  # the typed <|im_end|> is plain characters
    assert [b.label for b in at.get("download_button")] == ["Download the table (CSV)"]


def test_free_text_round_trip_bpe_and_vocabulary(conversation, lm):
    text = "naïve café\t\t東京 مرحبا 👨‍👩‍👧"
    at = _open(conversation, **{"tokens.source": "Free text", "tokens.free_text": text})
    assert not at.exception
    table = at.dataframe[0].value
    assert isinstance(table, pd.DataFrame) and (table["part"] == "free text").all()
    assert b"".join(bytes.fromhex(h) for h in table["bytes"]) == text.encode("utf-8")
    assert "byte for byte" in at.success[0].value
    assert int(at.metric[0].value.replace(",", "")) == len(table)

    at.radio(key="tokens.view").set_value("BPE merges").run()
    assert not at.exception
    assert "3 token(s): the merges reproduce" in " ".join(s.value for s in at.success)  # un+belie+vable
    at.radio(key="tokens.view").set_value("Another tokenizer").run()
    assert "WordPiece: " in " ".join(m.value for m in at.markdown)
    at.radio(key="tokens.view").set_value("Vocabulary").run()
    assert not at.exception
    assert "Typed in a message: **one token (id" in " ".join(m.value for m in at.markdown)


def test_counts_and_budget_view(conversation):
    at = _open(conversation, **{"tokens.message": 1, "tokens.view": "Counts and context budget"})
    assert not at.exception
    counts = at.dataframe[0].value.set_index("message")
    assert counts.loc["1", "template tokens"] == 5
    whole = at.dataframe[1].value.set_index("message")  # the whole conversation, reply included
    trace = conversation[2].trace
    assert whole.loc["all", "tokens"] == len(trace.prompt_ids) + len(trace.steps)
    assert list(whole.index[:-1]) == ["0", "1", "2"]
    assert any("kept free for the reply" in m.value for m in at.markdown)


def test_whole_prompt_of_a_reply(conversation, lm):
    at = _open(conversation, **{"tokens.source": "The whole prompt of a reply"})
    assert not at.exception
    trace = conversation[2].trace
    table = at.dataframe[0].value
    assert table["id"].tolist() == trace.prompt_ids + trace.output_ids
    assert table["special"].sum() >= 5  # im_start/im_end of system, user, and the reply header


def test_the_metrics_and_the_counts_table_count_alike(lm):
    """The reply's closing <|im_end|> is a special token: template in both places, never text."""
    conversation = [
        Message("system", "You are a helpful assistant."),
        Message("user", "What is the capital of France?"),
    ]
    reply = make_trace(lm, conversation)
    conversation.append(Message("assistant", reply.text, trace=reply))
    at = _open(conversation, **{"tokens.source": "The whole prompt of a reply"})
    assert at.dataframe[0].value["special"].iloc[-1]  # the reply ends with <|im_end|>
    metrics = {m.label: int(float(m.value.replace(",", ""))) for m in at.metric[:3]}
    at.radio(key="tokens.view").set_value("Counts and context budget").run()
    assert not at.exception
    whole = at.dataframe[1].value.set_index("message").loc["all"]
    assert metrics["Tokens"] == whole["tokens"]
    assert metrics["Template / special tokens"] == whole["template tokens"]
    assert metrics["Characters of text"] == whole["characters"]
    assert whole["characters"] == len(conversation[1].content) + len(conversation[2].content) + len(
        conversation[0].content
    )


def test_vocabulary_lookup_of_a_special_token(conversation):
    state = {"tokens.view": "Vocabulary", "tokens.lookup_id": 2, "tokens.lookup_text": "<|im_end|>"}
    at = _open(conversation, **state)
    assert not at.exception
    assert "gb-chip special" in _chips_html(at)  # id 2 is drawn as a badge
    assert "Typed in a message: **7 tokens" in " ".join(m.value for m in at.markdown)
    assert any("cannot end their turn early" in c.value for c in at.caption)


def test_a_link_to_a_reply_opens_its_whole_prompt(conversation):
    at = AppTest.from_file(APP, default_timeout=180)
    at.session_state["chat.messages"] = conversation
    at.switch_page(PAGE)
    at.query_params["reply"] = conversation[2].trace.trace_id
    at.run()
    assert not at.exception
    assert at.radio(key="tokens.source").value == "The whole prompt of a reply"


def test_empty_conversation_points_to_the_chat(lm):
    at = AppTest.from_file(APP, default_timeout=180)
    at.switch_page(PAGE)
    at.run()
    assert not at.exception
    assert any("no messages yet" in i.value for i in at.info)
