"""Next-word candidates: what the model weighed at each step, read straight off the trace.

Nothing here runs the model. The temperature / top-p "what if" redraws a step's
distribution with core.sampling.sampling_probs (the sampler's own function) over the
recorded top candidates' raw logits.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from core.html import Chip, probability_colour
from core.sampling import sampling_probs, tokens_for_mass
from core.settings import SamplingSettings
from core.tokens import is_special, readable
from core.trace import Step, Trace

SURE = 0.9  # "over 90% sure"


def steps_table(tokenizer: Any, trace: Trace) -> pd.DataFrame:
    """One row per step of the reply.

    Columns: step (0-based), token_id, token (readable), prob (raw), sample_prob, rank,
    entropy (bits), runner_up (the most likely other token), runner_up_prob, top50_mass.
    """
    rows = []
    for i, s in enumerate(trace.steps):
        other = next(((t, p) for t, p in zip(s.top_ids, s.top_probs, strict=True) if t != s.token_id), None)
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
            }
        )
    columns = ["step", "token_id", "token", "prob", "sample_prob", "rank", "entropy"]
    columns += ["runner_up", "runner_up_prob", "top50_mass"]
    return pd.DataFrame(rows, columns=columns)


def top_candidates(tokenizer: Any, step: Step, n: int = 10) -> pd.DataFrame:
    """The n most likely tokens at a step: rank, token_id, token, prob, sample_prob, chosen."""
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
    return pd.DataFrame(rows, columns=["rank", "token_id", "token", "prob", "sample_prob", "chosen"])


def tokens_for_90(step: Step) -> int | None:
    """How many top tokens cover 90% of the raw probability; None if the recorded top-50 do not."""
    if not step.top_probs or sum(step.top_probs) < SURE:
        return None
    return tokens_for_mass(torch.tensor(step.top_probs), SURE)


def what_if(tokenizer: Any, step: Step, settings: SamplingSettings, n: int = 15) -> pd.DataFrame:
    """The step's distribution under other sampling settings, recomputed from recorded logits.

    subtle: only the top-50 logits were recorded, so both distributions are over those 50
    tokens (renormalised). They usually hold almost all the mass; top50_mass says how much.
    Columns: rank, token_id, token, chosen, original (raw softmax over the top 50),
    what_if (sampler's distribution under `settings` over the top 50).
    """
    logits = torch.tensor(step.top_logits, dtype=torch.float32)  # (K,)
    original = torch.softmax(logits, dim=-1)
    changed = sampling_probs(logits, settings.validated())  # (K,)
    rows = [
        {
            "rank": r + 1,
            "token_id": tid,
            "token": readable(tokenizer, tid),
            "chosen": tid == step.token_id,
            "original": float(original[r]),
            "what_if": float(changed[r]),
        }
        for r, tid in enumerate(step.top_ids[:n])
    ]
    return pd.DataFrame(rows, columns=["rank", "token_id", "token", "chosen", "original", "what_if"])


def uncertain_moments(trace: Trace, n: int = 3) -> list[int]:
    """The n steps where the model was least sure of what it wrote (lowest chosen probability).

    Ties are broken by higher entropy; the result is in reply order.
    """
    order = sorted(range(len(trace.steps)), key=lambda i: (trace.steps[i].prob, -trace.steps[i].entropy))
    return sorted(order[:n])


def top_alternatives_text(tokenizer: Any, step: Step, n: int = 5) -> str:
    """Plain text for a chip's hover: the top n candidates with percentages, chosen marked.

    "·Paris 92.1% ◀ chosen\\n·Rome 3.0%\\n..."
    """
    lines = [f"picked {readable(tokenizer, step.token_id)} at {step.prob:.1%} (rank {step.rank})"]
    for tid, p, _ in step.candidates(n):
        mark = "  ◀ chosen" if tid == step.token_id else ""
        lines.append(f"{readable(tokenizer, tid)}  {p:.1%}{mark}")
    return "\n".join(lines)


def reply_chips(
    tokenizer: Any, trace: Trace, marked: int | None = None, upto: int | None = None
) -> list[Chip]:
    """The reply as chips coloured by the chosen token's probability, hover = top 5 alternatives.

    marked: a step to outline (the current position); upto: show only steps [0, upto).
    Chip text comes from the token ids (core.tokens.readable), never from raw HTML.
    """
    items = []
    for i, s in enumerate(trace.steps[:upto]):
        text = readable(tokenizer, s.token_id)
        css = ["marked"] if i == marked else []
        if text.startswith("<0x"):
            css.append("bytes")
        if is_special(tokenizer, s.token_id):
            css.append("special")
        title = f"step {i + 1}: " + top_alternatives_text(tokenizer, s)
        items.append(Chip(text, title=title, background=probability_colour(s.prob), css=tuple(css)))
    return items
