"""Next-word candidates: which tokens the model weighed at each step of a reply, and how sure it was.

Everything is read from the reply's trace, except two explicit actions: "Branch here" (a new
reply, made by the model) and the logit lens (one forward pass at the chosen step).
"""

from __future__ import annotations

import time

import streamlit as st

from core.branch import BranchError, branch, divergence, start_retake, stream_branch, takes_of
from core.cache import BoundedCache
from core.charts.candidates import STEP_PICK, candidates_bar, lens_heatmap, reply_line, what_if_side_by_side
from core.explain.candidates import (
    STEP_COLUMNS,
    reply_chips,
    steps_table,
    tokens_for_90,
    top_candidates,
    what_if,
)
from core.explain.forward import context_ids
from core.explain.lens import MIDDLE_LAYERS_NOTE, first_layer_with_answer, lens_table
from core.explain.summary import percent
from core.html import chips, probability_legend, text_block
from core.settings import MAX_REPETITION_PENALTY, SamplingSettings
from core.tokens import readable, step_label
from core.trace import Trace
from pages import common, links, persist, transfer
from pages.explain_panel import plain_label

STEP = "candidates.step"  # URL: ?reply=&step= (0-based)
LINE = "candidates.line"
PICK = "candidates.pick"


@st.cache_resource(show_spinner=False)
def _lens_tables() -> BoundedCache:
    """Logit-lens tables per (model, reply, step). subtle: Streamlit runs a page file as a new
    module on every rerun, so a module-level cache here would start empty every time."""
    return BoundedCache(16)


lm = common.chat_model()
tok = lm.tokenizer
st.title("🎲 Next-word candidates")
st.caption("At every step the model scores every token in its vocabulary; here are the ones it weighed.")
link_slot = st.container()


def _picked() -> None:
    if st.session_state.get(PICK) is not None:
        st.session_state[STEP] = st.session_state[PICK]


def choose_step(trace: Trace) -> int:
    """Slider + clickable tokens + ?step= link + chart click all drive one state key."""
    n = len(trace.steps)
    links.url_value("step", STEP, int, range(n).__contains__)
    st.session_state[STEP] = min(max(int(st.session_state.get(STEP, 0)), 0), n - 1)
    if n > 1:
        st.select_slider(
            "Step",
            range(n),
            format_func=lambda i: str(i + 1),
            key=STEP,
            help="Which token of the reply to look at (1 = the first).",
        )
    step = int(st.session_state[STEP])
    links.set_url(step=step)
    with st.expander("Click a token to jump to its step (the small number is the step)"):
        st.session_state[PICK] = step
        st.pills(
            "Tokens",
            range(n),
            format_func=lambda i: step_label(tok, trace.steps[i].token_id, i),
            key=PICK,
            on_change=_picked,
            label_visibility="collapsed",
        )
    return step


def step_view(trace: Trace, i: int) -> int:
    """The step's token, numbers and top candidates. Returns how many candidates are shown."""
    step = trace.steps[i]
    st.markdown("**The reply so far** (the red outline is this step's token)")
    st.html(chips(reply_chips(tok, trace, marked=i, upto=i + 1), probability_legend()))
    before = readable(tok, trace.full_ids[len(trace.prompt_ids) + i - 1])  # the position that chose it
    a, b, c = st.columns(3)
    with a:
        links.page_link(
            "pages/walkthrough.py", "Walk this step through the model", "🚶", reply=trace.trace_id, step=i
        )
    with c:
        links.page_link(
            "pages/why.py",
            f"Why {readable(tok, step.token_id)}? Which tokens pushed it",
            "🔎",
            reply=trace.trace_id,
            step=i,
        )
    with b:
        links.page_link(
            "pages/attention.py",
            f"See the attention of {before} → {readable(tok, step.token_id)}",
            "👀",
            reply=trace.trace_id,
            step=i,
            view="token",
        )
    mass = tokens_for_90(step)
    cols = st.columns(5)
    cols[0].metric("Chosen token", readable(tok, step.token_id))
    cols[1].metric("Rank", step.rank)
    cols[2].metric("Probability", f"{step.prob:.1%}")
    cols[3].metric("Entropy", f"{step.entropy:.2f} bits")
    cols[4].metric("Tokens for 90%", mass if mass is not None else "> 50")
    k = st.slider("Candidates to show", 5, 50, 10, key="candidates.k")
    st.altair_chart(candidates_bar(top_candidates(tok, step, k)), width="stretch")
    return k


