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
                legend=alt.Legend(title="value", orient="right", gradientLength=100),
            ),
            tooltip=[alt.Tooltip("index:Q", title="dimension"), alt.Tooltip("value:Q", format=".4f")],
        )
        .properties(height=140)
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


def logit_dots(top: pd.DataFrame) -> alt.LayerChart:
    """The top raw scores as labelled dots. top: rank, token_id, token, logit.

    subtle: the axis does not start at zero; what matters to softmax is the gaps between scores.
    """
    base = alt.Chart(top).encode(
        x=alt.X("logit:Q", title="raw score (logit)", scale=alt.Scale(zero=False, nice=True, padding=12)),
        y=alt.Y("token:N", sort=alt.EncodingSortField("rank"), title=None, axis=alt.Axis(labelOverlap=False)),
        tooltip=["rank:Q", "token_id:Q", "token:N", alt.Tooltip("logit:Q", format=".3f")],
    )
    dots = base.mark_circle(size=90, color="#475569")
    values = base.mark_text(align="left", dx=8, color="#334155").encode(
        text=alt.Text("logit:Q", format=".2f")
    )
    return alt.layer(dots, values).properties(height=300)


def temperature_bars(table: pd.DataFrame, temperature: float) -> alt.LayerChart:
    """Probabilities at temperature 1 and at the slider's temperature, side by side per token.

    table: core.explain.walkthrough.temperature_table.
    """
    long = table.melt(
        id_vars=["token_id", "token", "chosen"], value_vars=["raw_prob", "prob"], var_name="which"
    )
    labels = ["softmax at temperature 1", f"at the slider's temperature ({temperature:g})"]
    long["which"] = long["which"].map(dict(zip(["raw_prob", "prob"], labels)))
    order = list(table["token"])
    room = min(float(long["value"].max()) * 1.15, 1.15)  # space for the value labels
    # past 100% the extra room is only for labels: no ticks there
    axis = alt.Axis(format="%", values=[t / 10 for t in range(11)]) if room > 1 else alt.Axis(format="%")
    base = alt.Chart(long).encode(
        x=alt.X(
            "value:Q",
            title="probability",
            axis=axis,
            scale=alt.Scale(domain=[0, room]),
        ),
        y=alt.Y("token:N", sort=order, title=None, axis=alt.Axis(labelOverlap=False)),
        yOffset=alt.YOffset("which:N", sort=labels),
        tooltip=["token:N", "which:N", alt.Tooltip("value:Q", format=".2%")],
    )
    bars = base.mark_bar().encode(
        color=alt.Color(
            "which:N",
            scale=alt.Scale(domain=labels, range=["#cbd5e1", "#2563eb"]),
            legend=alt.Legend(title=None, orient="bottom", columns=1, labelLimit=400),  # 1 a line: phones
        )
    )
    values = base.mark_text(align="left", dx=3, fontSize=10, color="#334155").encode(
        text=alt.Text("value:Q", format=".1%")
    )
    return alt.layer(bars, values).properties(height=380)
