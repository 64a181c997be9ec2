"""The embeddings page driven by AppTest, on a real greedy reply."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import APP

PAGE = "pages/embeddings.py"


@pytest.fixture(scope="module")
def chatted(lm) -> AppTest:
    """The app after two real greedy turns on the chat page, switched to the embeddings page."""
    at = AppTest.from_file(APP, default_timeout=180)
    at.session_state["chat.temperature"] = 0.0
    at.session_state["chat.max_new_tokens"] = 20
    at.run()
    for text in ("What is the capital of France?", "Is a kitten a young cat?"):
        at.chat_input[0].set_value(text).run()
        assert not at.exception
    at.switch_page(PAGE).run()
    assert not at.exception
    return at


def charts(at: AppTest) -> list[tuple[dict, pd.DataFrame]]:
    """Every Altair chart on the page: (its Vega-Lite spec, its first dataset as a DataFrame)."""
    found = []
    for chart in at.get("vega_lite_chart"):
        spec = json.loads(chart.proto.spec)
        data = chart.proto.datasets[0].data.data
        found.append((spec, pa.ipc.open_stream(data).read_all().to_pandas()))
    return found


def title_of(spec: dict) -> str:
    title = spec.get("title", "")
    return title if isinstance(title, str) else title.get("text", "")


def test_token_view_shows_the_reply_heatmap_and_map(lm, chatted):
    at = chatted
    reply = at.session_state["chat.messages"][-1].trace
    n = len(reply.steps)
    found = charts(at)
    heat = [(s, d) for s, d in found if "Cosine similarity of the input embeddings" in title_of(s)]
    assert len(heat) == 1
    spec, data = heat[0]
    assert len(data) == n * n  # one cell per token pair of the reply
    assert spec["mark"]["type"] == "rect"
    assert {t["field"] for t in spec["encoding"]["tooltip"]} >= {"row_label", "col_label", "similarity"}
    assert any("variance" in c.value for c in at.caption)
    scatter = [s for s, _ in found if "layer" in s]  # the layered map
    assert scatter and any(p.get("name") == "token" for p in scatter[0].get("params", []))


def test_layer_slider_switches_to_hidden_states(chatted):
    at = chatted
    at.slider(key="embeddings.layer").set_value(15).run()
    assert not at.exception
    titles = [title_of(s) for s, _ in charts(at)]
    assert "Cosine similarity of the hidden states after layer 15" in titles
    at.slider(key="embeddings.layer").set_value(0).run()


def test_a_user_message_can_be_shown(lm, chatted):
    at = chatted
    box = at.selectbox(key="embeddings.part")
    user = next(i for i in box.options if "Is a kitten" in i)
    box.set_value(box.options.index(user) if isinstance(box.value, int) else user).run()
    assert not at.exception
    (spec, data), *_ = [(s, d) for s, d in charts(at) if title_of(s).startswith("Cosine")]
    n = len(lm.tokenizer.encode("Is a kitten a young cat?", add_special_tokens=False))
    assert len(data) == n * n
    box.set_value(box.options.index(box.options[-1]) if isinstance(box.value, int) else box.options[-1])


def test_nearest_words_and_analogy_views(chatted):
    at = chatted
    at.button_group(key="embeddings.view").set_value("Nearest words").run()
    assert not at.exception
    at.text_input(key="embeddings.word").input("king").run()
    (_, data), *_ = charts(at)
    assert data.iloc[0]["token"] == "·king" and data.iloc[0]["similarity"] == pytest.approx(1, abs=1e-5)
    at.button_group(key="embeddings.view").set_value("Analogy").run()
    assert not at.exception
    (_, data), *_ = charts(at)
    assert "·queen" in data["token"].head(3).tolist()
    assert any("imperfectly" in c.value for c in at.caption)


def test_conversation_view_ranks_earlier_messages(chatted):
    at = chatted
    at.button_group(key="embeddings.view").set_value("Conversation").run()
    assert not at.exception
    found = {title_of(s): d for s, d in charts(at)}
    messages = [m for m in at.session_state["chat.messages"] if m.content.strip()]
    assert len(found["Cosine similarity of every message"]) == len(messages) ** 2
    scatter = found["The conversation on a 2D map (PCA)"]
    assert set(scatter["role"]) == {"system", "user", "assistant"}
    ranking = found["Earlier messages, closest to the reply first"]
    assert ranking.iloc[0]["text"] == "Is a kitten a young cat?"  # the question the reply answers
    at.radio(key="embeddings.by").set_value("sentence").run()
    assert not at.exception
    assert "Cosine similarity of every sentence" in {title_of(s) for s, _ in charts(at)}


def test_conversation_view_starts_at_the_reply_picked_on_the_other_views(chatted):
    at = chatted
    history = at.session_state["chat.messages"]
    first = next(i for i, m in enumerate(history) if m.role == "assistant")
    at.button_group(key="embeddings.view").set_value("Token similarity").run()
    at.selectbox(key="embeddings.reply").set_value(history[first].trace.trace_id).run()
    at.button_group(key="embeddings.view").set_value("Conversation").run()
    assert not at.exception
    about = at.selectbox(key="embeddings.about")
    assert about.value == first and about.format_func(first).startswith("Reply 1: ")
    ranking = {title_of(s): d for s, d in charts(at)}["Earlier messages, closest to the reply first"]
    assert ranking.iloc[0]["text"] == "What is the capital of France?"


def test_free_text_view_orders_cat_kitten_stocks(chatted):
    at = chatted
    at.button_group(key="embeddings.view").set_value("Free text").run()
    assert not at.exception
    (_, data), *_ = charts(at)
    sim = {(r.row, r.col): r.similarity for r in data.itertuples()}
    assert sim[(1, 2)] > sim[(1, 3)] and sim[(1, 2)] > sim[(2, 3)]
    at.text_area(key="embeddings.free").input("only one line").run()
    assert not at.exception and any("at least two" in i.value for i in at.info)


def test_without_a_conversation_the_page_explains_what_to_do(lm):
    at = AppTest.from_file(APP, default_timeout=180).run()
    at.switch_page(PAGE).run()
    assert not at.exception
    assert any("no reply" in i.value for i in at.info)