def what_if_view(trace: Trace, i: int, n: int) -> None:
    step = trace.steps[i]
    st.subheader("What if the sampling settings were different?")
    st.caption("The sliders start at the settings this reply was sampled with; move them to see the change.")
    c1, c2, c3, c4 = st.columns(4)
    used = trace.settings  # the sliders start at what the sampler really used
    temperature = c1.slider("Temperature", 0.0, 2.5, float(used.temperature), 0.05, key="candidates.whatif_t")
    top_p = c2.slider("Top-p", 0.05, 1.0, float(used.top_p), 0.01, key="candidates.whatif_p")
    top_k = c3.slider("Top-k (0 = off)", 0, 50, min(used.top_k, 50), key="candidates.whatif_k")
    rp = c4.slider(
        "Repetition penalty",
        1.0,
        MAX_REPETITION_PENALTY,
        float(used.repetition_penalty),
        0.05,
        key="candidates.whatif_rp",
        help="Above 1, every token already in the text (prompt or reply) has its score lowered.",
    )
    settings = SamplingSettings(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=rp)
    # as many candidates as step_view shows; the penalty needs the ids the model had read
    df = what_if(tok, step, settings, n=n, context_ids=context_ids(trace, i))
    label = (
        f"T={temperature:g}, top-p={top_p:g}"
        + (f", top-k={top_k}" if top_k else "")
        + (f", penalty={rp:g}" if rp != 1.0 else "")
    )
    st.altair_chart(what_if_side_by_side(df, label), width="stretch")
    st.caption(
        f"Recomputed with the sampler's own function over the **recorded top-50 candidates**, which hold "
        f"{sum(step.top_probs):.1%} of the raw probability at this step; the rest of the vocabulary is "
        "left out, and both sides are renormalised over those 50. The model did not run again. "
        "Dividing scores by a temperature below 1 sharpens the distribution; above 1 flattens it; "
        "0 is greedy (all on the top token). A repetition penalty above 1 divides the score of each of "
        "those 50 that is already in the text by the penalty (a negative score is multiplied by it)."
    )


def whole_reply(trace: Trace, i: int) -> None:
    st.subheader("The whole reply")
    table = steps_table(tok, trace)

    def on_pick() -> None:
        points = st.session_state[LINE].selection.get(STEP_PICK) or []
        if points:
            st.session_state[STEP] = int(points[0]["step"])

    st.altair_chart(reply_line(table, i), width="stretch", key=LINE, on_select=on_pick)
    st.caption(
        "Blue: the chosen token's probability; orange dashes: entropy. Click a point to open that step."
    )
    shown = table.assign(step=table["step"] + 1)  # numbered from 1, as the slider and pills
    headers = {  # readable headers, help on hover, percentages as percentages
        col: st.column_config.NumberColumn(label, help=tip, format=fmt)
        if fmt
        else st.column_config.Column(label, help=tip)
        for col, (label, tip, fmt) in STEP_COLUMNS.items()
    }
    st.dataframe(shown, hide_index=True, height=260, column_config=headers)
    st.download_button(
        "⬇ Steps (CSV)",
        shown.to_csv(index=False).encode("utf-8"),
        file_name=f"glassbox-steps-{trace.trace_id}.csv",
        mime="text/csv",
        key="candidates.csv",
        on_click="ignore",
    )


def branch_view(ref: common.ReplyRef, i: int) -> None:
    trace = ref.message.trace
    step = trace.steps[i]
    st.subheader("Branch here")
    if persist.readonly():
        st.caption(
            "This shared conversation is read-only. **Continue from here** (sidebar) copies it, then you can branch."
        )
        return
    options = [t for t in step.top_ids[:10] if t != step.token_id]
    choice = st.selectbox(
        "Continue from this step with",
        options,
        format_func=lambda t: f"{readable(tok, t)}  ({percent(step.top_probs[step.top_ids.index(t)])})",
        key="candidates.branch_token",
    )
    if st.button(
        "🌿 Branch here", key="candidates.branch", help="The model continues with the same settings."
    ):
        home = common.messages()[ref.position]
        try:
            with st.spinner("The model is writing the branch…"):
                new = branch(lm, ref.message, i, int(choice), home=home)
        except BranchError as exc:
            st.error(str(exc))
        else:
            st.session_state[common.SELECTED] = trace.trace_id
            st.session_state["candidates.compare"] = new.trace.trace_id
            st.success(f"Branched at step {i + 1}: the new reply is kept as an alternative in the chat.")
    compare(ref)


def _take_name(trace: Trace, other: Trace) -> str:
    if other.branch_of == trace.trace_id:
        return f"Branch at step {other.branch_step + 1}"
    if trace.branch_of == other.trace_id:
        return "The reply this one branched from"
    if other.settings.temperature != trace.settings.temperature:
        return f"Take at temperature {other.settings.temperature:g}"
    return f"Take with seed {other.settings.seed}"


