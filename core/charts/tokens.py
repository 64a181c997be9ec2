"""Charts for the tokenization page."""

from __future__ import annotations

import altair as alt
import pandas as pd

STATUS_COLOURS = {
    "kept": "#60a5fa",
    "next to go": "#f59e0b",
    "reply room": "#a7f3d0",
    "free": "#e5e7eb",
}


def budget_bar(segments: pd.DataFrame, budget: int) -> alt.Chart:
    """The context window as one stacked bar: what is in it, room for the reply, and what is free.

    segments: columns segment, tokens, status (budget_usage().segments). Turns already left
    out are not in the window, so they are not drawn; the page lists them.
    """
    data = segments[segments["status"] != "left out"].copy()
    data = data[data["tokens"] > 0].reset_index(drop=True)
    data["order"] = range(len(data))
    data["share"] = data["tokens"] / max(budget, 1)
    return (
        alt.Chart(data)
        .mark_bar(stroke="white", strokeWidth=1)
        .encode(
            x=alt.X(
                "sum(tokens):Q", title=f"tokens (budget {budget:,})", scale=alt.Scale(domain=[0, budget])
            ),
            y=alt.Y("window:N", title=None, axis=None),
            color=alt.Color(
                "status:N",
                scale=alt.Scale(domain=list(STATUS_COLOURS), range=list(STATUS_COLOURS.values())),
                legend=alt.Legend(orient="bottom", title=None),
            ),
            order=alt.Order("order:Q"),
            tooltip=[
                alt.Tooltip("segment:N"),
                alt.Tooltip("tokens:Q", format=","),
                alt.Tooltip("share:Q", format=".1%", title="share of budget"),
                alt.Tooltip("status:N"),
            ],
        )
        .transform_calculate(window="'context window'")
        # subtle: a fixed pixel height is squeezed by Streamlit's "fit" sizing (the axis and
        # legend eat it and the bar vanishes); a band step keeps the bar visible.
        .properties(height=alt.Step(36))
    )


def pieces_per_tokenizer(counts: pd.DataFrame) -> alt.Chart:
    """Horizontal bars: how many tokens each tokenizer needs for the same text.

    counts: columns tokenizer, tokens.
    """
    return (
        alt.Chart(counts)
        .mark_bar()
        .encode(
            x=alt.X("tokens:Q", title="tokens"),
            y=alt.Y("tokenizer:N", title=None, sort=None),
            tooltip=["tokenizer:N", alt.Tooltip("tokens:Q", format=",")],
        )
        .properties(height=alt.Step(28))
    )
