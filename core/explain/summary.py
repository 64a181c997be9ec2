"""A plain-language summary of how sure the model was while writing a reply."""

from __future__ import annotations

from typing import Any

from core.explain.candidates import SURE
from core.tokens import readable
from core.trace import Trace


def hardest_step(trace: Trace) -> int | None:
    """The step whose chosen token had the lowest probability (ties: higher entropy), or None."""
    if not trace.steps:
        return None
    return min(range(len(trace.steps)), key=lambda i: (trace.steps[i].prob, -trace.steps[i].entropy))


def context_before(tokenizer: Any, trace: Trace, step: int, n_tokens: int = 4) -> str:
    """The few words the model had just written before `step` (plain text, one line)."""
    text = "".join(s.text for s in trace.steps[max(0, step - n_tokens) : step])
    return " ".join(text.split())[-40:]


def percent(p: float) -> str:
    """0.38 -> "38%"; 0.004 -> "0.4%"; 0.00001 -> "<0.1%" (never a misleading "0%")."""
    if p >= 0.01:
        return f"{p:.0%}"
    return f"{p:.1%}" if p >= 0.001 else "<0.1%"


def summarize(tokenizer: Any, trace: Trace) -> str:
    """E.g. "The model was over 90% sure of 41 of 52 tokens. Its hardest choice was after
    'capital of', where it picked ' France' (38%) over ' Italy' (21%)."
    """
    n = len(trace.steps)
    if n == 0:
        return "The model wrote nothing for this reply, so there is nothing to explain."
    sure = sum(1 for s in trace.steps if s.prob > SURE)
    parts = [f"The model was over {SURE:.0%} sure of {sure} of {n} token{'s' if n != 1 else ''}."]
    i = hardest_step(trace)
    step = trace.steps[i]
    picked = f"'{readable(tokenizer, step.token_id)}' ({percent(step.prob)})"
    before = context_before(tokenizer, trace, i)
    where = f"after '{before}'" if before else "at the very start of the reply"
    other = next(
        ((t, p) for t, p in zip(step.top_ids, step.top_probs, strict=True) if t != step.token_id), None
    )
    if other is None:
        parts.append(f"Its hardest choice (step {i + 1}) was {where}, where it picked {picked}.")
    else:
        rival = f"'{readable(tokenizer, other[0])}' ({percent(other[1])})"
        parts.append(f"Its hardest choice (step {i + 1}) was {where}, where it picked {picked} over {rival}.")
    if step.rank > 1:
        if trace.branch_step == i:
            why = "it was picked by hand to branch the reply there."
        elif trace.settings.greedy:
            why = (
                "greedy decoding never picks it, so it was written in, not chosen (a forced or edited step)."
            )
        else:
            why = (
                f"the sampler's temperature ({trace.settings.temperature:g}) let a less likely token through."
            )
        parts.append(f"That token was only the model's choice number {step.rank}: {why}")
    mean_entropy = sum(s.entropy for s in trace.steps) / n
    parts.append(f"On average it hesitated between about {2**mean_entropy:.1f} likely tokens per step.")
    return " ".join(parts)
