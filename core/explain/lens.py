"""The logit lens at one step: what each layer would predict if the model stopped there.

For step k we run one forward pass over the context the model had read (prompt + the first
k reply tokens), take the residual vector of the last position after every layer, and apply
the final norm and the output head to it (core.explain.forward.lens_logits). The last row is
the model's real next-token distribution at that step.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from core.explain.forward import context_ids, hidden_states, lens_logits
from core.models import LoadedModel
from core.tokens import readable
from core.trace import Trace

MIDDLE_LAYERS_NOTE = (
    "The middle rows show mostly punctuation and other very common tokens, and that is expected: the "
    "output head was trained to read only the last layer, so a middle layer's vector, still on its way "
    "there, lands on the tokens that fit almost any context."
)


def lens_probs(lm: LoadedModel, trace: Trace, step: int) -> torch.Tensor:
    """Next-token probabilities read off every layer at `step`: (layers + 1, vocab).

    Row 0 is the input embedding, row L the output of decoder block L (L = n_layers is the
    model's real output). One forward pass; holds the model lock for it.
    """
    if not 0 <= step < len(trace.steps):
        raise IndexError(f"step {step} is outside this reply's {len(trace.steps)} steps")
    states = hidden_states(lm, context_ids(trace, step))  # (layers+1, T, d)
    logits = lens_logits(lm, states[:, -1])  # (layers+1, vocab)
    return torch.softmax(logits.float(), dim=-1)


def lens_table(lm: LoadedModel, trace: Trace, step: int, k: int = 5) -> pd.DataFrame:
    """Layer x top-k table at `step`.

    Columns: layer (0 = embeddings), rank (1..k), token_id, token (readable), prob,
    chosen_prob (the probability this layer gives the token the model actually emitted),
    is_chosen. One row per (layer, rank).
    """
    probs = lens_probs(lm, trace, step)  # (layers+1, vocab)
    return table_from_probs(lm.tokenizer, probs, trace.steps[step].token_id, k)


def table_from_probs(tokenizer: Any, probs: torch.Tensor, chosen_id: int, k: int = 5) -> pd.DataFrame:
    """The long-format table for lens probabilities (layers + 1, vocab)."""
    top_p, top_i = torch.topk(probs, k, dim=-1)  # (layers+1, k)
    chosen = probs[:, chosen_id]  # (layers+1,)
    rows = []
    for layer in range(probs.shape[0]):
        for r in range(k):
            tid = int(top_i[layer, r])
            rows.append(
                {
                    "layer": layer,
                    "rank": r + 1,
                    "token_id": tid,
                    "token": readable(tokenizer, tid),
                    "prob": float(top_p[layer, r]),
                    "chosen_prob": float(chosen[layer]),
                    "is_chosen": tid == chosen_id,
                }
            )
    return pd.DataFrame(rows)


def first_layer_with_answer(table: pd.DataFrame) -> int | None:
    """The first layer from which the emitted token stays top-1 to the end, or None."""
    top1 = table[table["rank"] == 1].sort_values("layer")
    layer = None
    for row in top1.itertuples():
        if row.is_chosen:
            layer = row.layer if layer is None else layer
        else:
            layer = None
    return layer
