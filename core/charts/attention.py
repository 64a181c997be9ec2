"""Altair charts for the attention page: the model view, one head's heatmap, the turn bars.

DataFrames in (from core.explain.attention), charts out. Every mark has a tooltip with the
exact weight. The model view carries a point selection named HEAD_SELECTION (fields layer,
head) that the page reads to open a head.

Every chart takes its container's width (draw it with st.altair_chart(..., width="stretch")):
a fixed width ran past a phone's 350 px column, and past the explanation column on a laptop.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

from core.explain.attention import CATEGORIES

HEAD_SELECTION = "head_pick"
# subtle: Streamlit's default autosize "fit" squeezes the plot so that the axis labels fit
# inside width x height; a heatmap with long token labels then collapses to a line. "fit-x"
# fits only the width to the container (labels and legend included) and keeps the height
# the cells were given; the labels are added below it.
FIT_WIDTH = alt.AutoSizeParams(type="fit-x", contains="padding")
WEIGHT_SCALE = alt.Scale(scheme="blues", domain=[0, 1])
CATEGORY_COLOURS = ["#64748b", "#a78bfa", "#2563eb", "#cbd5e1", "#16a34a"]  # same order as CATEGORIES
CHOSEN = "#e11d48"  # the outline around the head the page shows
# a step row is labelled "41 ·is → ·Canberra": the attention of ·is, which chose ·Canberra
QUERY_TITLE = "query: the token looking (→ the token it chose)"
# the legend sits above a chart: on a phone a legend at the side takes a third of the width
TOP_LEGEND = alt.Legend(orient="top", direction="horizontal", gradientLength=160)


def model_view(frame: pd.DataFrame, chosen: tuple[int, int] | None = None, cell: int = 4) -> alt.LayerChart:
    """Every head as a tiny heatmap in one chart: layers down, heads across.

    subtle: 270 faceted sub-charts are slow to lay out in the browser, so the thumbnails are
    drawn as one grid with a one-cell gap between heads; block (q, k) of head h in layer l
    spans x in [h * (k + 1) + k_block, +1) and y in [l * (k + 1) + q_block, +1). The axes are
    quantitative so that the grid stretches to any width and the chosen head gets one red
    outline around its square (a stroke on each cell hid the thumbnail under a red grid).
    Colour is `relative` (each head scaled to its own largest share) so that every head's
    pattern is visible; the tooltip gives the exact share. Labels number layers and heads from 1;
    the selection carries the 0-based indices. cell: px per block row.
    """
    k = int(frame["k_block"].max()) + 1
    n_layers, n_heads = int(frame["layer"].max()) + 1, int(frame["head"].max()) + 1
    step = k + 1
    x0 = frame["head"] * step + frame["k_block"]
    y0 = frame["layer"] * step + frame["q_block"]
    data = frame.assign(
        x=x0, x2=x0 + 1, y=y0, y2=y0 + 1, layer_no=frame["layer"] + 1, head_no=frame["head"] + 1
    )
    pick = alt.selection_point(name=HEAD_SELECTION, fields=["layer", "head"], on="click", clear=False)

    def axis(n: int, name: str, **where) -> alt.Axis:
        return alt.Axis(
            values=[i * step + k / 2 for i in range(n)],
            labelExpr=f"'{name} ' + (floor(datum.value / {step}) + 1)",
            ticks=False,
            domain=False,
            grid=False,
            labelOverlap=False,
            **where,
        )

    # the domains end at the last block: the gap after the last head and layer is not drawn
    x_scale = alt.Scale(domain=[0, n_heads * step - 1], nice=False, zero=False)
    y_scale = alt.Scale(domain=[0, n_layers * step - 1], nice=False, zero=False, reverse=True)
    # subtle: layers merge their axes; the outline must declare the very same ones (axis=None
    # there removed the labels, a default axis thinned them to every other layer)
    x_axis, y_axis = axis(n_heads, "head", orient="top", labelAngle=-90), axis(n_layers, "layer")
    cells = (
        alt.Chart(data)
        .mark_rect()
        .encode(
            x=alt.X("x:Q", axis=x_axis, title=None, scale=x_scale),
            x2="x2:Q",
            y=alt.Y("y:Q", axis=y_axis, title=None, scale=y_scale),
            y2="y2:Q",
            color=alt.Color("relative:Q", scale=WEIGHT_SCALE, legend=None),
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
    )
    layers: list[alt.Chart] = [cells]
    if chosen is not None:
        layer, head = chosen
        pad = 0.35  # into the one-block gap around the head, so the outline covers no cell
        box = pd.DataFrame(
            {
                "x": [head * step - pad],
                "x2": [head * step + k + pad],
                "y": [layer * step - pad],
                "y2": [layer * step + k + pad],
            }
        )
        layers.append(
            alt.Chart(box)
            .mark_rect(fill=None, stroke=CHOSEN, strokeWidth=2)
            .encode(
                x=alt.X("x:Q", axis=x_axis, title=None, scale=x_scale),
                x2="x2:Q",
                y=alt.Y("y:Q", axis=y_axis, title=None, scale=y_scale),
                y2="y2:Q",
            )
        )
    return alt.layer(*layers).properties(width="container", height=n_layers * step * cell, autosize=FIT_WIDTH)


def head_heatmap(frame: pd.DataFrame, title: str, cell: int = 14) -> alt.Chart:
    """One head: rows are query tokens, columns key tokens (head_frame's long form).

    cell: px per row. The columns share the container's width; every key is labelled when the
    columns are wide enough for a label, else an evenly spread subset (the tooltip is exact).
    """
    rows = frame.drop_duplicates("query").sort_values("query")["query_token"].tolist()
    cols = frame.drop_duplicates("key").sort_values("key")["key_token"].tolist()
    return (
        alt.Chart(frame, title=title)
        .mark_rect()
        .encode(
            x=alt.X("key_token:N", sort=cols, title="key: the token looked at", axis=_token_axis()),
            y=alt.Y("query_token:N", sort=rows, title=QUERY_TITLE, axis=_row_axis()),
            color=alt.Color("weight:Q", scale=WEIGHT_SCALE, title="weight", legend=TOP_LEGEND),
            tooltip=[
                alt.Tooltip("query_token:N", title="query"),
                alt.Tooltip("key_token:N", title="key"),
                alt.Tooltip("weight:Q", format=".4f"),
            ],
        )
        .properties(width="container", height=max(60, cell * len(rows)), autosize=FIT_WIDTH)
    )


def group_heatmap(frame: pd.DataFrame, title: str, cell: int = 12) -> alt.Chart:
    """One head with key columns summed per conversation turn (head_frame_by_group)."""
    rows = frame.drop_duplicates("query").sort_values("query")["query_token"].tolist()
    cols = frame.drop_duplicates("group").sort_values("group")["group_name"].tolist()
    return (
        alt.Chart(frame, title=title)
        .mark_rect()
        .encode(
            x=alt.X("group_name:N", sort=cols, title="key: summed per turn", axis=_token_axis(limit=160)),
            y=alt.Y("query_token:N", sort=rows, title=QUERY_TITLE, axis=_row_axis()),
            color=alt.Color("weight:Q", scale=WEIGHT_SCALE, title="weight", legend=TOP_LEGEND),
            tooltip=[
                alt.Tooltip("query_token:N", title="query"),
                alt.Tooltip("group_name:N", title="turn"),
                alt.Tooltip("weight:Q", format=".4f"),
            ],
        )
        .properties(width="container", height=max(60, cell * len(rows)), autosize=FIT_WIDTH)
    )


def turn_bars(frame: pd.DataFrame, title: str | None = None) -> alt.Chart:
    """A stacked bar per step: how the attention that chose its token splits across the conversation.

    title: none by default; Vega cuts a title wider than the chart with "…", so the page writes
    a long one above the chart, where it wraps.
    """
    tokens = frame.drop_duplicates("step").sort_values("step")["token"].tolist()
    return (
        alt.Chart(frame, title=title or alt.Undefined)
        .mark_bar()
        .encode(
            x=alt.X(
                "token:N",
                sort=tokens,
                title="step: the token looking → the reply token it chose",
                axis=_token_axis(),
            ),
            y=alt.Y("share:Q", stack="normalize", title="share of attention", axis=alt.Axis(format="%")),
            color=alt.Color(
                "category:N",
                scale=alt.Scale(domain=CATEGORIES, range=CATEGORY_COLOURS),
                title="went to",
                sort=CATEGORIES,
                legend=alt.Legend(orient="top", columns=2, labelLimit=160),  # two columns fit a phone
            ),
            order=alt.Order("order:Q"),
            tooltip=[
                alt.Tooltip("token:N", title="step"),
                alt.Tooltip("category:N", title="went to"),
                alt.Tooltip("share:Q", format=".2%"),
            ],
        )
        .properties(width="container", height=260, autosize=FIT_WIDTH)
    )


def _token_axis(limit: int = 110) -> alt.Axis:
    """A column axis of token labels, written upwards so that each takes one line's width.

    subtle: labels slanted at -70 degrees are each about 30 px wide, so Vega's overlap check
    kept only every 8th of 96 narrow columns; upright, every label shows once the columns are
    about 12 px wide, and below that "greedy" keeps every label that does not touch the one
    before (every 2nd at 6 px).
    """
    return alt.Axis(
        labelAngle=-90, labelLimit=limit, labelFontSize=10, labelOverlap="greedy", labelSeparation=1
    )


def _row_axis() -> alt.Axis:
    """A row axis of token labels: one per row (rows are 12 px or more)."""
    return alt.Axis(labelLimit=110, labelFontSize=10, labelOverlap=False)
