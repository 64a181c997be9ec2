"""Next-word candidates: what the model weighed at each step, read straight off the trace.

Nothing here runs the model. The temperature / top-p "what if" redraws a step's
distribution with core.sampling.sampling_probs (the sampler's own function) over the
recorded top candidates' raw logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from core.html import Chip, probability_colour
from core.sampling import sampling_probs, tokens_for_mass
from core.settings import SamplingSettings
from core.tokens import is_special, readable
from core.trace import Step, Trace

SURE = 0.9  # "over 90% sure"
MIN_LOOP_COPIED = 16  # tokens copied in a row before a repeat counts as a loop
MAX_LOOP_PERIOD = 128  # the longest repeated unit looked for, in tokens (a paragraph)

# steps_table's columns as a reader should see them: (header, help, number format or None).
# The page turns these into st.column_config entries; core stays free of streamlit.
STEP_COLUMNS: dict[str, tuple[str, str, str | None]] = {
    "step": ("step", "Position in the reply; 1 is its first token.", None),
    "token_id": ("token id", "The token's number in the vocabulary.", None),
    "token": ("token", "The token written at this step (· is a space, ↵ a newline).", None),
    "prob": (
        "probability",
        "How likely the model found this token: its raw softmax, temperature 1.",
        "percent",
    ),
    "sample_prob": (
        "chance in the draw",
        "Its probability in the distribution the sampler drew from, after the repetition penalty, "
        "temperature, top-k and top-p. 100% under greedy decoding.",
        "percent",
    ),
    "rank": ("rank", "1 = the model's most likely token; 2 = its second choice; and so on.", None),
    "entropy": (
        "entropy (bits)",
        "How spread out the model's distribution was: 0 = certain, 1 bit = a coin toss between two tokens.",
        "%.2f",
    ),
    "runner_up": ("runner-up", "The most likely token the model did not write here.", None),
    "runner_up_prob": (
        "runner-up probability",
        "How likely that runner-up was: a high value marks a close call, where the reply could have "
        "gone another way.",
        "percent",
    ),
    "top50_mass": (
        "top-50 share",
        "How much of the probability the 50 recorded candidates hold; the what-if views use only them.",
        "percent",
    ),
    "repeats": (
        "in a loop",
        "Ticked where the reply copies text it already wrote, in a loop: high probability there comes "
        "from copying, not from knowing.",
        None,
    ),
}


def runner_up(step: Step) -> tuple[int, float] | None:
    """(token id, raw probability) of the most likely token other than the chosen one."""
    return next(
        ((t, p) for t, p in zip(step.top_ids, step.top_probs, strict=True) if t != step.token_id), None
    )


def steps_table(tokenizer: Any, trace: Trace) -> pd.DataFrame:
    """One row per step of the reply.

    Columns: step (0-based), token_id, token (readable), prob (raw), sample_prob, rank,
    entropy (bits), runner_up (the most likely other token), runner_up_prob, top50_mass,
    repeats (the step is inside a loop that copies earlier text, see find_repetition).
    STEP_COLUMNS gives each a readable header and help.
    """
    loop = find_repetition(trace)
    rows = []
    for i, s in enumerate(trace.steps):
        other = runner_up(s)
        rows.append(
            {
                "step": i,
                "token_id": s.token_id,
                "token": readable(tokenizer, s.token_id),
                "prob": s.prob,
                "sample_prob": s.sample_prob,
                "rank": s.rank,
                "entropy": s.entropy,
                "runner_up": readable(tokenizer, other[0]) if other else "",
                "runner_up_prob": other[1] if other else 0.0,
                "top50_mass": float(sum(s.top_probs)),
                "repeats": loop is not None and loop.start <= i < loop.end,
            }
        )
    return pd.DataFrame(rows, columns=list(STEP_COLUMNS))


def top_candidates(tokenizer: Any, step: Step, n: int = 10) -> pd.DataFrame:
    """The n most likely tokens at a step: rank, token_id, token, prob, sample_prob, chosen.

    The chosen token is always a row: when it ranks below n (a sampled long shot), it comes
    as one extra last row with its own rank, so a chart of these rows always shows it.
    """
    rows = [
        {
            "rank": r + 1,
            "token_id": tid,
            "token": readable(tokenizer, tid),
            "prob": p,
            "sample_prob": sp,
            "chosen": tid == step.token_id,
        }
        for r, (tid, p, sp) in enumerate(step.candidates(n))
    ]
    if not any(row["chosen"] for row in rows):
        rows.append(
            {
                "rank": step.rank,
                "token_id": step.token_id,
                "token": readable(tokenizer, step.token_id),
                "prob": step.prob,
                "sample_prob": step.sample_prob,
                "chosen": True,
            }
        )
    return pd.DataFrame(rows, columns=["rank", "token_id", "token", "prob", "sample_prob", "chosen"])


def tokens_for_90(step: Step) -> int | None:
    """How many top tokens cover 90% of the raw probability; None if the recorded top-50 do not."""
    if not step.top_probs or sum(step.top_probs) < SURE:
        return None
    return tokens_for_mass(torch.tensor(step.top_probs), SURE)


def what_if(
    tokenizer: Any,
    step: Step,
    settings: SamplingSettings,
    n: int = 15,
    context_ids: Sequence[int] | None = None,
) -> pd.DataFrame:
    """The step's distribution under other sampling settings, recomputed from recorded logits.

    subtle: only the top-50 logits were recorded, so both distributions are over those 50
    tokens (renormalised). They usually hold almost all the mass; top50_mass says how much.
    context_ids: the ids the model had read at this step (core.explain.forward.context_ids),
    needed when settings has a repetition penalty: it lowers those of the 50 already in the text.
    Columns: rank, token_id, token, chosen, original (raw softmax over the top 50),
    what_if (sampler's distribution under `settings` over the top 50). The chosen token is
    always a row: when it ranks below n but inside the top 50, it comes as an extra last row.
    """
    settings = settings.validated()
    logits = torch.tensor(step.top_logits, dtype=torch.float32)  # (K,)
    original = torch.softmax(logits, dim=-1)
    local = None
    if settings.repetition_penalty != 1.0:
        if context_ids is None:
            raise ValueError("A what-if with a repetition penalty needs the ids the model had read.")
        where = {tid: r for r, tid in enumerate(step.top_ids)}
        outside = len(step.top_ids)  # an index the penalty ignores: a token outside the top 50
        local = [where.get(t, outside) for t in dict.fromkeys(context_ids)]
    changed = sampling_probs(logits, settings, local)  # (K,)
    shown = list(range(min(n, len(step.top_ids))))
    if step.token_id in step.top_ids[n:]:
        shown.append(step.top_ids.index(step.token_id))
    rows = [
        {
            "rank": r + 1,
            "token_id": step.top_ids[r],
            "token": readable(tokenizer, step.top_ids[r]),
            "chosen": step.top_ids[r] == step.token_id,
            "original": float(original[r]),
            "what_if": float(changed[r]),
        }
        for r in shown
    ]
    return pd.DataFrame(rows, columns=["rank", "token_id", "token", "chosen", "original", "what_if"])


def uncertain_moments(trace: Trace, n: int = 3) -> list[int]:
    """The n closest calls: the steps whose runner-up was most likely, in reply order.

    A chosen token's own probability misses the decisive forks: "capital" at 68% over
    "population" at 27% settles what a reply is about, while a flat spread of synonyms at
    10% each settles little. So steps are ranked by how likely the road not taken was (the
    runner-up's probability); ties go to the less likely chosen token.
    """

    def closeness(i: int) -> tuple[float, float]:
        other = runner_up(trace.steps[i])
        return (-(other[1] if other else 0.0), trace.steps[i].prob)

    return sorted(sorted(range(len(trace.steps)), key=closeness)[:n])


# -- loops ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Repetition:
    """A stretch of the reply that copies text the reply already wrote, over and over.

    start: the first step of the copying (0-based); end: one past its last step;
    source: the step where the copied text was first written; period: tokens per repeat;
    copies: how many whole repeats lie in [start, end); unit_ids: the repeated tokens.
    """

    start: int
    end: int
    source: int
    period: int
    copies: int
    unit_ids: tuple[int, ...]


def find_repetition(trace: Trace) -> Repetition | None:
    """The longest loop in the reply, or None when it has none.

    A loop is a run where every token equals the one `period` tokens before it, with at
    least MIN_LOOP_COPIED tokens (and one whole repeat) copied that way. E.g. the ids
    [5, 1, 2, 3, 1, 2, 3, 1, 2, 3, ...]: period 3, the copying starts at step 4 (0-based).
    When the repeated unit holds a line break, it is cut at the line start, so the unit reads
    as whole lines; when that unit was already written earlier in the reply (a line that comes
    back and then repeats), the copying starts at its first repeat and `source` points there.
    """
    ids = np.asarray(trace.output_ids, dtype=np.int64)  # (n,)
    n = len(ids)
    best: tuple[int, int, int, int] | None = None  # (copied, -period, a, b)
    for p in range(1, min(MAX_LOOP_PERIOD, n // 2) + 1):
        same = np.concatenate([[False], ids[p:] == ids[:-p], [False]])  # same[k + 1]: ids[k + p] == ids[k]
        edges = np.flatnonzero(np.diff(same.astype(np.int8)))  # run starts and ends, alternating
        if not len(edges):
            continue
        lengths = edges[1::2] - edges[::2]
        k = int(np.argmax(lengths))
        a, b = int(edges[2 * k]) + p, int(edges[2 * k + 1]) + p  # ids[a:b] copies ids[a - p : b - p]
        if best is None or (b - a, -p) > best[:2]:
            best = (b - a, -p, a, b)
    if best is None:
        return None
    copied, p, a, b = best[0], -best[1], best[2], best[3]
    if copied < max(MIN_LOOP_COPIED, p):
        return None
    first = a - p  # the first whole unit of the periodic stretch [first, b)
    breaks = [k for k in range(first, a) if "\n" in trace.steps[k].text]
    if breaks and breaks[0] + 1 < a and b - (breaks[0] + 1 + p) >= p:
        first = breaks[0] + 1  # start the unit on a line (the stretch shrinks by less than p)
        a = first + p
    unit = ids[first:a]
    earlier = next(
        (j for j in range(0, first - p + 1) if np.array_equal(ids[j : j + p], unit)),
        None,
    )
    start, source = (first, earlier) if earlier is not None else (a, first)
    return Repetition(start, b, source, p, (b - start) // p, tuple(int(t) for t in unit))


def top_alternatives_text(tokenizer: Any, step: Step, n: int = 5) -> str:
    """Plain text for a chip's hover: the top n candidates with percentages, chosen marked.

    "·Paris 92.1% ◀ chosen\\n·Rome 3.0%\\n..."
    """
    lines = [f"picked {readable(tokenizer, step.token_id)} at {step.prob:.1%} (rank {step.rank})"]
    for tid, p, _ in step.candidates(n):
        mark = "  ◀ chosen" if tid == step.token_id else ""
        lines.append(f"{readable(tokenizer, tid)}  {p:.1%}{mark}")
    return "\n".join(lines)


def percent(p: float) -> str:
    """0.38 -> "38%"; 0.004 -> "0.4%"; 0.00001 -> "<0.1%" (never a misleading "0%")."""
    if p >= 0.01:
        return f"{p:.0%}"
    return f"{p:.1%}" if p >= 0.001 else "<0.1%"


def reply_chips(
    tokenizer: Any,
    trace: Trace,
    marked: int | None = None,
    upto: int | None = None,
    start: int = 0,
    with_prob: bool = False,
) -> list[Chip]:
    """The reply as chips coloured by the chosen token's probability, hover = top 5 alternatives.

    marked: a step to outline (the current position); steps [start, upto) are shown;
    with_prob: the probability written under each chip too.
    Chip text comes from the token ids (core.tokens.readable), never from raw HTML.
    """
    items = []
    for i, s in enumerate(trace.steps[:upto]):
        if i < start:
            continue
        text = readable(tokenizer, s.token_id)
        css = ["marked"] if i == marked else []
        if text.startswith("<0x"):
            css.append("bytes")
        if is_special(tokenizer, s.token_id):
            css.append("special")
        title = f"step {i + 1}: " + top_alternatives_text(tokenizer, s)
        sub = percent(s.prob) if with_prob else None
        items.append(Chip(text, title=title, background=probability_colour(s.prob), sub=sub, css=tuple(css)))
    return items
