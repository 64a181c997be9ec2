"""Attention: where each token of a reply looked, at every layer and head, with exact numbers."""

from __future__ import annotations

import streamlit as st

from core import html
from core.charts import attention as charts
from core.explain import attention as att
from pages import common

VIEWS = ["Model view", "Head view", "Per-token view", "Turn view", "Head summary"]
LAYER, HEAD, VIEW = "attention.layer", "attention.head", "attention.view"
CLICKED, CHART = "attention.clicked", "attention.model_view"
MAX_ROWS, MAX_COLS, MAX_BARS = 48, 96, 120  # at most 4,608 cells per heatmap

EXPLANATION = """
**What attention is.** Before each layer updates a token, the token (the *query*) looks back at
every earlier token (the *keys*) and takes a weighted mix of what they carry. The weights are
this page's numbers: each is between 0 and 1, and one token's weights add up to 1.

**Reading a heatmap row.** A row is one token looking; each cell is how much of its attention
went to the token in that column. Dark = a lot.

**Why the upper triangle is empty.** The model writes left to right, so a token may only look
at itself and earlier tokens (*causal masking*). Weights on later tokens are exactly 0.

**Why so much goes to the first token.** Weights must add up to 1, even when a head has
nothing useful to find. Many heads then park their attention on the first token, an *attention
sink* that carries almost no information. Heavy first-token weight usually means "this head
is idle here", not "the first token matters".

**Heads differ.** Each of the 30 layers has 9 heads. Some always look at the previous token,
some at the sink, some at the question. The head summary lets you sort them.
"""

lm = common.chat_model()
common.model_badge(lm)
st.title("👀 Attention: where each word looked")
st.caption(
    "For every token of a reply, how much each of the model's 270 attention heads looked at each "
    "earlier token. Click a head in the model view to open it."
)


def apply_click() -> None:
    """A click on the model view opens that head (before the widgets are drawn)."""
    points = ((st.session_state.get(CHART) or {}).get("selection") or {}).get(charts.HEAD_SELECTION) or []
    if not points or not isinstance(points[0], dict) or "layer" not in points[0]:
        st.session_state.pop(CLICKED, None)
        return
    clicked = (int(points[0]["layer"]), int(points[0]["head"]))
    if clicked != st.session_state.get(CLICKED):
        st.session_state[CLICKED] = clicked
        st.session_state[LAYER], st.session_state[HEAD] = clicked
        st.session_state[VIEW] = "Head view"


