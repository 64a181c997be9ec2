"""The inline explanation under a reply: token chips, uncertain moments, a summary, and links.

Called by the Explain toggle in pages/chat.py (and for each alternative take). Reads only the
reply's trace; nothing here runs the model.
"""

from __future__ import annotations

import re
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlencode

import streamlit as st

from core.cache import BoundedCache
from core.conversation import Message
from core.explain.candidates import find_repetition, reply_chips, runner_up, uncertain_moments
from core.explain.commitment import commitment, commitment_legend, rank_chips, rank_legend, strip_chips
from core.explain.summary import answers_earlier_turn, context_before, percent, summarize
from core.export import explanation_json
from core.html import Chip, chips, probability_legend, text_block
from core.runner import runner_for
from core.tokens import readable
from core.trace import Trace
from pages import common, links

ROOT = Path(__file__).resolve().parent.parent
EXPLAIN_PAGES = [
    ("pages/candidates.py", "Next-word candidates", "🎲"),
    ("pages/why.py", "Why this word?", "🔎"),
    ("pages/tokens.py", "Tokenization", "🧩"),
    ("pages/attention.py", "Attention", "👀"),
    ("pages/embeddings.py", "Embeddings", "🧭"),
    ("pages/walkthrough.py", "From prompt to reply", "🚶"),
]
_VIEWS: BoundedCache[tuple[str, str]] = BoundedCache(32)  # (chips html, summary) per reply
_COMMITMENT: BoundedCache[object] = BoundedCache(32)  # commitment table per reply (one model pass each)
COLOURINGS = {"sure": "Probability", "rank": "Rank", "layer": "Layer"}  # short: a phone fits all three
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!<>|~$])")


def plain_label(text: str) -> str:
    """Model text made inert for a markdown label (page links render markdown)."""
    return _MARKDOWN.sub(r"\\\1", text)


def why_links(items: list[Chip], trace: Trace) -> list[Chip]:
    """Chip i is step i of the reply: tapping it opens its popover, with a link to "Why this
    word?" for that step (the conversation id rides along, so the link also opens in a new tab)."""
    ride = links.ride_along()
    return [
        replace(
            c, more=("🔎 Why this word?", "why?" + urlencode({**ride, "reply": trace.trace_id, "step": i}))
        )
        for i, c in enumerate(items)
    ]


def _views(message: Message) -> tuple[str, str]:
    trace = message.trace
    tok = common.model_for(trace, full=False).tokenizer  # the tokenizer of the model that wrote it
    key = (trace.trace_id, len(trace.steps), trace.finish_reason, st.query_params.get("c"))
    return _VIEWS.get_or_compute(
        key,
        lambda: (
            chips(why_links(reply_chips(tok, trace), trace), probability_legend(), tap=True),
            summarize(tok, trace),
        ),
    )


def commitment_strip(message: Message) -> None:
    """Chips coloured by the layer from which the lens kept each token as its top choice."""
    trace = message.trace
    lm = common.model_for(trace)
    key = (trace.trace_id, len(trace.steps))
    reading = f"Reading every layer for the reply's {len(trace.steps):,} tokens:"
    with nullcontext() if key in _COMMITMENT else common.model_pass(reading):  # a bar only for a pass
        table = _COMMITMENT.get_or_compute(key, lambda: commitment(lm, trace))
    n_layers = runner_for(lm).facts.n_layers
    st.caption(
        f"Each chip is one token; the small number is the layer from which the logit lens had it as the "
        f"top choice at every layer up to the output (layer {n_layers}). Darker: settled earlier. Tap a chip "
        "for its rank too, and a link to why the model chose it."
    )
    st.html(
        chips(
            why_links(strip_chips(lm.tokenizer, table, n_layers), trace),
            commitment_legend(n_layers),
            tap=True,
        )
    )


