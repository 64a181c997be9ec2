"""Charts for the next-word candidates page: top-k bars, the whole-reply line, the what-if
side by side, and the logit-lens heatmap."""

from __future__ import annotations

import altair as alt
import pandas as pd

STEP_PICK = "step_pick"  # name of the point selection on the whole-reply chart
CHOSEN = "#e11d48"
OTHER = "#60a5fa"
LOOP = "#a855f7"  # the stretch where the reply copies itself
STEP_TITLE = "step (1 = the reply's first token)"
LINE_HEIGHT = 260  # px, the whole-reply chart


def _labelled(df: pd.DataFrame) -> pd.DataFrame:
    """Add a unique y label "3. ·Paris" (two tokens can look the same when shown).

    A row whose rank does not follow the one above (the chosen token, appended from far
    down the list) reads "… 21. ·at ◀ chosen", so the gap and the pick are both visible.
    """
    data = df.copy()
    labels, previous = [], 0
    for r, t, chosen in zip(data["rank"], data["token"], data["chosen"], strict=True):
        gap = r != previous + 1
        labels.append(f"{'… ' if gap else ''}{r}. {t}{' ◀ chosen' if gap and chosen else ''}")
        previous = r
    data["label"] = labels
    return data


def _candidate_axis(data: pd.DataFrame, label_limit: int) -> alt.Y:
    """The candidates down the side, in rank order, every label shown (cut at label_limit px)."""
    return alt.Y(
        "label:N",
        sort=list(data["label"]),
        title=None,
        axis=alt.Axis(labelLimit=label_limit, labelOverlap=False),
    )


def candidates_bar(
    df: pd.DataFrame, value: str = "prob", title: str = "probability", full_scale: bool = False
) -> alt.Chart:
    """Horizontal bars of the top candidates; the chosen token in red.

    df: columns rank, token, chosen and `value` (top_candidates() or what_if()).
    full_scale: x axis from 0 to 100% (so two charts side by side compare), else fitted.
    """
    scale = alt.Scale(domain=[0, 1]) if full_scale else alt.Scale(zero=True)
    data = _labelled(df)
    return (
        alt.Chart(data)
        .mark_bar()
        .encode(
            y=_candidate_axis(data, 220),
            x=alt.X(f"{value}:Q", title=title, axis=alt.Axis(format="%"), scale=scale),
            color=alt.condition(alt.datum.chosen, alt.value(CHOSEN), alt.value(OTHER)),
            tooltip=[
                alt.Tooltip("token:N"),
                alt.Tooltip("rank:Q"),
                alt.Tooltip(f"{value}:Q", format=".2%", title=title),
            ],
        )
        .properties(height=alt.Step(20))
    )


def what_if_side_by_side(df: pd.DataFrame, label: str) -> alt.Chart:
    """The recorded distribution (temperature 1, no filters) and the what-if one: two bars per candidate.

    df: what_if() output; label: how the what-if settings read, e.g. "T=1.5, top-p=0.9".
    One chart at its container's width, the pair of bars under each label: two charts side by
    side were 976 px wide, so on a phone the what-if half was off the screen. The chosen
    token's pair is red, like the chosen bar elsewhere on the page.
    """
    original, changed = "original (T=1, no filters)", f"what if {label}"
    data = _labelled(df)
    pairs = data.melt(
        id_vars=["label", "token", "rank", "chosen"],
        value_vars=["original", "what_if"],
        var_name="which",
        value_name="prob",
    )
    chosen_names = {"original": "chosen token, original", "what_if": "chosen token, what if"}
    pairs["series"] = [
        chosen_names[w] if c else {"original": original, "what_if": changed}[w]
        for w, c in zip(pairs["which"], pairs["chosen"], strict=True)
    ]
    pairs["which"] = pairs["which"].map({"original": original, "what_if": changed})
    series = [original, changed, *chosen_names.values()]
    return (
        alt.Chart(pairs)
        .mark_bar()
        .encode(
            y=_candidate_axis(data, 160),
            yOffset=alt.YOffset("which:N", sort=[original, changed]),
            x=alt.X("prob:Q", title="probability", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1])),
            color=alt.Color(
                "series:N",
                scale=alt.Scale(domain=series, range=["#bfdbfe", OTHER, "#fda4af", CHOSEN]),
                legend=alt.Legend(orient="top", title=None, columns=1, labelLimit=260),  # fits a phone
            ),
            tooltip=[
                alt.Tooltip("token:N"),
                alt.Tooltip("rank:Q"),
                alt.Tooltip("which:N", title="distribution"),
                alt.Tooltip("prob:Q", format=".2%", title="probability"),
            ],
        )
        .properties(width="container", height=alt.Step(11, **{"for": "offset"}))  # px per bar
    )


