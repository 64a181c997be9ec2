"""Attention: where each token of a reply looked, at every layer and head, with exact numbers."""

from __future__ import annotations

from typing import Any

import streamlit as st

from core import html
from core.charts import attention as charts
from core.explain import attention as att
from core.explain.summary import earlier_turn_story
from core.runner import ModelFacts, runner_for
from core.trace import Trace
from pages import common, links

# URL name -> label. URL: ?reply=&layer=&head=&view=&step=&mode= (layer, head, step 0-based)
VIEWS = {
    "model": "Model view",
    "head": "Head view",
    "token": "Per-token view",
    "turns": "Turn view",
    "summary": "Head summary",
}
SLUGS = {label: name for name, label in VIEWS.items()}
LAYER, HEAD, VIEW = "attention.layer", "attention.head", "attention.view"
STEP, MODE = "attention.step", "attention.mode"  # the per-token view's step and whose attention
SCOPE = "attention.scope"  # the turn view's whose attention
CLICKED, CHART = "attention.clicked", "attention.model_view"
ROW_KINDS = ["Rows that chose the reply's tokens", "Whole sequence"]
MAX_ROWS, MAX_COLS, MAX_BARS = 48, 96, 120  # at most 4,608 cells per heatmap

EXPLANATION = """
**What attention is.** Before each layer updates a token, the token (the *query*) looks back at
every earlier token (the *keys*) and takes a weighted mix of what they carry. The weights are
this page's numbers: each is between 0 and 1, and one token's weights add up to 1.

**Reading a heatmap row.** A row is one token looking; each cell is how much of its attention
went to the token in that column. Dark = a lot.

**Which row chose a word.** The model picks a reply token from the vector at the position
*before* it: the attention of `·is` chose `·Canberra`. So step 3 of a reply is the row of the
token before reply token 3; rows are labelled `·is → ·Canberra`, the looking token first, then
the token it chose. The first reply token was chosen by the last prompt token.

**Why the upper triangle is empty.** The model writes left to right, so a token may only look
at itself and earlier tokens (*causal masking*). Weights on later tokens are exactly 0.

**Why so much goes to the first token.** Weights must add up to 1, even when a head has
nothing useful to find. Many heads then park their attention on the first token, an *attention
sink* that carries almost no information. Heavy first-token weight usually means "this head
is idle here", not "the first token matters".

**Heads differ.** Each of the {n_layers} layers has {n_heads} heads. Some always look at the previous
token, some at the sink, some at the question. The head summary lets you sort them.
"""


def explanation(facts: ModelFacts) -> str:
    """The side panel, with this model's own numbers."""
    text = EXPLANATION.format(n_layers=facts.n_layers, n_heads=facts.n_heads)
    if facts.sliding_window and facts.sliding_layers:
        text += (
            f"\n**Sliding windows.** In this model {len(facts.sliding_layers)} of the {facts.n_layers} layers "
            f"let a token see only the last {facts.sliding_window:,} tokens; further back, their weights "
            "are exactly 0 as well.\n"
        )
    return text


lm = common.chat_model()
facts = runner_for(lm).facts
common.model_badge(lm)
st.title("👀 Attention: where each word looked")
intro = st.empty()  # the model's own numbers: drawn again once the reply's model is known
link_slot = st.container()


def describe(facts: ModelFacts) -> None:
    intro.caption(
        f"For every token of a reply, how much each of the model's {facts.total_heads:,} attention heads "
        "looked at each earlier token. Click a head in the model view to open it."
    )
    side_text.markdown(explanation(facts))


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
        st.session_state[VIEW] = VIEWS["head"]


def follow_url(n_steps: int) -> None:
    """Take the URL's layer, head, view, step and mode into the widgets (each wins once).

    A link that names a step but no view (the candidates page's) opens the Per-token view.
    """
    links.url_value("layer", LAYER, int, range(facts.n_layers).__contains__)
    links.url_value("head", HEAD, int, range(facts.n_heads).__contains__)
    links.url_value("view", VIEW, VIEWS.get)
    stepped = links.url_value("step", STEP, int, range(n_steps).__contains__)
    if stepped and "view" not in st.query_params:
        st.session_state[VIEW] = VIEWS["token"]
    # A visit to another page drops the widgets' state: restore() brings back what remember() kept.
    for key, default, options in (
        (LAYER, facts.n_layers // 2, range(facts.n_layers)),
        (HEAD, 0, range(facts.n_heads)),
        (VIEW, VIEWS["model"], VIEWS.values()),
    ):
        common.restore(key, default)
        if st.session_state[key] not in options:  # kept from a model with more layers or heads
            st.session_state[key] = default
    if st.session_state[VIEW] == VIEWS["token"]:
        # subtle: the step and "whose attention" are drawn in this view only, so they are set only in
        # a run that draws them. Streamlit keeps a value written to a key while its widget is
        # off-screen, and shows it again once the widget's own later value is dropped (a visit to
        # another page brought "Mean of layer 17's heads" back as "Head 1").
        links.url_value("mode", MODE, valid=("head", "layer", "all").__contains__)
        common.restore(MODE, "head")
        common.restore(STEP, 0)
        # one step key for every reply (a reply switch keeps it, within the new reply's length)
        st.session_state[STEP] = min(max(int(st.session_state[STEP]), 0), n_steps - 1)


def head_picker() -> tuple[int, int, str]:
    a, b = st.columns(2)
    # numbered from 1 on the page, as the other pages number layers ("after layer 1")
    layer = a.selectbox("Layer", range(facts.n_layers), format_func=lambda i: str(i + 1), key=LAYER)
    head = b.selectbox("Head", range(facts.n_heads), format_func=lambda i: str(i + 1), key=HEAD)
    view = st.segmented_control("View", list(VIEWS.values()), key=VIEW, required=True)
    for key in (LAYER, HEAD, VIEW):
        common.remember(key)
    return int(layer), int(head), view or VIEWS["model"]


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
        chart, width="stretch", on_select="rerun", key=CHART, selection_mode=charts.HEAD_SELECTION
    )