def show(message: Message) -> None:
    """Chips, summary, the three least-sure moments and links, for one reply."""
    trace = message.trace
    if trace is None or not trace.steps:
        st.caption("This reply has no recorded steps to explain.")
        return
    written_by = common.model_for(trace, full=False, stop=False)  # says why when it is not here
    if written_by is None:
        return
    tok = written_by.tokenizer
    chip_html, summary = _views(message)
    with st.container(border=True, key=f"explain.panel.{message.id}"):
        colour_by = st.segmented_control(
            "Colour the tokens by",
            list(COLOURINGS),
            format_func=COLOURINGS.get,
            default="sure",
            key=f"explain.colour.{message.id}",
            help="Probability: how sure the model was of the chosen token. Rank (as in GLTR): where the chosen "
            "token stood among all candidates, top 1, top 10, top 100 or beyond. Layer: the first layer from "
            "which the logit lens keeps the token as its top choice up to the output (one model pass).",
        )
        if colour_by == "rank":
            greedy = trace.settings.greedy and all(s.rank == 1 for s in trace.steps)
            st.caption(
                "Each chip is one token, coloured by the chosen token's rank among all candidates. Tap a chip "
                "for a link to why the model chose it."
                + (
                    " This reply was written greedily (temperature 0), so every token is the top 1: the "
                    "colours tell more on a reply written at a higher temperature."
                    if greedy
                    else ""
                )
            )
            st.html(chips(why_links(rank_chips(tok, trace), trace), rank_legend(), tap=True))
        elif colour_by == "layer":
            commitment_strip(message)
        else:
            st.caption(
                "Each chip is one token, coloured by how sure the model was of it; a dark badge is a special "
                "token such as `<|im_end|>`, the end of the turn. Tap a chip for the top 5 and a link to why "
                "the model chose it."
            )
            st.html(chip_html)
        st.html(text_block(summary))
        st.markdown(
            "**Where it was least sure**: the closest calls, where the runner-up was likeliest",
            help="A pick at 68% can still be a close call when the runner-up had 27%, and that one step can "
            "decide what the whole reply is about. So these are the steps whose runner-up was most likely.",
        )
        for i in uncertain_moments(trace, 3):
            step = trace.steps[i]
            other = runner_up(step)
            before = context_before(tok, trace, i) or "(start of the reply)"
            rival = f" over “{readable(tok, other[0])}” {percent(other[1])}" if other else ""
            label = (
                f"Step {i + 1}: “{readable(tok, step.token_id)}” {percent(step.prob)}{rival}, "
                f"after “{before}”"
            )
            st.page_link(
                "pages/candidates.py",
                label=plain_label(label),
                icon="🎯",
                query_params={"reply": trace.trace_id, "step": str(i)},
            )
        loop = find_repetition(trace)
        if loop is not None:
            st.page_link(
                "pages/candidates.py",
                label=plain_label(
                    f"A loop starts at step {loop.start + 1}: from there it copies the text first written "
                    f"at step {loop.source + 1}"
                ),
                icon="🔁",
                query_params={"reply": trace.trace_id, "step": str(loop.start)},
            )
            # the row that chose the first copied token: where the model looks back at the source
            st.page_link(
                "pages/attention.py",
                label=plain_label(
                    f"See the attention that copies: the row that chose step {loop.start + 1}'s "
                    f"“{readable(tok, trace.steps[loop.start].token_id)}”, head by head"
                ),
                icon="👀",
                query_params={
                    "reply": trace.trace_id,
                    "step": str(loop.start),
                    "view": "token",
                    "mode": "all",
                },
            )
        if answers_earlier_turn(tok, trace) is not None:  # the summary says so; the Turn view measures it
            st.page_link(
                "pages/attention.py",
                label="How much of its attention went to the current question: the Turn view",
                icon="↩️",
                query_params={"reply": trace.trace_id, "view": "turns"},
            )
        st.markdown("**Explain this reply on**")
        available = [p for p in EXPLAIN_PAGES if (ROOT / p[0]).is_file()]
        cols = st.columns(3)
        for k, (path, title, icon) in enumerate(available):
            with cols[k % 3]:
                st.page_link(path, label=title, icon=icon, query_params={"reply": trace.trace_id})
        st.download_button(
            "⬇ Explanation (JSON)",
            data=lambda: explanation_json(tok, message),
            file_name=f"glassbox-reply-{trace.trace_id}.json",
            mime="application/json",
            key=f"explain.download.{message.id}",
            on_click="ignore",
        )
