"""One plain forward pass over a trace's tokens, for the views that need hidden states.

Generation never calls this; explanation pages call it on demand and cache the result.
Both passes go through the model interface (core.runner), so they work for any architecture.
"""

from __future__ import annotations

import torch

from core.models import LoadedModel
from core.runner import runner_for
from core.trace import Trace


def context_ids(trace: Trace, step: int | None = None) -> list[int]:
    """The ids the model had read when it chose step `step` (prompt + earlier reply tokens).

    step None -> the whole sequence (prompt + every reply token).
    """
    if step is None:
        return trace.full_ids
    return trace.prompt_ids + trace.output_ids[:step]


def hidden_states(lm: LoadedModel, ids: list[int]) -> torch.Tensor:
    """The residual stream at every layer: (layers + 1, T, d_model), fp32 (Runner.hidden_states).

    Index 0 is the input embeddings (scaled as the model scales them), index L the output of
    decoder block L; the last index has the final norm applied already. Holds the model lock.
    """
    return runner_for(lm).hidden_states(ids)


def lens_logits(lm: LoadedModel, states: torch.Tensor) -> torch.Tensor:
    """The logit lens: final norm + output head on each layer's residual vector (Runner.lens).

    states: (layers + 1, ..., d_model) as returned by hidden_states -> (layers + 1, ..., vocab).
    subtle: the last state has the final norm applied already, so it goes straight to the head;
    the last row then equals the model's real logits (soft-capping included where the model has it).
    """
    return runner_for(lm).lens(states)