def whole_layer(ov: att.AttentionOverview, trace, layer: int):
    """Every row of the layer, (heads, T, T): a pass over the whole context, run on demand."""
    if att.layer_is_cached(trace, layer):
        return att.layer_weights(lm, trace, layer)
    try:
        with common.model_pass(f"Running the model over all {ov.n_tokens:,} tokens, for every row:"):
            return att.layer_weights(lm, trace, layer)
    except att.AttentionUnavailable as exc:
        st.warning(str(exc))
        st.stop()
    except (ValueError, RuntimeError) as exc:
        st.error(f"The attention could not be computed: {exc}")
        st.stop()


def head_view(ov: att.AttentionOverview, trace, reply_w, layer: int, head: int) -> None:
    P, T = ov.n_prompt, ov.n_tokens
    a, b = st.columns(2)
    rows_kind = a.radio("Rows (queries)", ROW_KINDS, horizontal=True, key="attention.rows")
    cols_kind = b.radio(
        "Columns (keys)",
        ["Tokens", "Grouped by turn"],
        index=0 if T <= MAX_COLS else 1,
        horizontal=True,
        key="attention.cols",
    )
    steps_only = rows_kind == ROW_KINDS[0]
    # step rows: P - 1 .. T - 2, each the row that chose the next (reply) token
    first, n = (ov.position(0), ov.n_reply) if steps_only else (0, T)
    shown = window(n, MAX_ROWS, f"Query rows (a window of {MAX_ROWS})", "attention.row_window")
    rows = range(first + shown.start, first + shown.stop)
    # (rows from `first`, T): the step rows are at hand; the whole sequence needs every row
    w = reply_w[head] if steps_only else whole_layer(ov, trace, layer)[head]
    title = f"Layer {layer + 1}, head {head + 1}"
    if cols_kind == "Tokens":
        cols = window(rows.stop, MAX_COLS, f"Key columns (a window of {MAX_COLS})", "attention.col_window")
        if len(cols) < rows.stop:
            st.caption("Keys outside the window are hidden; *Grouped by turn* shows the whole context.")
        chart = charts.head_heatmap(att.head_frame(w, ov.labels, rows, cols, P, first), title)
    else:
        chart = charts.group_heatmap(att.head_frame_by_group(w, ov, rows, first), title)
    st.altair_chart(chart, width="stretch")  # the columns share the width; rows keep their height
    st.caption(
        "A row labelled `·is → ·Canberra` is the attention of ·is that chose ·Canberra, the next token. "
        "Tap or hover a cell for the exact weight. Cells right of the diagonal are 0: a token cannot see later ones."
    )


def per_token_view(ov: att.AttentionOverview, reply_w, layer: int, head: int) -> None:
    R = ov.n_reply
    step = st.select_slider(
        "Step: the attention that chose reply token…",
        options=range(R),
        format_func=lambda s: f"{s + 1}: {ov.step_label(s)}",
        key=STEP,
    )
    modes = {
        "head": f"Head {head + 1} of layer {layer + 1}",
        "layer": f"Mean of layer {layer + 1}'s heads",
        "all": "Mean over all layers and heads",
    }
    mode = st.radio("Whose attention", list(modes), format_func=modes.get, horizontal=True, key=MODE)
    common.remember(STEP)
    common.remember(MODE)
    row = att.token_row(ov, step, None if mode == "all" else reply_w, head if mode == "head" else None)
    pos = ov.position(step)  # the token looking; reply token `step` (chosen) is at pos + 1
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
            sub="looking" if i == pos else None,
        )
        for i in range(pos + 1)
    ]
    items.append(  # the token this attention chose: not written yet, so nothing could look at it
        html.Chip(
            ov.labels[pos + 1],
            title=f"position {pos + 1} · reply token {step + 1}, chosen from this attention's result",
            sub="chosen",
        )
    )
    legend = [(html.weight_colour(f * peak, peak), f"{f * peak:.3f}") for f in (0.1, 0.4, 0.7, 1.0)]
    st.html(
        html.text_block(
            f"Step {step + 1}: the attention of {ov.labels[pos]} → chose {ov.labels[pos + 1]}. The "
            f"outlined token ({ov.labels[pos]}, position {pos}) is the last one the model had read; what "
            f"its attention gathered from the tokens before it became the vector that chose "
            f"{ov.labels[pos + 1]}, shown last and uncoloured: it was not written yet, so nothing looked at it."
        )
    )
    st.caption("Tap or hover a token for its exact weight.")
    st.html(html.chips(items, legend, tap=True))
    st.dataframe(
        att.top_attended(ov, row),
        hide_index=True,
        column_config={"weight": st.column_config.NumberColumn(format="%.4f")},
    )


