"""The attention page driven by AppTest, after a real two-turn greedy chat."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pytest
from streamlit.testing.v1 import AppTest

from core.charts.attention import HEAD_SELECTION
from core.explain import attention as att
from tests.conftest import APP

PAGE = "pages/attention.py"


@pytest.fixture(scope="module")
def chatted(lm) -> AppTest:
    """The app after two real greedy turns on the chat page, switched to the attention page."""
    at = AppTest.from_file(APP, default_timeout=240)
    at.session_state["chat.temperature"] = 0.0
    at.session_state["chat.max_new_tokens"] = 16
    at.run()
    for text in ("What is the capital of France?", "And of Italy?"):
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


def reply_trace(at: AppTest):
    return at.session_state["chat.messages"][-1].trace


def test_the_page_reads_the_chats_kv_cache_and_leaves_it_as_it_was(lm, chatted):
    at = chatted
    trace, kv = reply_trace(at), at.session_state["chat.kv"]
    assert kv.ids == trace.full_ids[:-1]  # as generation left it
    assert att.overview(lm, trace).method == "kv"  # the cached overview the page opened with
    assert att.is_cached(trace, lm.n_layers // 2)


def test_model_view_shows_every_head_with_a_click_selection(lm, chatted):
    at = chatted
    assert any("Attention" in t.value for t in at.title)
    assert at.segmented_control(key="attention.view").value == "Model view"
    (spec, data), *_ = charts(at)
    assert data.groupby(["layer", "head"]).ngroups == lm.n_layers * lm.n_heads
    assert len(data) <= 10_000
    cells, outline = spec["layer"]  # the thumbnails, then one outline around the head shown
    assert any(p.get("name") == HEAD_SELECTION for p in spec.get("params", []) + cells.get("params", []))
    assert {t["field"] for t in cells["encoding"]["tooltip"]} >= {"layer_no", "head_no", "share"}
    assert "stroke" not in cells["encoding"]  # a red stroke on every cell hid the chosen thumbnail
    assert outline["mark"]["stroke"] and outline["mark"]["fill"] is None
    assert spec["width"] == "container"  # a phone's column, not 560 px
    assert (data["layer_no"] == data["layer"] + 1).all()  # shown from 1; the selection keeps the index


def test_a_click_on_the_model_view_opens_that_head(chatted):
    at = chatted
    at.session_state["attention.model_view"] = {"selection": {HEAD_SELECTION: [{"layer": 3, "head": 5}]}}
    at.run()
    assert not at.exception
    assert at.selectbox(key="attention.layer").value == 3
    assert at.selectbox(key="attention.head").value == 5
    assert at.segmented_control(key="attention.view").value == "Head view"


def test_head_view_is_a_heatmap_of_the_rows_that_chose_the_reply(lm, chatted):
    at = chatted
    at.segmented_control(key="attention.view").set_value("Head view").run()
    at.selectbox(key="attention.layer").set_value(3).run()
    at.selectbox(key="attention.head").set_value(5).run()
    assert not at.exception
    trace = reply_trace(at)
    T, P = len(trace.full_ids), len(trace.prompt_ids)
    (spec, data), *_ = charts(at)
    assert spec["title"] == "Layer 4, head 6"  # indices 3 and 5, numbered from 1 on the page
    assert spec["mark"]["type"] == "rect"
    assert sorted(data["query"].unique()) == list(range(P - 1, T - 1))  # the rows that chose reply tokens
    shown = data.drop_duplicates("query").set_index("query")["query_token"]
    labels = att.overview(lm, trace).labels
    assert shown[P - 1] == f"{P - 1} {labels[P - 1]} → {labels[P]}"  # looking token, then the one it chose
    assert data["key"].max() == T - 2  # the last row's own position
    assert (data.loc[data["key"] > data["query"], "weight"] == 0).all()
    assert data.groupby("query")["weight"].sum().round(5).eq(1.0).all()
    assert "weight" in {t["field"] for t in spec["encoding"]["tooltip"]}
    at.radio(key="attention.rows").set_value("Whole sequence").run()
    at.radio(key="attention.cols").set_value("Grouped by turn").run()
    assert not at.exception
    (spec, data), *_ = charts(at)
    assert data["query"].nunique() == min(T, 48)
    assert "This reply" in set(data["group_name"])
    assert data.groupby("query")["weight"].sum().round(5).eq(1.0).all()


def test_per_token_view_colours_the_context(chatted):
    at = chatted
    at.segmented_control(key="attention.view").set_value("Per-token view").run()
    assert not at.exception
    at.select_slider(key="attention.step").set_value(2).run()
    for mode in ("head", "layer", "all"):
        at.radio(key="attention.mode").set_value(mode).run()
        assert not at.exception
        page = "".join(h.proto.body for h in at.get("html"))
        assert "gb-chip chosen" in page and "rgba(37, 99, 235" in page
        assert len(at.dataframe) == 1


def test_turn_view_and_head_summary(lm, chatted):
    at = chatted
    at.segmented_control(key="attention.view").set_value("Turn view").run()
    assert not at.exception
    (spec, data), *_ = charts(at)
    assert data.groupby("step")["share"].sum().round(5).eq(1.0).all()
    assert "Current question" in set(data["category"])
    at.segmented_control(key="attention.view").set_value("Head summary").run()
    assert not at.exception
    table = at.dataframe[0].value
    assert len(table) == lm.n_layers * lm.n_heads
    assert {"entropy_bits", "first_token", "previous_token", "current_question"} <= set(table.columns)


def test_switching_to_a_shorter_reply_keeps_working(chatted):
    at = chatted
    at.segmented_control(key="attention.view").set_value("Head view").run()
    at.radio(key="attention.rows").set_value("Whole sequence").run()
    at.radio(key="attention.cols").set_value("Tokens").run()
    assert not at.exception
    (slider,) = [s for s in at.slider if s.key.startswith("attention.row_window")]
    slider.set_value(0).run()
    first = at.session_state["chat.messages"][2].trace
    at.selectbox(key="attention.reply").set_value(first.trace_id).run()  # the first, shorter reply
    assert not at.exception
    (spec, data), *_ = charts(at)
    assert data["key"].max() < len(first.full_ids)
    at.segmented_control(key="attention.view").set_value("Per-token view").run()
    assert not at.exception


def test_without_a_reply_the_page_says_what_to_do():
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page(PAGE).run()
    assert not at.exception
    assert any("no reply to explain" in i.value for i in at.info)


def _param(at: AppTest, name: str):
    value = at.query_params.get(name)
    return value[-1] if isinstance(value, list) else value


def test_a_link_naming_a_step_opens_that_token_once(chatted):
    """A link with ?reply=&step= and no view opens the Per-token view at that step, once."""
    at = chatted
    trace = reply_trace(at)
    at.query_params.clear()
    at.query_params["reply"] = trace.trace_id
    at.query_params["step"] = "1"
    at.run()
    assert not at.exception
    assert at.segmented_control(key="attention.view").value == "Per-token view"
    assert at.select_slider(key="attention.step").value == 1
    assert _param(at, "step") == "1" and _param(at, "view") == "token"  # the address bar names the view
    at.segmented_control(key="attention.view").set_value("Turn view").run()
    assert at.segmented_control(key="attention.view").value == "Turn view"  # the reader's choice stands
    assert _param(at, "view") == "turns"


def test_the_url_names_layer_head_view_step_and_mode(lm, chatted):
    at = chatted
    trace = reply_trace(at)
    at.query_params.clear()
    for name, value in {
        "reply": trace.trace_id,
        "layer": "2",
        "head": "7",
        "view": "token",
        "step": "3",
    }.items():
        at.query_params[name] = value
    at.query_params["mode"] = "layer"
    at.query_params["keep"] = "me"  # a parameter the page does not know (the conversation id `c`)
    at.run()
    assert not at.exception
    assert at.selectbox(key="attention.layer").value == 2  # 0-based in the URL, "3" on the page
    assert at.selectbox(key="attention.head").value == 7
    assert at.segmented_control(key="attention.view").value == "Per-token view"
    assert at.select_slider(key="attention.step").value == 3
    assert at.radio(key="attention.mode").value == "layer"
    assert _param(at, "keep") == "me"
    (code,) = [c for c in at.get("code")]
    url = code.proto.code_text
    for part in (
        f"reply={trace.trace_id}",
        "layer=2",
        "head=7",
        "view=token",
        "step=3",
        "mode=layer",
        "keep=me",
    ):
        assert part in url
    # out of range or unknown values are ignored, and the page still draws
    at.query_params["layer"] = str(lm.n_layers)
    at.query_params["view"] = "nonsense"
    at.query_params["step"] = "-1"
    at.run()
    assert not at.exception
    assert at.selectbox(key="attention.layer").value == 2
    assert at.segmented_control(key="attention.view").value == "Per-token view"
    assert _param(at, "layer") == "2"  # written back: the address bar shows what the page shows


def test_layer_head_view_and_whose_attention_survive_a_visit_to_another_page(chatted):
    """Streamlit drops the state of a widget a run does not draw, so a visit to another page reset
    them (layer 17 came back as 16); the page keeps copies (pages/common.py restore/remember)."""
    at = chatted
    at.query_params.clear()
    at.run()
    at.segmented_control(key="attention.view").set_value("Turn view").run()
    at.radio(key="attention.scope").set_value("head").run()
    at.segmented_control(key="attention.view").set_value("Per-token view").run()
    at.selectbox(key="attention.layer").set_value(16).run()
    at.selectbox(key="attention.head").set_value(4).run()
    at.radio(key="attention.mode").set_value("layer").run()
    at.select_slider(key="attention.step").set_value(2).run()
    assert not at.exception
    at.switch_page("pages/tokens.py").run()
    assert not at.exception
    at.query_params.clear()  # the sidebar's link names no view: only the kept copies can bring it back
    at.switch_page(PAGE).run()
    assert not at.exception
    assert at.selectbox(key="attention.layer").value == 16
    assert at.selectbox(key="attention.head").value == 4
    assert at.segmented_control(key="attention.view").value == "Per-token view"
    assert at.radio(key="attention.mode").value == "layer"
    assert at.select_slider(key="attention.step").value == 2
    at.segmented_control(key="attention.view").set_value("Turn view").run()
    assert at.radio(key="attention.scope").value == "head"  # kept while another view was shown
