"""Altair charts for the attention page: the model view, one head's heatmap, the turn bars.

DataFrames in (from core.explain.attention), charts out. Every mark has a tooltip with the
exact weight. The model view carries a point selection named HEAD_SELECTION (fields layer,
head) that the page reads to open a head.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

from core.explain.attention import CATEGORIES

HEAD_SELECTION = "head_pick"
# subtle: Streamlit defaults to autosize "fit", which squeezes the plot so that the axis labels
# fit inside width x height; a heatmap with long token labels then collapses to a line.
# "pad" keeps width x height for the cells and adds the labels around them.
PAD = alt.AutoSizeParams(type="pad", contains="padding")
PLOT_WIDTH = 540  # px for a heatmap's cells, so labels and legend fit beside the explanation column
WEIGHT_SCALE = alt.Scale(scheme="blues", domain=[0, 1])
CATEGORY_COLOURS = ["#64748b", "#a78bfa", "#2563eb", "#cbd5e1", "#16a34a"]  # same order as CATEGORIES
# a step row is labelled "41 ·is → ·Canberra": the attention of ·is, which chose ·Canberra
QUERY_TITLE = "query: the token looking (→ the token it chose)"


def model_view(frame: pd.DataFrame, chosen: tuple[int, int] | None = None, cell: int = 4) -> alt.Chart:
    """Every head as a tiny heatmap in one chart: layers down, heads across.

    subtle: 270 faceted sub-charts are slow to lay out in the browser, so the thumbnails are
    drawn as one grid with a one-cell gap between heads; x = head * (k + 1) + k_block.
    Colour is `relative` (each head scaled to its own largest share) so that every head's
    pattern is visible; the tooltip gives the exact share. Labels number layers and heads from 1;
    the selection carries the 0-based indices.
    """
    k = int(frame["k_block"].max()) + 1
    n_layers, n_heads = int(frame["layer"].max()) + 1, int(frame["head"].max()) + 1
    data = frame.assign(
        x=frame["head"] * (k + 1) + frame["k_block"],
        y=frame["layer"] * (k + 1) + frame["q_block"],
        layer_no=frame["layer"] + 1,
        head_no=frame["head"] + 1,
    )
    pick = alt.selection_point(name=HEAD_SELECTION, fields=["layer", "head"], on="click", clear=False)
    x_axis = alt.Axis(
        values=[h * (k + 1) + k // 2 for h in range(n_heads)],
        labelExpr=f"'head ' + (floor(datum.value / {k + 1}) + 1)",
        ticks=False,
        domain=False,
        grid=False,
        orient="top",
    )
    y_axis = alt.Axis(
        values=[layer * (k + 1) + k // 2 for layer in range(n_layers)],
        labelExpr=f"'layer ' + (floor(datum.value / {k + 1}) + 1)",
        ticks=False,
        domain=False,
        grid=False,
    )
    stroke = (
        alt.condition(
            (alt.datum.layer == chosen[0]) & (alt.datum.head == chosen[1]),
            alt.value("#e11d48"),
            alt.value(None),
        )
        if chosen is not None
        else alt.value(None)
    )
    return (
        alt.Chart(data)
        .mark_rect()
        .encode(
            # Explicit domains keep the empty gap columns and rows (an ordinal scale drops them).
            x=alt.X("x:O", axis=x_axis, title=None, scale=alt.Scale(domain=list(range(n_heads * (k + 1))))),
            y=alt.Y("y:O", axis=y_axis, title=None, scale=alt.Scale(domain=list(range(n_layers * (k + 1))))),
            color=alt.Color("relative:Q", scale=WEIGHT_SCALE, legend=None),
            stroke=stroke,
            opacity=alt.condition(pick, alt.value(1.0), alt.value(0.55)),
            tooltip=[
                alt.Tooltip("layer_no:Q", title="layer"),
                alt.Tooltip("head_no:Q", title="head"),
                alt.Tooltip("q_block:Q", title="query block"),
                alt.Tooltip("k_block:Q", title="key block"),
                alt.Tooltip("share:Q", title="share of attention", format=".4f"),
            ],
        )
        .add_params(pick)
        .properties(width=n_heads * (k + 1) * cell * 2, height=n_layers * (k + 1) * cell, autosize=PAD)
    )


def head_heatmap(frame: pd.DataFrame, title: str, cell: int = 14) -> alt.Chart:
    """One head: rows are query tokens, columns key tokens (head_frame's long form)."""
    rows = frame.drop_duplicates("query").sort_values("query")["query_token"].tolist()
    cols = frame.drop_duplicates("key").sort_values("key")["key_token"].tolist()
    return (
        alt.Chart(frame, title=title)
        .mark_rect()
        .encode(
            x=alt.X(
                "key_token:N",
                sort=cols,
                title="key: the token looked at",
                axis=_token_axis(-70, every_label=_fit(len(cols), cell) >= 11 * len(cols)),
            ),
            y=alt.Y("query_token:N", sort=rows, title=QUERY_TITLE, axis=_token_axis(0)),
            color=alt.Color("weight:Q", scale=WEIGHT_SCALE, title="weight"),
            tooltip=[
                alt.Tooltip("query_token:N", title="query"),
                alt.Tooltip("key_token:N", title="key"),
                alt.Tooltip("weight:Q", format=".4f"),
            ],
        )
        .properties(width=_fit(len(cols), cell), height=max(60, cell * len(rows)), autosize=PAD)
    )


def group_heatmap(frame: pd.DataFrame, title: str, cell: int = 12) -> alt.Chart:
    """One head with key columns summed per conversation turn (head_frame_by_group)."""
    rows = frame.drop_duplicates("query").sort_values("query")["query_token"].tolist()
    cols = frame.drop_duplicates("group").sort_values("group")["group_name"].tolist()
    return (
        alt.Chart(frame, title=title)
        .mark_rect()
        .encode(
            x=alt.X("group_name:N", sort=cols, title="key: summed per turn", axis=_token_axis(-30, 220)),
            y=alt.Y("query_token:N", sort=rows, title=QUERY_TITLE, axis=_token_axis(0)),
            color=alt.Color("weight:Q", scale=WEIGHT_SCALE, title="weight"),
            tooltip=[
                alt.Tooltip("query_token:N", title="query"),
                alt.Tooltip("group_name:N", title="turn"),
                alt.Tooltip("weight:Q", format=".4f"),
            ],
        )
        .properties(width=_fit(len(cols), 70), height=max(60, cell * len(rows)), autosize=PAD)
    )


def turn_bars(frame: pd.DataFrame, title: str) -> alt.Chart:
    """A stacked bar per step: how the attention that chose its token splits across the conversation."""
    tokens = frame.drop_duplicates("step").sort_values("step")["token"].tolist()
    return (
        alt.Chart(frame, title=title)
        .mark_bar()
        .encode(
            x=alt.X(
                "token:N",
                sort=tokens,
                title="step: the token looking → the reply token it chose",
                axis=_token_axis(-70, every_label=_fit(len(tokens), 16) >= 11 * len(tokens)),
            ),
            y=alt.Y("share:Q", stack="normalize", title="share of attention", axis=alt.Axis(format="%")),
            color=alt.Color(
                "category:N",
                scale=alt.Scale(domain=CATEGORIES, range=CATEGORY_COLOURS),
                title="went to",
                sort=CATEGORIES,
            ),
            order=alt.Order("order:Q"),
            tooltip=[
                alt.Tooltip("token:N", title="step"),
                alt.Tooltip("category:N", title="went to"),
                alt.Tooltip("share:Q", format=".2%"),
            ],
        )
        .properties(width=_fit(len(tokens), 16), height=260, autosize=PAD)
    )


def _fit(n: int, cell: int) -> int:
    """Width for n columns: cell px each, shrunk (down to 6 px) to fit PLOT_WIDTH."""
    return n * max(6, min(cell, PLOT_WIDTH // max(n, 1)))


def _token_axis(angle: int, limit: int = 110, every_label: bool = True) -> alt.Axis:
    """every_label: draw every label (cells are wide enough) instead of Vega thinning them."""
    return alt.Axis(labelAngle=angle, labelLimit=limit, labelFontSize=10, labelOverlap=not every_label)
