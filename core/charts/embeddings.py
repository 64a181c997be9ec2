"""Altair charts for the embeddings page: similarity heatmaps, 2D maps, ranked bars.

DataFrames in (from core.explain.embeddings), charts out. Every mark carries a tooltip with
the exact value; the token map carries a point selection named TOKEN_SELECTION.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

TOKEN_SELECTION = "token"  # the scatter's point selection; the page reads event.selection[...]
ROLE_COLOURS = {"system": "#64748b", "user": "#2563eb", "assistant": "#16a34a"}
SIMILARITY_SCALE = alt.Scale(scheme="blueorange", domain=[-1, 1], domainMid=0)
# subtle: Streamlit sizes charts with autosize "fit" unless the spec says otherwise, so long
# axis labels eat into the plot and a heatmap of whole messages collapses to a sliver. "fit-x"
# fits only the width to the container (labels included) and keeps the height the rows need.
FIT_X = alt.AutoSizeParams(type="fit-x", contains="padding")  # stretch the width, keep the height


def similarity_heatmap(
    frame: pd.DataFrame, title: str, highlight: int | None = None, cell: int = 14
) -> alt.Chart | alt.LayerChart:
    """A cosine-similarity heatmap from similarity_frame's long form.

    Axes keep the sequence order (by `row`/`col` position). highlight: a position whose row
    and column are outlined while the rest fades, so a token picked on the map stands out.
    """
    order = frame.drop_duplicates("row").sort_values("row")["row_label"].tolist()
    n = len(order)
    in_cross = (alt.datum.row == highlight) | (alt.datum.col == highlight)
    opacity = (
        alt.condition(in_cross, alt.value(1.0), alt.value(0.3)) if highlight is not None else alt.value(1.0)
    )
    font = 10 if cell < 16 else 11  # 10 px still fits a 12 px row; 9 px was hard to read projected
    base = alt.Chart(frame, title=title).encode(
        x=alt.X(
            "col_label:N",
            sort=order,
            title=None,
            # upright labels, each one line wide; where the columns are too narrow for all of them
            # (a phone), "greedy" keeps every label that does not touch the one before
            axis=alt.Axis(labelAngle=-90, labelLimit=90, labelOverlap="greedy", labelFontSize=font),
        ),
        y=alt.Y(
            "row_label:N",
            sort=order,
            title=None,
            axis=alt.Axis(labelLimit=140, labelOverlap=False, labelFontSize=font),
        ),
    )
    cells = base.mark_rect().encode(
        color=alt.Color(
            "similarity:Q",
            scale=SIMILARITY_SCALE,
            title="cosine",
            legend=alt.Legend(orient="top", direction="horizontal", gradientLength=160),
        ),
        opacity=opacity,
        tooltip=[
            alt.Tooltip("row_label:N", title="row"),
            alt.Tooltip("col_label:N", title="column"),
            alt.Tooltip("similarity:Q", title="cosine similarity", format=".4f"),
        ],
    )
    # the container's width (a fixed one ran past a phone's screen), the rows' own height
    size = {"width": "container", "height": max(160, cell * n), "autosize": FIT_X}
    if highlight is None:
        return cells.properties(**size)
    outline = base.mark_rect(fill=None, stroke="#e11d48", strokeWidth=1.2).transform_filter(in_cross)
    return (cells + outline).properties(**size)


def token_scatter(frame: pd.DataFrame, explained: tuple[float, float]) -> alt.LayerChart:
    """A 2D PCA map of tokens with text labels; clicking a point selects its position.

    frame: token_map's columns (position, token, x, y). The clicked point turns red in the
    browser itself: the spec never depends on the selection, so a click cannot re-draw the
    chart and reset its own selection.
    """
    pick = alt.selection_point(name=TOKEN_SELECTION, fields=["position"], on="click", clear="dblclick")
    base = alt.Chart(frame).encode(
        x=alt.X("x:Q", title=f"PC1 ({explained[0]:.0%} of the variance)", axis=alt.Axis(labels=False)),
        y=alt.Y("y:Q", title=f"PC2 ({explained[1]:.0%} of the variance)", axis=alt.Axis(labels=False)),
        tooltip=[alt.Tooltip("token:N"), alt.Tooltip("position:Q")],
    )
    colour = alt.condition(pick, alt.value("#e11d48"), alt.value("#2563eb"), empty=False)
    points = base.mark_circle(size=70).encode(color=colour, opacity=alt.value(0.85)).add_params(pick)
    labels = base.mark_text(align="left", dx=6, dy=-4, fontSize=11, color="#334155").encode(text="token:N")
    return (points + labels).properties(height=420, title="The message's tokens, projected to 2D (PCA)")


def neighbour_bars(frame: pd.DataFrame, title: str) -> alt.Chart:
    """Horizontal bars of nearest_to_vector's result, best first."""
    order = frame["token"].tolist()
    return (
        alt.Chart(frame, title=title)
        .mark_bar()
        .encode(
            x=alt.X("similarity:Q", title="cosine similarity", scale=alt.Scale(domain=[0, 1])),
            y=alt.Y("token:N", sort=order, title=None, axis=alt.Axis(labelOverlap=False)),
            tooltip=[
                alt.Tooltip("rank:Q"),
                alt.Tooltip("token:N"),
                alt.Tooltip("token_id:Q", title="token id"),
                alt.Tooltip("similarity:Q", format=".4f"),
            ],
        )
        .properties(height=max(120, 22 * len(frame)), autosize=FIT_X)
    )


