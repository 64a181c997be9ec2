"""Altair heatmaps for the encoder-versus-decoder page: the square beside the triangle.

DataFrames in (core.explain.encoder_decoder.attention_frame), charts out. Both charts share
one colour scale (shared_top), every cell has a tooltip with the exact weight, and each chart
takes its container's width, so two columns on a laptop and one on a 390 px phone both fit.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

# Stretch the plot to the container's width with the axis labels inside it; keep the height.
FIT_X = alt.AutoSizeParams(type="fit-x", contains="padding")
MASKED_COLOUR = "#e5e7eb"  # a decoder's hidden cells: light grey, told apart from a weight of ~0
MIN_HEIGHT = 280  # px: a short sentence still draws a squarish block, not a flat strip
ROW_LABEL_PX = 11  # a row at least this tall gets every y label; shorter rows let Vega thin them


def shared_top(*frames: pd.DataFrame) -> float:
    """The colour scale's top: the largest weight in any of the frames (at least a tiny positive)."""
    return max([1e-6, *(float(f["weight"].max()) for f in frames if len(f))])


def row_height(n_tokens: int) -> int:
    """Pixels per query row: roomy for a short sentence, tighter for a long one."""
    return 20 if n_tokens <= 16 else 16 if n_tokens <= 40 else 12 if n_tokens <= 80 else 8


def attention_heatmap(frame: pd.DataFrame, title: str, subtitle: str = "", *, top: float) -> alt.Chart:
    """One model's (T, T) attention: rows are the tokens looking, columns the tokens looked at.

    Colour uses a square-root scale from 0 to `top` (pass the same top to both charts), so the
    small weights beside a dominant first token stay visible; the tooltip gives the exact number.
    Cells the decoder's causal mask hides are grey, with "no: a later token" in the tooltip.
    The subtitle goes on its own line, so a long title is not cut on a phone.
    """
    order = frame.drop_duplicates("query").sort_values("query")["query_token"].tolist()
    n = len(order)
    step = row_height(n)
    data = frame.assign(
        seen=frame["masked"].map({True: "no: a later token (masked)", False: "yes"}),
    )
    colour = alt.condition(
        "datum.masked",
        alt.value(MASKED_COLOUR),
        alt.Color(
            "weight:Q",
            scale=alt.Scale(scheme="blues", type="sqrt", domain=[0, top], clamp=True),
            title="weight",
            legend=alt.Legend(orient="bottom", gradientLength=160, titleOrient="left", format=".2f"),
        ),
    )
    return (
        alt.Chart(data, title=alt.TitleParams(title, subtitle=subtitle, anchor="start", fontSize=13))
        .mark_rect()
        .encode(
            x=alt.X(
                "key_token:N",
                sort=order,
                title="key: the token looked at",
                axis=alt.Axis(labelAngle=-90, labelLimit=90, labelFontSize=10, labelOverlap="parity"),
            ),
            y=alt.Y(
                "query_token:N",
                sort=order,
                title="query: the token looking",
                axis=alt.Axis(labelLimit=90, labelFontSize=10, labelOverlap=step < ROW_LABEL_PX),
            ),
            color=colour,
            tooltip=[
                alt.Tooltip("query_token:N", title="query (looking)"),
                alt.Tooltip("key_token:N", title="key (looked at)"),
                alt.Tooltip("weight:Q", title="weight", format=".5f"),
                alt.Tooltip("seen:N", title="can it see this key?"),
            ],
        )
        .properties(width="container", height=max(MIN_HEIGHT, step * n), autosize=FIT_X)
    )


def side_by_side(
    encoder: pd.DataFrame, decoder: pd.DataFrame, titles: tuple[tuple[str, str], tuple[str, str]]
) -> tuple[alt.Chart, alt.Chart]:
    """The encoder's and the decoder's heatmaps on one colour scale: (encoder chart, decoder chart).

    titles: ((title, subtitle) of the encoder's chart, (title, subtitle) of the decoder's).
    """
    top = shared_top(encoder, decoder)
    return attention_heatmap(encoder, *titles[0], top=top), attention_heatmap(decoder, *titles[1], top=top)
