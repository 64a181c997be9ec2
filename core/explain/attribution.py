"""Why this word? Which tokens of the conversation pushed the model towards the token it chose.

At reply step s the model read context_ids(trace, s): the whole prompt (system prompt, every
turn, the template tokens) and the reply so far, and chose token A. An attribution gives each
token it read a score for f, the next-token logit of A, or the difference of logits A − B
("why A rather than B?"):

- gradient × input (the default): one forward and one backward pass. score_i = x_i · ∂f/∂x_i,
  x_i the input vector of token i. A first-order estimate: how f would move if x_i shrank to 0.
- integrated gradients: (x_i − b_i) times the gradient averaged along the straight path from a
  baseline b to the real input (m midpoints). In the limit its scores add up to f(real) −
  f(baseline) (completeness). b keeps the template tokens and puts the end-of-turn token's
  vector everywhere else (BASELINE). Along that path this model's logit is rough, so at 32
  points the sum can miss the change by 10–50%: completeness_gap() says by how much, and the
  page shows it.
- attention rollout (Abnar & Zuidema, 2020): how much of the last position's attention flows
  back to each token through all the layers, heads averaged and the residual counted as half.
  Shown for comparison: it is not an attribution, since it ignores what the values carry and
  everything the MLPs do.

Scores are signed: positive pushed towards A (or towards A over B), negative away from it.
Shares per turn add up the absolute scores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from core.explain.attention import CATEGORIES, AttentionUnavailable, eager_fits, token_groups
from core.explain.forward import context_ids
from core.models import LoadedModel
from core.runner import runner_for
from core.tokens import readable, special_ids
from core.trace import Trace

BASELINE = "every token but the template tokens replaced by the end-of-turn token's vector"
METHODS = {
    "gradient": "gradient × input",
    "integrated": "integrated gradients",
    "rollout": "attention rollout (not an attribution)",
}
DISAGREE = (
    "The methods can disagree: gradient × input looks at the slope at the real input only, "
    "integrated gradients adds the slopes up along the whole way from a neutral input (every word "
    "replaced by the end-of-turn token) to the real one, and attention rollout follows where "
    "attention went, which is not the same as what changed the prediction."
)


@dataclass(frozen=True)
class Attribution:
    """One step's scores over the tokens the model read (positions 0 .. n-1)."""

    method: str  # a key of METHODS
    step: int  # the reply step explained (0-based)
    target: int  # the chosen token id, A
    contrast: int | None  # B, or None for A alone
    scores: np.ndarray  # (n,) signed, float64
    value: float  # f at the real input: the logit of A (minus that of B)
    baseline_value: float | None  # f at the baseline (integrated gradients)
    steps: int | None = None  # integrated gradients' path steps

    @property
    def n(self) -> int:
        return len(self.scores)


def _context(trace: Trace, step: int) -> list[int]:
    if not 0 <= step < len(trace.steps):
        raise ValueError(f"step must be in 0..{len(trace.steps) - 1}, got {step}")
    return context_ids(trace, step)


def gradient_x_input(lm: LoadedModel, trace: Trace, step: int, contrast: int | None = None) -> Attribution:
    ids = _context(trace, step)
    target = trace.steps[step].token_id
    vectors, grads, values = runner_for(lm).input_gradients(ids, target, contrast)
    scores = (vectors * grads[0]).sum(-1).double().numpy()
    return Attribution("gradient", step, target, contrast, scores, float(values[0]), None)


def integrated_gradients(
    lm: LoadedModel,
    trace: Trace,
    step: int,
    contrast: int | None = None,
    steps: int = 32,
    on_chunk: Callable[[int, int], None] | None = None,
) -> Attribution:
    """The midpoint rule over `steps` points of the straight path baseline -> input, plus one
    pass at each end. The baseline (BASELINE) keeps the template tokens and puts the
    end-of-turn token's vector at every other position: all-zero vectors make the logit jump
    about wildly near the baseline (the norms blow tiny vectors up), and the sum then misses
    the logit by several times."""
    ids = _context(trace, step)
    target = trace.steps[step].token_id
    runner = runner_for(lm)
    neutral = lm.tokenizer.eos_token_id if lm.tokenizer.eos_token_id is not None else 0
    special = special_ids(lm.tokenizer)
    vectors = runner.embed(ids)
    baseline = runner.embed([neutral])[0].expand_as(vectors).clone()
    keep = [i for i, t in enumerate(ids) if t in special]
    baseline[keep] = vectors[keep]
    alphas = [(k + 0.5) / steps for k in range(steps)] + [0.0, 1.0]  # the last two: f at both ends
    vectors, grads, values = runner.input_gradients(
        ids, target, contrast, alphas, on_chunk=on_chunk, baseline=baseline
    )
    scores = ((vectors - baseline) * grads[:steps].mean(0)).sum(-1).double().numpy()
    return Attribution(
        "integrated", step, target, contrast, scores, float(values[-1]), float(values[-2]), steps=steps
    )