def reply_line(table: pd.DataFrame, current: int | None = None) -> alt.LayerChart:
    """Chosen-token probability (left axis) and entropy in bits (right axis) across the reply.

    Clicking a point selects that step (selection parameter STEP_PICK, field "step", the
    0-based index). The axis numbers steps from 1, as the pages do. table: steps_table() output;
    where its `repeats` column is true (a loop, see find_repetition) a purple band says so,
    because the high probability there comes from copying.
    """
    pick = alt.selection_point(name=STEP_PICK, fields=["step"], on="click", nearest=True, empty=False)
    table = table.assign(step_no=table["step"] + 1)
    steps_axis = alt.Axis(tickMinStep=1, format="d")  # whole steps, never "1.5"
    base = alt.Chart(table).encode(x=alt.X("step_no:Q", title=STEP_TITLE, axis=steps_axis))
    tips = [
        alt.Tooltip("step_no:Q", title="step"),
        alt.Tooltip("token:N"),
        alt.Tooltip("prob:Q", format=".1%"),
        alt.Tooltip("entropy:Q", format=".2f", title="entropy (bits)"),
    ]
    prob_y = alt.Y("prob:Q", title="chosen token's probability", axis=alt.Axis(format="%", titleColor=OTHER))
    prob_line = base.mark_line(color=OTHER).encode(y=prob_y)
    # clickable points: the selection lives on a point mark (nearest click picks the closest step)
    points = (
        base.mark_circle(color=OTHER, size=45, opacity=0.9)
        .encode(y=prob_y, tooltip=tips)  # the same y as the line: one shared, visible axis
        .add_params(pick)
    )
    prob = alt.layer(prob_line, points)
    entropy = base.mark_line(color="#f59e0b", strokeDash=[4, 3]).encode(
        y=alt.Y("entropy:Q", title="entropy (bits)", axis=alt.Axis(titleColor="#f59e0b")),
        tooltip=tips,
    )
    layers = [prob, entropy]
    looped = table[table["repeats"]] if "repeats" in table else table.iloc[:0]
    if len(looped):
        band = pd.DataFrame(  # from the loop's first step to its last: the axis keeps its range
            {
                "from": [int(looped["step_no"].min())],
                "to": [int(looped["step_no"].max())],
                "what": ["repeats earlier text (a loop)"],
            }
        )
        shade = alt.Chart(band).encode(x=alt.X("from:Q", title=STEP_TITLE, axis=steps_axis), x2="to:Q")
        layers.insert(
            0, shade.mark_rect(color=LOOP, opacity=0.12).encode(tooltip=[alt.Tooltip("what:N", title="")])
        )
        # mid-height: in a loop the probability runs along the top and the entropy along the bottom
        label = shade.mark_text(align="left", dx=6, color=LOOP, fontSize=12, fontWeight="bold")
        layers.append(label.encode(text="what:N", y=alt.value(LINE_HEIGHT // 2)))
    if current is not None:
        marker = pd.DataFrame({"step_no": [current + 1]})
        layers.append(
            alt.Chart(marker)
            .mark_rule(color=CHOSEN, strokeWidth=2)
            .encode(x=alt.X("step_no:Q", axis=steps_axis))
        )
    return alt.layer(*layers).resolve_scale(y="independent").properties(height=LINE_HEIGHT)


def lens_heatmap(table: pd.DataFrame) -> alt.LayerChart:
    """Layer x top-k grid: each cell a token, shaded by the probability that layer gives it.

    table: lens_table() output (layer, rank, token, prob, is_chosen). The top row is the
    model's real output; the emitted token is outlined.
    """
    data = table.copy()
    data["cell"] = [
        f"{t} {p:.0%}" if p >= 0.01 else f"{t} <1%" for t, p in zip(data["token"], data["prob"], strict=True)
    ]
    layers = sorted(data["layer"].unique(), reverse=True)
    base = alt.Chart(data).encode(
        x=alt.X("rank:O", title="rank at this layer", axis=alt.Axis(orient="top", labelAngle=0)),
        y=alt.Y(
            "layer:O",
            sort=layers,
            title="layer (0 = embeddings, top = output)",
            axis=alt.Axis(labelOverlap=False),
        ),
    )
    cells = base.mark_rect(stroke="white").encode(
        color=alt.Color(
            "prob:Q",
            scale=alt.Scale(scheme="greens", domain=[0, 1]),
            title="probability",
            # above the grid, so that the cells get the width
            legend=alt.Legend(orient="top", direction="horizontal", gradientLength=160),
        ),
        tooltip=[
            alt.Tooltip("layer:O"),
            alt.Tooltip("rank:O"),
            alt.Tooltip("token:N"),
            alt.Tooltip("prob:Q", format=".2%"),
        ],
    )
    chosen = base.transform_filter(alt.datum.is_chosen).mark_rect(fill=None, stroke=CHOSEN, strokeWidth=2)
    # each label stops short of its cell's edge, however wide the container makes the cells
    text = base.mark_text(fontSize=11, limit=alt.expr("max(bandwidth('x') - 6, 20)")).encode(
        text="cell:N",
        color=alt.condition(alt.datum.prob > 0.5, alt.value("white"), alt.value("#111")),
    )
    # the container's width: 130 px per rank made 650 px, past a phone's screen
    return alt.layer(cells, chosen, text).properties(
        height=alt.Step(20), width="container", autosize=alt.AutoSizeParams(type="fit-x", contains="padding")
    )