def message_scatter(frame: pd.DataFrame, explained: tuple[float, float]) -> alt.Chart:
    """The conversation's messages (or sentences) on a 2D PCA map, coloured by role.

    Each point is labelled with its number only ("5", or "1.2" for a sentence): whole labels
    overlapped where messages sit close and ran off the plot. The text is in the tooltip.
    """
    frame = frame.assign(tag=frame["label"].str.split(" ").str[0])
    base = alt.Chart(frame).encode(
        x=alt.X("x:Q", title=f"PC1 ({explained[0]:.0%} of the variance)", axis=alt.Axis(labels=False)),
        y=alt.Y("y:Q", title=f"PC2 ({explained[1]:.0%} of the variance)", axis=alt.Axis(labels=False)),
        tooltip=[
            alt.Tooltip("role:N"),
            alt.Tooltip("text:N"),
            alt.Tooltip("message_index:Q", title="message"),
        ],
    )
    roles = list(ROLE_COLOURS)
    points = base.mark_circle(size=110).encode(
        color=alt.Color("role:N", scale=alt.Scale(domain=roles, range=[ROLE_COLOURS[r] for r in roles]))
    )
    labels = base.mark_text(align="left", dx=7, dy=-5, fontSize=12, color="#334155").encode(text="tag:N")
    return (points + labels).properties(height=420, title="The conversation on a 2D map (PCA)")


def ranking_bars(frame: pd.DataFrame, title: str) -> alt.Chart:
    """reply_about's ranking as bars coloured by role."""
    order = frame["label"].tolist()
    roles = list(ROLE_COLOURS)
    return (
        alt.Chart(frame, title=title)
        .mark_bar()
        .encode(
            x=alt.X(
                "similarity:Q", title="cosine similarity to the reply", scale=alt.Scale(domain=[-0.2, 1])
            ),
            y=alt.Y("label:N", sort=order, title=None, axis=alt.Axis(labelLimit=320, labelOverlap=False)),
            color=alt.Color("role:N", scale=alt.Scale(domain=roles, range=[ROLE_COLOURS[r] for r in roles])),
            tooltip=[
                alt.Tooltip("rank:Q"),
                alt.Tooltip("role:N"),
                alt.Tooltip("text:N"),
                alt.Tooltip("similarity:Q", format=".4f"),
            ],
        )
        .properties(height=max(120, 24 * len(frame)), autosize=FIT_X)
    )
