"""Layout on a laptop and a phone (issue 18, findings 8 and 9), without a browser.

The charts take their container's width instead of a fixed one (the what-if chart was 976 px
in a phone's 348 px column), the head view labels keys upright so that Vega thins them only
where they cannot fit, the model view outlines the chosen head once, and tap-to-open chips and
the sidebar script build their HTML from escaped pieces only.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd
import pytest

from core.charts import attention as att_charts
from core.charts.candidates import lens_heatmap, what_if_side_by_side
from core.charts.embeddings import similarity_heatmap
from core.explain.attention import CATEGORIES
from core.html import PAGE_STYLE, Chip, chips, close_sidebar_script
from tests.hostile_text import parse_html

HOSTILE = [
    "<script>window.__pwned=1</script>",
    '" onmouseover="window.__pwned=1" x="',
    "</details></summary></div><b>x</b>",
    "<img src=x onerror=alert(1)>",
]


def _spec(chart: alt.TopLevelMixin) -> dict:
    with alt.data_transformers.disable_max_rows():
        return chart.to_dict()


# -- the what-if chart: one chart at the container's width -------------------------------------
def _what_if_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "rank": [1, 2, 3, 21],
            "token_id": [11, 12, 13, 14],
            "token": ["·Paris", "·Lyon", "·Nice", "·at"],
            "chosen": [False, False, False, True],
            "original": [0.6, 0.2, 0.1, 0.009],
            "what_if": [0.8, 0.15, 0.04, 0.006],
        }
    )


def test_the_what_if_chart_is_one_chart_at_the_containers_width():
    spec = _spec(what_if_side_by_side(_what_if_frame(), "T=0.7, top-p=0.95"))
    assert "hconcat" not in spec and "concat" not in spec  # two fixed-width charts were 976 px
    assert spec["width"] == "container"
    assert spec["encoding"]["yOffset"]["field"] == "which"  # a pair of bars under each label
    data = pd.DataFrame(next(iter(spec["datasets"].values())))
    assert len(data) == 2 * 4  # original and what-if for every candidate
    chosen = data[data["chosen"]]
    assert set(chosen["series"]) == {"chosen token, original", "chosen token, what if"}  # red, as elsewhere
    assert set(data["which"]) == {"original (T=1, no filters)", "what if T=0.7, top-p=0.95"}


def test_the_logit_lens_grid_takes_the_containers_width():
    table = pd.DataFrame(
        {
            "layer": [0, 0, 1, 1],
            "rank": [1, 2, 1, 2],
            "token": ["a", "b", "c", "d"],
            "prob": [0.5, 0.2, 0.6, 0.1],
        }
    ).assign(is_chosen=[True, False, False, False])
    spec = _spec(lens_heatmap(table))
    assert spec["width"] == "container"  # 130 px per rank made 650 px
    assert spec["autosize"]["type"] == "fit-x"


# -- the attention charts ------------------------------------------------------------------------
def _head_frame(n_rows: int, n_cols: int) -> pd.DataFrame:
    q, k = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    return pd.DataFrame(
        {
            "query": q.ravel(),
            "key": k.ravel(),
            "query_token": [f"{i} ·q{i} → ·q{i + 1}" for i in q.ravel()],
            "key_token": [f"{j} ·k{j}" for j in k.ravel()],
            "weight": 1.0 / n_cols,
        }
    )


@pytest.mark.parametrize("n_cols", [12, 96])
def test_the_head_view_fits_its_container_and_labels_keys_upright(n_cols):
    spec = _spec(att_charts.head_heatmap(_head_frame(20, n_cols), "Layer 17, head 3"))
    assert spec["width"] == "container" and spec["autosize"]["type"] == "fit-x"
    assert spec["height"] == 14 * 20  # rows keep their height; only the width follows the screen
    axis = spec["encoding"]["x"]["axis"]
    # upright labels are one line wide: every key is labelled once columns are ~12 px, and below
    # that only the labels that would touch are dropped (slanted at -70 degrees, only every 8th stayed)
    assert axis["labelAngle"] == -90 and axis["labelOverlap"] == "greedy"
    assert spec["encoding"]["y"]["axis"]["labelOverlap"] is False  # every row is labelled
    assert {t["field"] for t in spec["encoding"]["tooltip"]} >= {"query_token", "key_token", "weight"}


def _turn_frame(steps: int) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"step": s, "token": f"{s + 1} ·a → ·b{s}", "category": c, "share": 0.2, "order": i}
            for s in range(steps)
            for i, c in enumerate(CATEGORIES)
        ]
    )


def test_the_turn_bars_fit_their_container_with_the_legend_above():
    spec = _spec(att_charts.turn_bars(_turn_frame(120), "Where the attention went"))
    assert spec["width"] == "container"  # 120 bars at 6 px overflowed into the explanation column
    assert spec["encoding"]["color"]["legend"]["orient"] == "top"  # not over the text beside it
    assert spec["encoding"]["x"]["axis"]["labelOverlap"] == "greedy"


def test_the_group_heatmap_fits_its_container():
    frame = pd.DataFrame(
        {"query": [0, 0], "query_token": ["0 ·a", "0 ·a"], "group": [0, 1], "group_name": ["System", "Reply"]}
    ).assign(weight=[0.3, 0.7])
    spec = _spec(att_charts.group_heatmap(frame, "Layer 1, head 1"))
    assert spec["width"] == "container" and spec["autosize"]["type"] == "fit-x"


def _thumbs(n_layers: int = 30, n_heads: int = 9, k: int = 6) -> pd.DataFrame:
    la, he, qb, kb = np.meshgrid(
        np.arange(n_layers), np.arange(n_heads), np.arange(k), np.arange(k), indexing="ij"
    )
    return pd.DataFrame(
        {"layer": la.ravel(), "head": he.ravel(), "q_block": qb.ravel(), "k_block": kb.ravel()}
    ).assign(share=0.1, relative=0.5)


def test_the_model_view_outlines_the_chosen_head_once():
    k, layer, head = 6, 16, 2
    spec = _spec(att_charts.model_view(_thumbs(k=k), chosen=(layer, head)))
    cells, outline = spec["layer"]
    assert spec["width"] == "container"  # a phone's column, not 560 px
    assert "stroke" not in cells["encoding"]  # a red stroke on each of its 36 cells hid the thumbnail
    assert outline["mark"]["fill"] is None and outline["mark"]["stroke"] == att_charts.CHOSEN
    box = next(d for name, d in spec["datasets"].items() if len(d) == 1)[0]
    step = k + 1
    # around the head's k x k blocks, inside the one-block gap: it covers none of them, nor a neighbour
    assert head * step - 1 < box["x"] < head * step and head * step + k < box["x2"] < head * step + k + 1
    assert layer * step - 1 < box["y"] < layer * step and layer * step + k < box["y2"] < layer * step + k + 1
    # the outline shares the cells' axes, so every layer keeps its label
    assert outline["encoding"]["y"]["axis"] == cells["encoding"]["y"]["axis"]
    assert len(cells["encoding"]["y"]["axis"]["values"]) == 30
    assert cells["encoding"]["y"]["axis"]["labelOverlap"] is False


def test_the_model_view_without_a_chosen_head_has_no_outline():
    spec = _spec(att_charts.model_view(_thumbs(), chosen=None))
    assert len(spec["layer"]) == 1


# -- the embeddings heatmap ----------------------------------------------------------------------
def test_the_similarity_heatmap_takes_the_containers_width():
    n = 40
    r, c = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    frame = pd.DataFrame(
        {
            "row": r.ravel(),
            "col": c.ravel(),
            "row_label": [f"{i} ·t{i}" for i in r.ravel()],
            "col_label": [f"{j} ·t{j}" for j in c.ravel()],
            "similarity": 0.5,
        }
    )
    for highlight in (None, 3):
        spec = _spec(similarity_heatmap(frame, "Cosine", highlight, cell=12))
        assert spec["width"] == "container" and spec["height"] == 12 * n  # 527 px ran past a phone


# -- tap instead of hover, and the sidebar script --------------------------------------------------
@pytest.mark.parametrize("hostile", HOSTILE)
def test_tap_chips_hold_the_hover_text_escaped(hostile):
    markup = chips(
        [
            Chip(hostile, title=f"step 1: {hostile}\n·Paris 60.0%", background="hsl(120, 75%, 80%)"),
            Chip("·link", title="a link", href="?step=2"),
            Chip("·plain"),
        ],
        tap=True,
    )
    parsed = parse_html(markup)
    assert {t for t, _ in parsed.tags} <= {"style", "div", "span", "details", "summary", "a"}, parsed.tags
    for tag, attrs in parsed.tags:
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
    (details,) = [attrs for tag, attrs in parsed.tags if tag == "details"]  # the link stays a link
    assert details["title"] == f"step 1: {hostile}\n·Paris 60.0%"
    text = "".join(parsed.text)
    assert text.count(hostile) == 2  # the chip and its tap box, both as literal text
    assert "·Paris 60.0%" in text
    assert 'class="gb-pop"' in markup and 'class="gb-chips gb-tap"' in markup


def test_chips_without_tap_are_unchanged():
    assert "<details" not in chips([Chip("·a", title="x")])


def test_the_sidebar_script_carries_no_outside_text():
    assert 'data-visit="3"' in close_sidebar_script(3)
    assert close_sidebar_script(3) != close_sidebar_script(
        4
    )  # Streamlit reruns a script only when it changes
    with pytest.raises(ValueError):
        close_sidebar_script("3<script>")  # type: ignore[arg-type]
    parsed = parse_html(close_sidebar_script(7))
    assert [t for t, _ in parsed.tags] == ["script"]
    assert "stSidebarCollapseButton" in close_sidebar_script(7) and "768" in close_sidebar_script(7)


def test_the_page_style_is_a_stylesheet_alone():
    parsed = parse_html(PAGE_STYLE)
    assert [t for t, _ in parsed.tags] == ["style"]  # st.html puts a lone stylesheet where it takes no room
    assert "stPageLink-NavLink" in PAGE_STYLE and "white-space:normal" in PAGE_STYLE


def test_the_turn_bars_leave_their_long_title_to_the_page():
    assert "title" not in _spec(att_charts.turn_bars(_turn_frame(3)))  # Vega cut it with "…" on a phone