def compare(ref: common.ReplyRef) -> None:
    """This reply next to another take of the same turn (a branch, an earlier take, a what-if at
    another temperature), aligned at the step where they part, each token with its probability."""
    trace = ref.message.trace
    home = common.messages()[ref.position]
    st.subheader("Compare two takes")
    what_if_take(ref, home)
    takes = [m for m in takes_of(home, ref.message) if m.trace.steps]
    if not takes:
        st.caption(
            "Branch here, regenerate the reply in the chat, or write a take at another temperature to compare."
        )
        return
    ids = [m.trace.trace_id for m in takes]
    wanted = st.session_state.get("candidates.compare")
    if wanted not in ids:
        st.session_state["candidates.compare"] = ids[-1]
    chosen = st.selectbox(
        "Compare with",
        ids,
        format_func=lambda t: _take_name(trace, takes[ids.index(t)].trace),
        key="candidates.compare",
    )
    other = takes[ids.index(chosen)].trace
    at = divergence(trace, other)
    if at is None:  # one is the other's beginning: they part where the shorter one ends
        st.markdown(
            f"**Side by side**: the two takes agree on all of their first {min(len(trace.steps), len(other.steps))} steps."
        )
        return
    st.markdown(
        f"**Side by side**: they diverge at step {at + 1} (outlined); each token shows its probability."
    )
    if at:
        st.caption("Both begin with:")
        st.html(text_block("".join(s.text for s in trace.steps[:at])))
    left, right = st.columns(2)
    for col, t, title in ((left, trace, "This reply"), (right, other, _take_name(trace, other))):
        with col:
            st.caption(f"{title}, from step {at + 1}")
            st.html(chips(reply_chips(tok, t, marked=at, start=at, with_prob=True)))
    theirs = other.steps[at].token_id
    if theirs in trace.steps[at].top_ids[:10]:
        st.page_link(
            "pages/why.py",
            label=plain_label(
                f"Why “{readable(tok, trace.steps[at].token_id)}” rather than “{readable(tok, theirs)}” at step {at + 1}?"
            ),
            icon="🔎",
            query_params={"reply": trace.trace_id, "step": str(at), "rival": str(theirs)},
        )


def what_if_take(ref: common.ReplyRef, home) -> None:
    """Write another take of this reply at another temperature (the model runs: an explicit action)."""
    if persist.readonly():
        return
    trace = ref.message.trace
    cols = st.columns([2, 1], vertical_alignment="bottom")
    temperature = cols[0].slider(
        "What if the temperature were…",
        0.0,
        2.0,
        value=1.0 if trace.settings.temperature < 0.5 else 0.0,
        step=0.1,
        key="candidates.retake_temperature",
        help="Writes a new take of this reply with the same prompt, settings and seed, at this temperature; "
        "it is kept among the reply's takes in the chat.",
    )
    if cols[1].button("✍️ Write that take", key="candidates.retake"):
        try:
            message = start_retake(ref.message, temperature, home=home)
        except BranchError as exc:
            st.error(str(exc))
            return
        with st.spinner(f"The model is writing the take at temperature {temperature:g}…"):
            for _ in stream_branch(lm, message, []):
                pass
        st.session_state["candidates.compare"] = message.trace.trace_id


def lens_view(trace: Trace, i: int) -> None:
    st.subheader("Logit lens: the answer forming through the layers")
    if not st.toggle("Compute the logit lens at this step", key="candidates.lens"):
        st.caption(
            "One forward pass over the context; each layer's state goes through the final norm and head."
        )
        return
    key, start = (lm.name, trace.trace_id, len(trace.steps), i), time.perf_counter()
    cached = key in _lens_tables()
    with common.model_pass("Running one forward pass:"):
        table = _lens_tables().get_or_compute(key, lambda: lens_table(lm, trace, i, k=5))
    seconds = time.perf_counter() - start
    timing = (
        "Taken from the cache: computed earlier for this step."
        if cached
        else f"Computed in {seconds:.2f} s (cached for this step)."
    )
    layer = first_layer_with_answer(table)
    found = f"The emitted token is the top guess from layer {layer} on." if layer is not None else ""
    st.caption(f"{found} {MIDDLE_LAYERS_NOTE} {timing}")
    st.altair_chart(lens_heatmap(table), width="stretch")


ref = common.reply_picker("candidates.reply")
if ref is None:
    with st.expander("…or load a saved conversation", expanded=True):
        transfer.show()
    st.stop()
trace = ref.message.trace
lm = common.model_for(trace)  # the model that wrote this reply (the chat may use another one now)
tok = lm.tokenizer
if not trace.steps:
    st.info("This reply has no recorded steps.")
    st.stop()
if trace.branch_of:
    st.caption(
        f"ℹ️ This reply is a branch: it was forced to differ from its parent at step {trace.branch_step + 1}."
    )
i = choose_step(trace)
links.copy_link(link_slot)
n_shown = step_view(trace, i)
what_if_view(trace, i, n_shown)
whole_reply(trace, i)
branch_view(ref, i)
lens_view(trace, i)
with st.expander("Export or load a conversation", expanded=st.session_state.pop(transfer.FRESH, False)):
    transfer.show()