def turn_view(ov: att.AttentionOverview, trace: Trace, tokenizer: Any, layer: int, head: int) -> None:
    story = earlier_turn_story(tokenizer, trace)
    if story:  # the reply follows an earlier question: how much did it look at the current one?
        share = att.turn_shares(ov)
        st.warning(
            f"{story} Over all layers and heads, the attention that chose this reply's tokens put "
            f"{share['Current question']:.0%} on the current question and {share['Earlier turns']:.0%} on "
            "earlier turns.",
            icon="↩️",
        )
    scopes = {
        "all": "Mean over all layers and heads",
        "layer": f"Mean of layer {layer + 1}'s heads",
        "head": f"Head {head + 1} of layer {layer + 1}",
    }
    common.restore(SCOPE, "all")
    scope = st.radio("Whose attention", list(scopes), format_func=scopes.get, horizontal=True, key=SCOPE)
    common.remember(SCOPE)
    frame = att.turn_frame(ov, None if scope == "all" else layer, head if scope == "head" else None)
    steps = window(ov.n_reply, MAX_BARS, f"Reply tokens (a window of {MAX_BARS})", "attention.bar_window")
    frame = frame[frame["step"].between(steps.start, steps.stop - 1)]
    # above the chart, where it wraps: Vega cut a chart title this long with "…" on a phone
    st.markdown("**Where the attention that chose each reply token went**")
    st.altair_chart(charts.turn_bars(frame), width="stretch")
    st.caption("The template tokens include the very first token, where idle heads park their attention.")


def head_summary(ov: att.AttentionOverview) -> None:
    stats = ov.stats
    st.markdown(
        f"Averages over the rows that chose the reply's tokens. "
        f"{int((stats.looks_like == 'sink head').sum())} sink heads and "
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
side_text = side.empty()
describe(facts)
with main:
    ref = common.reply_picker("attention.reply")
    if ref is None:
        st.stop()
    trace = ref.message.trace
    lm = common.model_for(trace)  # the model that wrote this reply (the chat may use another one now)
    facts = runner_for(lm).facts
    describe(facts)  # the caption and side panel give the numbers of the model that wrote the reply
    if not trace.steps:
        st.info("This reply has no tokens yet, so there is no attention to show.")
        st.stop()
    apply_click()
    follow_url(len(trace.steps))
    layer, head, view = head_picker()
    token_view = view == VIEWS["token"]  # step and whose attention are its own; no other view names them
    links.set_url(
        layer=layer,
        head=head,
        view=SLUGS[view],
        step=st.session_state.get(STEP) if token_view else None,
        mode=st.session_state.get(MODE) if token_view else None,
    )
    links.copy_link(link_slot)
    kv = st.session_state.get("chat.kv")  # the chat's keys and values: core only reads them
    try:
        if att.is_cached(trace, layer):
            ov, reply_w = att.overview(lm, trace), att.reply_weights(lm, trace, layer)
        else:
            with common.model_pass(f"Recording attention over {len(trace.full_ids):,} tokens:"):
                ov = att.overview(lm, trace, keep_layer=layer, kv=kv)
                reply_w = att.reply_weights(lm, trace, layer, kv=kv)  # (heads, R, T)
    except att.AttentionUnavailable as exc:
        st.warning(str(exc))
        st.stop()
    except (ValueError, RuntimeError) as exc:
        st.error(f"The attention could not be computed: {exc}")
        st.stop()
    how = {
        "kv": "from the keys and values the chat kept while writing (no second pass over the whole conversation)",
        "eager": f"with the model's eager attention pass over all {ov.n_tokens:,} tokens",
    }.get(ov.method, f"with one pass of the model over all {ov.n_tokens:,} tokens")
    st.caption(f"Attention recorded in {ov.seconds:.1f} s, {how}.")
    note = att.fallback_note(lm)
    if note:
        st.info(note, icon="ℹ️")
    if view == "Model view":
        model_view(ov, layer, head)
    elif view == "Head view":
        head_view(ov, trace, reply_w, layer, head)
    elif view == "Per-token view":
        per_token_view(ov, reply_w, layer, head)
    elif view == "Turn view":
        turn_view(ov, trace, lm.tokenizer, layer, head)
    else:
        head_summary(ov)