def completeness_gap(att: Attribution) -> float | None:
    """How far integrated gradients' scores miss the logit's change from the baseline, as a
    share of that change (0: they share it out exactly). None for the other methods."""
    if att.baseline_value is None:
        return None
    change = att.value - att.baseline_value
    return abs(float(att.scores.sum()) - change) / max(abs(change), 1e-9)


def rollout(lm: LoadedModel, trace: Trace, step: int) -> Attribution:
    """Attention rollout for the position that chose the step's token (heads averaged, residual 0.5)."""
    ids = _context(trace, step)
    runner = runner_for(lm)
    if not eager_fits(runner, len(ids)):
        raise AttentionUnavailable(
            f"Attention rollout needs every layer's whole attention over {len(ids):,} tokens, more than "
            "this app holds at once; the gradient methods work at this length."
        )
    flow = torch.zeros(len(ids), dtype=torch.float64)
    flow[-1] = 1.0  # the row that chose the token
    for weights in reversed(runner.eager_attention(ids)):  # from the last layer down to the first
        mixed = 0.5 * weights.mean(0).double() + 0.5 * torch.eye(len(ids), dtype=torch.float64)
        flow = flow @ (mixed / mixed.sum(-1, keepdim=True))
    target = trace.steps[step].token_id
    return Attribution("rollout", step, target, None, flow.numpy(), float("nan"), None)


def compute(
    lm: LoadedModel, trace: Trace, step: int, method: str, contrast: int | None = None, **kw: Any
) -> Attribution:
    if method == "gradient":
        return gradient_x_input(lm, trace, step, contrast)
    if method == "integrated":
        return integrated_gradients(lm, trace, step, contrast, **kw)
    if method == "rollout":
        return rollout(lm, trace, step)
    raise ValueError(f"unknown method {method!r}")


# -- views ------------------------------------------------------------------------------------
def category_shares(tokenizer: Any, trace: Trace, att: Attribution) -> dict[str, float]:
    """Share of the absolute scores per part of the conversation (attention.CATEGORIES)."""
    groups, group_of = token_groups(tokenizer, trace)
    weight = np.abs(att.scores)
    total = float(weight.sum()) or 1.0
    out = dict.fromkeys(CATEGORIES, 0.0)
    for position, g in enumerate(group_of[: att.n]):
        out[groups[g].category] += float(weight[position]) / total
    return out


def share_sentence(shares: dict[str, float]) -> str:
    """ "52% from the current question, 31% from earlier turns, 17% from template tokens" (largest first)."""
    names = {
        "System prompt": "the system prompt",
        "Earlier turns": "earlier turns",
        "Current question": "the current question",
        "Template tokens": "template tokens",
        "This reply so far": "its own reply so far",
    }
    parts = [(v, names[k]) for k, v in shares.items() if round(v * 100) > 0]
    return ", ".join(f"{v:.0%} from {name}" for v, name in sorted(parts, reverse=True))


def top_tokens(tokenizer: Any, trace: Trace, att: Attribution, k: int = 15) -> pd.DataFrame:
    """The k tokens with the largest absolute score: position, token, part, score, share."""
    groups, group_of = token_groups(tokenizer, trace)
    ids = context_ids(trace, att.step)
    order = np.argsort(-np.abs(att.scores), kind="stable")[:k]
    total = float(np.abs(att.scores).sum()) or 1.0
    return pd.DataFrame(
        {
            "position": order,
            "token": [readable(tokenizer, ids[i]) for i in order],
            "part": [groups[group_of[i]].name for i in order],
            "score": att.scores[order],
            "share": np.abs(att.scores[order]) / total,
        }
    )


def deletion_curve(
    lm: LoadedModel,
    trace: Trace,
    step: int,
    att: Attribution,
    ks: tuple[int, ...] = (1, 3, 5),
    draws: int = 5,
    seed: int = 0,
) -> dict[int, tuple[float, float]]:
    """Faithfulness: for each k, how much the chosen token's probability drops when the k most
    positively attributed tokens are deleted (their input vectors set to 0), against the mean
    drop for k random tokens ({k: (attributed, random)})."""
    rng = np.random.default_rng(seed)
    ids, token = context_ids(trace, step), trace.steps[step].token_id
    order = np.argsort(-att.scores, kind="stable")
    chosen = {k: order[:k].tolist() for k in ks}
    drawn = {k: [rng.choice(len(ids), k, replace=False).tolist() for _ in range(draws)] for k in ks}
    deletions = [[], *(chosen[k] for k in ks), *(d for k in ks for d in drawn[k])]
    probs = runner_for(lm).deletion_probs(ids, deletions)[:, token].double().numpy()  # one batch
    drops = probs[0] - probs[1:]  # the full input first, then each deletion
    return {
        k: (float(drops[n]), float(drops[len(ks) + n * draws : len(ks) + (n + 1) * draws].mean()))
        for n, k in enumerate(ks)
    }
