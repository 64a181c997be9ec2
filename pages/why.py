"""Why this word? Which tokens of the conversation pushed the model towards the token it chose.

Every number comes from core.explain.attribution (gradients of the model's own logit); the
page picks the reply, the step, the method and the rival token, and draws.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from core.cache import BoundedCache
from core.explain import attribution as attr
from core.explain.attention import AttentionUnavailable
from core.explain.candidates import runner_up
from core.explain.forward import context_ids
from core.html import Chip, chips
from core.tokens import readable
from pages import common, links
from pages.explain_panel import plain_label

STEP, METHOD, RIVAL = "why.step", "why.method", "why.rival"  # URL: ?reply=&step=&method=&rival=
IG_STEPS = 32
POSITIVE, NEGATIVE = "234, 88, 12", "37, 99, 235"  # orange: pushed towards it; blue: away


@st.cache_resource(show_spinner=False)
def _results() -> BoundedCache:
    return BoundedCache(16)  # (model, trace, length, step, method, rival) -> Attribution, (T,) floats


def heat(tokenizer, ids: list[int], scores: np.ndarray) -> str:
    """The conversation the model read, each token shaded by its score (escaped in core.html)."""
    top = float(np.abs(scores).max()) or 1.0
    items = []
    for token_id, score in zip(ids, scores, strict=True):
        colour = POSITIVE if score >= 0 else NEGATIVE
        items.append(
            Chip(
                readable(tokenizer, token_id),
                title=f"score {score:+.3f}",
                background=f"rgba({colour}, {abs(score) / top:.3f})",
            )
        )
    return chips(
        items,
        legend=[(f"rgba({POSITIVE}, 0.8)", "pushed towards it"), (f"rgba({NEGATIVE}, 0.8)", "pushed away")],
        tap=True,
    )


lm = common.chat_model()
common.model_badge(lm)
st.title("🔎 Why this word?")
st.caption(
    "Which tokens of the conversation the model read pushed it towards the token it chose: the system "
    "prompt, every turn and the template tokens, exactly as it read them."
)
link_slot = st.container()
trace, lm = common.explained_reply(
    "why.reply", "This reply has no recorded steps, so there is nothing to explain."
)
tok = lm.tokenizer
step = common.step_picker(trace, STEP, tok)
chosen = trace.steps[step]

names = list(attr.METHODS)
links.url_value("method", METHOD, valid=names.__contains__)
method = st.radio("Method", names, format_func=attr.METHODS.get, horizontal=True, key=METHOD)
options = [None, *[t for t in chosen.top_ids[:10] if t != chosen.token_id]]
links.url_value("rival", RIVAL, int, options.__contains__)
if st.session_state.get(RIVAL) not in options:
    st.session_state[RIVAL] = None
rival = st.selectbox(
    "Why this token rather than…",
    options,
    format_func=lambda t: "(no rival: the chosen token alone)" if t is None else f"“{readable(tok, t)}”",
    key=RIVAL,
    disabled=method == "rollout",
    help="Pick a candidate B: the page then explains the difference of the two logits, A − B.",
)
rival = None if method == "rollout" else rival
links.set_url(method=method, rival=rival)
links.copy_link(link_slot)

ids = context_ids(trace, step)
what = f"“{readable(tok, chosen.token_id)}”" + (
    f" rather than “{readable(tok, rival)}”" if rival is not None else ""
)
key = (lm.name, trace.trace_id, len(trace.steps), step, method, rival)


def compute() -> attr.Attribution:
    if method != "integrated":
        with common.model_pass(f"Attributing {plain_label(what)} over {len(ids):,} tokens:"):
            return attr.compute(lm, trace, step, method, rival)
    label = f"Integrated gradients over {len(ids):,} tokens:"
    with common.model_pass(label, by_layer=False) as report:
        return attr.integrated_gradients(
            lm,
            trace,
            step,
            rival,
            IG_STEPS,
            on_chunk=lambda done, total: report(done / total, f"{done} of {total} points"),
        )


try:
    result = _results().get_or_compute(key, compute)
except AttentionUnavailable as exc:
    st.warning(str(exc))
    st.stop()

shares = attr.category_shares(tok, trace, result)
st.subheader(plain_label(f"Step {step + 1}: {what}"))
st.markdown(f"By {attr.METHODS[method]}: {attr.share_sentence(shares)}.")
if method == "integrated":
    gap = attr.completeness_gap(result)
    said = (
        f"Baseline: {attr.BASELINE}. The scores of the {IG_STEPS} path points add up to "
        f"{result.scores.sum():+.3f}; the logit{' difference' if rival is not None else ''} went from "
        f"{result.baseline_value:+.3f} at the baseline to {result.value:+.3f} (completeness): they miss "
        f"that change by {gap:.0%}."
    )
    if gap > 0.05:
        st.warning(
            said + " This model's logit is rough along the path, so these scores are approximate: "
            "read them as a ranking, and compare with gradient × input.",
            icon="⚠️",
        )
    else:
        st.caption(said)
elif method == "gradient":
    st.caption(f"The logit{' difference' if rival is not None else ''} explained: {result.value:+.3f}.")
else:
    st.caption("Attention rollout follows where attention went through the layers; it is not an attribution.")
st.info(attr.DISAGREE, icon="ℹ️")

st.markdown("**The conversation as the model read it** (tap or hover a token for its score)")
st.html(heat(tok, ids, result.scores))
left, right = st.columns(2)
with left:
    st.markdown("**The 15 tokens that mattered most**")
    st.dataframe(
        attr.top_tokens(tok, trace, result),
        hide_index=True,
        column_config={
            "share": st.column_config.ProgressColumn("share", format="percent", min_value=0.0, max_value=1.0),
            "score": st.column_config.NumberColumn("score", format="%+.3f"),
        },
    )
with right:
    st.markdown("**Per part of the conversation**")
    st.dataframe(
        [{"part": k, "share": v} for k, v in shares.items()],
        hide_index=True,
        column_config={
            "share": st.column_config.ProgressColumn("share", format="percent", min_value=0.0, max_value=1.0)
        },
    )
other = runner_up(chosen)
if other is not None and rival is None and method != "rollout":
    st.caption(
        plain_label(
            f"Try “Why this token rather than…” with “{readable(tok, other[0])}”, the runner-up ({other[1]:.1%})."
        )
    )