def head_picker() -> tuple[int, int, str]:
    st.session_state.setdefault(LAYER, lm.n_layers // 2)
    st.session_state.setdefault(HEAD, 0)
    st.session_state.setdefault(VIEW, VIEWS[0])
    a, b = st.columns(2)
    # numbered from 1 on the page, as the other pages number layers ("after layer 1")
    layer = a.selectbox("Layer", range(lm.n_layers), format_func=lambda i: str(i + 1), key=LAYER)
    head = b.selectbox("Head", range(lm.n_heads), format_func=lambda i: str(i + 1), key=HEAD)
    view = st.segmented_control("View", VIEWS, key=VIEW, required=True)
    return int(layer), int(head), view or VIEWS[0]


def window(n: int, size: int, label: str, key: str) -> range:
    """A window of at most `size` of n positions, with a slider when n is larger."""
    if n <= size:
        return range(n)
    # The key carries n: a window kept from a longer reply would be out of this slider's range.
    start = st.slider(label, 0, n - size, n - size, key=f"{key}.{n}")
    return range(start, start + size)


def model_view(ov: att.AttentionOverview, layer: int, head: int) -> None:
    k = ov.thumbs.shape[-1]
    st.markdown(
        f"Each small square is one head: the whole sequence attending to itself, shrunk to {k}×{k} "
        f"blocks (the mean of up to {att.THUMB_ROWS} evenly spaced rows per block; each head scaled to "
        "its own maximum). A dark left column is a sink head; a dark diagonal a previous-token head. "
        "**Click a square to open that head.**"
    )
    chart = charts.model_view(att.model_view_frame(ov), chosen=(layer, head))
    st.altair_chart(
        chart, width="content", on_select="rerun", key=CHART, selection_mode=charts.HEAD_SELECTION
    )


def whole_layer(ov: att.AttentionOverview, trace, layer: int):
    """Every row of the layer, (heads, T, T): a pass over the whole context, run on demand."""
    if att.layer_is_cached(trace, layer):
        return att.layer_weights(lm, trace, layer)
    try:
        with st.spinner(
            f"Running the model over all {ov.n_tokens:,} tokens up to layer {layer + 1}, for every row…"
        ):
            return att.layer_weights(lm, trace, layer)
    except (ValueError, RuntimeError) as exc:
        st.error(f"The attention could not be computed: {exc}")
        st.stop()


def head_view(ov: att.AttentionOverview, trace, reply_w, layer: int, head: int) -> None:
    P, T = ov.n_prompt, ov.n_tokens
    a, b = st.columns(2)
    rows_kind = a.radio(
        "Rows (queries)", ["Reply tokens", "Whole sequence"], horizontal=True, key="attention.rows"
    )
    cols_kind = b.radio(
        "Columns (keys)",
        ["Tokens", "Grouped by turn"],
        index=0 if T <= MAX_COLS else 1,
        horizontal=True,
        key="attention.cols",
    )
    first = P if rows_kind == "Reply tokens" else 0
    shown = window(T - first, MAX_ROWS, f"Query rows (a window of {MAX_ROWS})", "attention.row_window")
    rows = range(first + shown.start, first + shown.stop)
    # (rows from `first`, T): the reply's rows are at hand; the whole sequence needs every row
    w = reply_w[head] if first == P else whole_layer(ov, trace, layer)[head]
    title = f"Layer {layer + 1}, head {head + 1}"
    if cols_kind == "Tokens":
        cols = window(rows.stop, MAX_COLS, f"Key columns (a window of {MAX_COLS})", "attention.col_window")
        if len(cols) < rows.stop:
            st.caption("Keys outside the window are hidden; *Grouped by turn* shows the whole context.")
        chart = charts.head_heatmap(att.head_frame(w, ov.labels, rows, cols, P, first), title)
    else:
        chart = charts.group_heatmap(att.head_frame_by_group(w, ov, rows, first), title)
    st.altair_chart(chart, width="content")  # "stretch" would squeeze the rows under the labels
    st.caption(
        "Hover a cell for the exact weight. Cells right of the diagonal are 0: a token cannot see later ones."
    )


def follow_step_link(trace_id: str) -> None:
    """A link naming a step (?step=, from the walkthrough) opens that token in the Per-token view.

    The parameter is used up, so the view and step stay the reader's to change afterwards.
    """
    wanted = st.query_params.get("step")
    if wanted is None:
        return
    del st.query_params["step"]
    if wanted.isdigit():
        st.session_state[VIEW] = "Per-token view"
        st.session_state[f"attention.step.{trace_id}"] = int(wanted)


def per_token_view(ov: att.AttentionOverview, reply_w, layer: int, head: int) -> None:
    P, R = ov.n_prompt, ov.n_reply
    key = f"attention.step.{ov.trace_id}"  # per reply: another reply may be shorter
    if st.session_state.get(key) not in range(R):
        st.session_state[key] = 0
    step = st.select_slider(
        "Reply token", options=range(R), format_func=lambda s: f"{s + 1}: {ov.labels[P + s]}", key=key
    )
    modes = {
        "head": f"Head {head + 1} of layer {layer + 1}",
        "layer": f"Mean of layer {layer + 1}'s heads",
        "all": "Mean over all layers and heads",
    }
    mode = st.radio(
        "Whose attention", list(modes), format_func=modes.get, horizontal=True, key="attention.mode"
    )
    row = att.token_row(ov, step, None if mode == "all" else reply_w, head if mode == "head" else None)
    pos = P + step
    skip_first = st.checkbox(
        "Scale colours without the first token (the attention sink)", value=True, key="attention.skip_first"
    )
    peak = float(row[1 : pos + 1].max()) if skip_first and pos > 0 else float(row[: pos + 1].max())
    items = [
        html.Chip(
            ov.labels[i],
            title=f"position {i} · {ov.groups[ov.group_of[i]].name}\nweight {row[i]:.4f}",
            background=html.weight_colour(row[i], peak),
            css=("chosen",) if i == pos else (),
        )
        for i in range(pos + 1)
    ]
    legend = [(html.weight_colour(f * peak, peak), f"{f * peak:.3f}") for f in (0.1, 0.4, 0.7, 1.0)]
    st.markdown("What the outlined token looked at. Hover a token for its exact weight.")
    st.html(html.chips(items, legend))
    st.dataframe(
        att.top_attended(ov, row),
        hide_index=True,
        column_config={"weight": st.column_config.NumberColumn(format="%.4f")},
    )


def turn_view(ov: att.AttentionOverview, layer: int, head: int) -> None:
    scopes = {
        "all": "Mean over all layers and heads",
        "layer": f"Mean of layer {layer + 1}'s heads",
        "head": f"Head {head + 1} of layer {layer + 1}",
    }
    scope = st.radio(
        "Whose attention", list(scopes), format_func=scopes.get, horizontal=True, key="attention.scope"
    )
    frame = att.turn_frame(ov, None if scope == "all" else layer, head if scope == "head" else None)
    steps = window(ov.n_reply, MAX_BARS, f"Reply tokens (a window of {MAX_BARS})", "attention.bar_window")
    frame = frame[frame["step"].between(steps.start, steps.stop - 1)]
    st.altair_chart(charts.turn_bars(frame, "Where each reply token's attention went"), width="content")
    st.caption("The template tokens include the very first token, where idle heads park their attention.")


def head_summary(ov: att.AttentionOverview) -> None:
    stats = ov.stats
    st.markdown(
        f"Averages over the reply's tokens. {int((stats.looks_like == 'sink head').sum())} sink heads and "
        f"{int((stats.looks_like == 'previous-token head').sum())} previous-token heads. Click a column to sort."
    )
    pct = st.column_config.NumberColumn
    st.dataframe(
        stats.assign(layer=stats["layer"] + 1, head=stats["head"] + 1),  # numbered from 1, as on the page
        hide_index=True,
        column_config={
            "entropy_bits": pct("entropy (bits)", format="%.2f", help="Low: focused on few tokens"),
            "first_token": pct("on first token", format="%.3f"),
            "previous_token": pct("on previous token", format="%.3f"),
            "current_question": pct("on current question", format="%.3f"),
            "looks_like": "looks like",
        },
    )


main, side = st.columns([3, 1])
with side:
    st.markdown(EXPLANATION)
with main:
    ref = common.reply_picker("attention.reply")
    if ref is None:
        st.stop()
    trace = ref.message.trace
    if not trace.steps:
        st.info("This reply has no tokens yet, so there is no attention to show.")
        st.stop()
    apply_click()
    follow_step_link(trace.trace_id)
    layer, head, view = head_picker()
    kv = st.session_state.get("chat.kv")  # the chat's keys and values: core only reads them
    try:
        if att.is_cached(trace, layer):
            ov, reply_w = att.overview(lm, trace), att.reply_weights(lm, trace, layer)
        else:
            with st.spinner(f"Recording attention over {len(trace.full_ids):,} tokens…"):
                ov = att.overview(lm, trace, keep_layer=layer, kv=kv)
                reply_w = att.reply_weights(lm, trace, layer, kv=kv)  # (heads, R, T)
    except (ValueError, RuntimeError) as exc:
        st.error(f"The attention could not be computed: {exc}")
        st.stop()
    how = (
        "from the keys and values the chat kept while writing (no second pass over the whole conversation)"
        if ov.method == "kv"
        else f"with one pass of the model over all {ov.n_tokens:,} tokens"
    )
    st.caption(f"Attention recorded in {ov.seconds:.1f} s, {how}.")
    if view == "Model view":
        model_view(ov, layer, head)
    elif view == "Head view":
        head_view(ov, trace, reply_w, layer, head)
    elif view == "Per-token view":
        per_token_view(ov, reply_w, layer, head)
    elif view == "Turn view":
        turn_view(ov, layer, head)
    else:
        head_summary(ov)
