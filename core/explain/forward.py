"""One plain forward pass over a trace's tokens, for the views that need hidden states.

Generation never calls this; explanation pages call it on demand and cache the result.
"""

from __future__ import annotations

import torch

from core.models import LoadedModel
from core.trace import Trace


def context_ids(trace: Trace, step: int | None = None) -> list[int]:
    """The ids the model had read when it chose step `step` (prompt + earlier reply tokens).

    step None -> the whole sequence (prompt + every reply token).
    """
    if step is None:
        return trace.full_ids
    return trace.prompt_ids + trace.output_ids[:step]


def hidden_states(lm: LoadedModel, ids: list[int]) -> torch.Tensor:
    """The residual stream at every layer: (layers + 1, T, d_model), fp32.

    Index 0 is the input embeddings, index L the output of decoder block L; the last index
    has the final norm applied already (transformers does that). Holds the model lock.
    """
    with lm.lock, torch.inference_mode():
        out = lm.model(
            input_ids=torch.tensor([ids]), output_hidden_states=True, use_cache=False, logits_to_keep=1
        )
    return torch.stack([h[0] for h in out.hidden_states])  # (layers+1, T, d)


def lens_logits(lm: LoadedModel, states: torch.Tensor) -> torch.Tensor:
    """The logit lens: final norm + output head on each layer's residual vector.

    states: (layers + 1, ..., d_model) as returned by hidden_states -> (layers + 1, ..., vocab).
    subtle: transformers' Llama returns the *last* hidden state with the final norm already
    applied, so it goes straight to the head; the last row then equals the model's real logits.
    """
    norm, head = lm.model.model.norm, lm.model.lm_head
    with torch.inference_mode():
        inner = head(norm(states[:-1]))  # (layers, ..., vocab)
        last = head(states[-1:])  # (1, ..., vocab)
    return torch.cat([inner, last])
