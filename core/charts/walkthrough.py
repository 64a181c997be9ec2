"""Charts for the "From prompt to reply" walkthrough. DataFrame in, altair chart out."""

from __future__ import annotations

import altair as alt
import pandas as pd


def embedding_strip(cells: pd.DataFrame) -> alt.Chart:
    """An embedding vector as a grid of coloured cells (blue negative, red positive).

    cells: index, row, col, value (core.explain.walkthrough.embedding_cells).
    """
    limit = float(cells["value"].abs().max()) or 1.0
    return (
        alt.Chart(cells)
        .mark_rect()
        .encode(
            x=alt.X("col:O", axis=None),
            y=alt.Y("row:O", axis=None),
            color=alt.Color(
                "value:Q",
                scale=alt.Scale(scheme="redblue", domain=[-limit, limit], reverse=True),
                legend=alt.Legend(title="value", orient="right"),
            ),
            tooltip=[alt.Tooltip("index:Q", title="dimension"), alt.Tooltip("value:Q", format=".4f")],
        )
        .properties(height=110)
    )


def layer_trajectory(layers: pd.DataFrame) -> alt.LayerChart:
    """The last position's vector through the stack: norm (bars) and cosine to the final layer (line).

    layers: core.explain.walkthrough.layer_table.
    """
    tooltip = [
        alt.Tooltip("stage:N"),
        alt.Tooltip("norm:Q", format=".1f"),
        alt.Tooltip("cosine_to_final:Q", title="cosine to final", format=".3f"),
        alt.Tooltip("lens_token:N", title="logit-lens top token"),
        alt.Tooltip("lens_prob:Q", title="its probability", format=".1%"),
    ]
    base = alt.Chart(layers).encode(x=alt.X("layer:O", title="layer (0 = input embedding)"))
    norm = base.mark_bar(color="#cbd5e1").encode(
        y=alt.Y("norm:Q", title="vector length (norm)", axis=alt.Axis(titleColor="#64748b")),
        tooltip=tooltip,
    )
    cosine = base.mark_line(point=True, color="#2563eb").encode(
        y=alt.Y(
            "cosine_to_final:Q",
            title="cosine to final layer",
            scale=alt.Scale(domain=[-0.2, 1]),
            axis=alt.Axis(titleColor="#2563eb"),
        ),
        tooltip=tooltip,
    )
    return alt.layer(norm, cosine).resolve_scale(y="independent").properties(height=260)


def logit_bars(top: pd.DataFrame) -> alt.Chart:
    """The top raw scores as horizontal bars. top: rank, token, logit."""
    return (
        alt.Chart(top)
        .mark_bar(color="#64748b")
        .encode(
            x=alt.X("logit:Q", title="raw score (logit)"),
            y=alt.Y("token:N", sort=alt.EncodingSortField("rank"), title=None),
            tooltip=["rank:Q", "token_id:Q", "token:N", alt.Tooltip("logit:Q", format=".3f")],
        )
        .properties(height=240)
    )


def temperature_bars(table: pd.DataFrame, temperature: float) -> alt.Chart:
    """Probabilities at temperature 1 and at the slider's temperature, side by side per token.

    table: core.explain.walkthrough.temperature_table.
    """
    long = table.melt(
        id_vars=["token_id", "token", "chosen"], value_vars=["raw_prob", "prob"], var_name="which"
    )
    long["which"] = long["which"].map({"raw_prob": "temperature 1", "prob": f"temperature {temperature:g}"})
    order = list(table["token"])
    return (
        alt.Chart(long)
        .mark_bar()
        .encode(
            x=alt.X(
                "value:Q", title="probability", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1])
            ),
            y=alt.Y("token:N", sort=order, title=None),
            yOffset=alt.YOffset("which:N"),
            color=alt.Color(
                "which:N",
                scale=alt.Scale(range=["#cbd5e1", "#2563eb"]),
                legend=alt.Legend(title=None, orient="bottom"),
            ),
            tooltip=["token:N", "which:N", alt.Tooltip("value:Q", format=".2%")],
        )
        .properties(height=320)
    )
