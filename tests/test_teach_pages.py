"""Issue 18 on the pages, driven by AppTest with the real model: readable step headers, the
logit-lens note, "Reply N" on the tokenization page, vocabulary centring by default on the
embeddings page, the help page's colours, line breaks in the chat, and the explain panel's
closest calls and loop link."""

from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from core.conversation import Message
from core.explain.candidates import STEP_COLUMNS, find_repetition
from core.explain.lens import MIDDLE_LAYERS_NOTE
from core.settings import DEFAULT_SYSTEM_PROMPT
from tests.conftest import APP, OCEAN


@pytest.fixture(scope="module")
def chatted(lm) -> AppTest:
    """The app after two real greedy turns."""
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state["chat.temperature"] = 0.0
    at.session_state["chat.max_new_tokens"] = 12
    at.run()
    for text in ("What is the capital of France?", "And of Italy?"):
        at.chat_input[0].set_value(text).run()
        assert not at.exception
    return at


def test_the_steps_table_has_readable_headers_with_help(chatted):
    at = chatted
    at.switch_page("pages/candidates.py").run()
    assert not at.exception
    (table,) = [d for d in at.dataframe if "sample_prob" in json.loads(d.proto.columns)]
    config = json.loads(table.proto.columns)
    for column, (header, tip, fmt) in STEP_COLUMNS.items():
        assert config[column]["label"] == header and config[column]["help"] == tip
        if fmt:
            assert config[column]["type_config"]["format"] == fmt
    assert config["top50_mass"]["label"] == "top-50 share"


def test_the_logit_lens_says_why_middle_layers_show_punctuation(chatted):
    at = chatted
    at.switch_page("pages/candidates.py").run()
    at.toggle(key="candidates.lens").set_value(True).run()
    assert not at.exception
    assert any(MIDDLE_LAYERS_NOTE in c.value for c in at.caption)
    at.toggle(key="candidates.lens").set_value(False).run()


def test_the_tokenization_page_names_replies_as_every_page_does(chatted):
    at = chatted
    at.switch_page("pages/tokens.py").run()
    at.radio(key="tokens.source").set_value("A message").run()
    assert not at.exception
    labels = at.selectbox(key="tokens.message").options  # as the picker shows them
    assert any(label.startswith("Reply 2: ") for label in labels)
    assert any(label.startswith("Reply 1: ") for label in labels)
    assert not any("· assistant" in label for label in labels)
    assert any(label.startswith("1 · user") for label in labels)


def test_embeddings_centre_on_the_vocabulary_mean_by_default(chatted):
    at = chatted
    at.switch_page("pages/embeddings.py").run()
    assert not at.exception
    assert at.radio(key="embeddings.centre").value == "vocabulary"
    titles = [json.loads(c.proto.spec).get("title", "") for c in at.get("vega_lite_chart")]
    assert "Cosine similarity of the input embeddings, centred on the vocabulary's mean" in titles
    assert any("every vector in the vocabulary leans the same way" in c.value for c in at.caption)
    at.radio(key="embeddings.centre").set_value("none").run()
    titles = [json.loads(c.proto.spec).get("title", "") for c in at.get("vega_lite_chart")]
    assert "Cosine similarity of the input embeddings" in titles
    at.slider(key="embeddings.layer").set_value(3).run()  # hidden states: no vocabulary mean to offer
    assert not at.exception
    assert at.radio(key="embeddings.centre_hidden").options == [
        "the mean of the tokens shown",
        "nothing (raw cosine)",
    ]
    at.slider(key="embeddings.layer").set_value(0).run()
    caption = next(c.value for c in at.caption if "cosine similarity" in c.value)
    assert "orange where they point the same way" in caption and "blue" in caption


def test_the_help_page_gives_the_heatmap_colours_right(lm):
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("pages/about.py").run()
    assert not at.exception
    text = " ".join(m.value for m in at.markdown)
    assert "**orange** (two vectors point the same way" in text
    assert "attention or similarity" not in text
    assert "let less likely tokens through" not in text


def test_a_multi_line_reply_shows_its_line_breaks_in_the_chat(lm):
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["chat.messages"] = [
        Message("system", DEFAULT_SYSTEM_PROMPT),
        Message("user", "A poem?"),
        Message("assistant", "The ocean is wide,\nThe sky is blue,\n\nThe end."),
    ]
    at.run()
    assert not at.exception
    bodies = [m.value for m in at.markdown]
    assert "The ocean is wide,  \nThe sky is blue,\n\nThe end." in bodies


@pytest.fixture()
def looping_chat(ocean_poem) -> list[Message]:
    history = [Message("system", DEFAULT_SYSTEM_PROMPT), Message("user", OCEAN)]
    return [*history, Message("assistant", ocean_poem.text, trace=ocean_poem)]


def test_the_explain_panel_lists_closest_calls_and_links_the_loop(looping_chat):
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["chat.messages"] = looping_chat
    at.run()
    reply = looping_chat[-1]
    at.toggle(key=f"explain.toggle.{reply.id}").set_value(True).run()
    assert not at.exception
    loop = find_repetition(reply.trace)
    links = [e.proto for e in at.get("page_link")]
    closest = [p for p in links if p.label.startswith("Step ")]
    assert len(closest) == 3 and all(" over “" in p.label for p in closest)
    (looped,) = [p for p in links if p.label.startswith("A loop starts at step")]
    assert f"step {loop.start + 1}" in looped.label and f"step={loop.start}" in looped.query_string
    (copies,) = [p for p in links if p.label.startswith("See the attention that copies")]
    assert "attention" in copies.page and f"step={loop.start}" in copies.query_string
    assert "view=token" in copies.query_string and f"step {loop.start + 1}" in copies.label
    html = "".join(e.proto.body for e in at.get("html"))
    assert "goes round in a loop" in html
