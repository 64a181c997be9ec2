"""The commitment strip: at which layer the model settled on each token of its reply.

For reply token k, the logit lens (final norm + output head on a layer's residual vector) is
read at the position that chose it, at every layer. The token's *commitment layer* is the
first layer from which the lens has it as top-1 at that layer and every layer after, through
the last (where the lens is the model's real output). A token the model did not rank first
at the last layer (a sampled runner-up) has none.

Computed from one forward pass over prompt + reply with the hidden states of every layer
(Runner.hidden_states), not one pass per step. The output head is applied from the last layer
down, and only to the positions still top-1 at every layer above, so a reply whose tokens are
settled in the late layers costs a few head products, not one per layer.

The GLTR-style colouring (Gehrmann et al., 2019) needs no pass at all: the chosen token's rank
in the model's own distribution was recorded by the decode loop at every step.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from core.html import Chip
from core.runner import runner_for
from core.tokens import is_special, readable
from core.trace import Trace

# (highest rank in the bucket, label, colour): GLTR's green, yellow, red and purple
RANK_BUCKETS: list[tuple[int | None, str, str]] = [
    (1, "top 1", "#86efac"),
    (10, "top 10", "#fde68a"),
    (100, "top 100", "#fca5a5"),
    (None, "beyond 100", "#c4b5fd"),
]


def commitment(lm: Any, trace: Trace) -> pd.DataFrame:
    """One row per reply token: step, token_id, token, rank (recorded), final_top1 (the last
    layer's top-1 id), commit_layer (0 = the embeddings, n_layers = the output; None when the
    token was not top-1 at the last layer). Holds the model lock for one forward pass."""
    n = len(trace.steps)
    if n == 0:
        return pd.DataFrame(columns=["step", "token_id", "token", "rank", "final_top1", "commit_layer"])
    runner = runner_for(lm)
    prompt = len(trace.prompt_ids)
    # the last reply token is read by nobody: the context that chose step k ends at position prompt + k - 1
    states = runner.hidden_states(trace.prompt_ids + trace.output_ids[:-1])  # (layers+1, T, d)
    rows = states[:, prompt - 1 : prompt - 1 + n]  # (layers+1, n, d): the positions that chose each token
    chosen = torch.tensor(trace.output_ids)  # (n,)
    last = rows.shape[0] - 1
    commit = torch.full((n,), -1, dtype=torch.long)
    still = torch.arange(n)  # positions whose token is top-1 at every layer looked at so far
    norm = runner.final_norm()
    final_top1 = torch.full((n,), -1, dtype=torch.long)
    with torch.inference_mode():
        for layer in range(last, -1, -1):
            if len(still) == 0:
                break
            x = rows[layer, still]  # (m, d)
            # subtle: the last layer's state already went through the final norm (Runner.lens)
            top = runner.unembed(x if layer == last else norm(x)).argmax(-1)  # (m,)
            if layer == last:
                final_top1 = top.clone()
            kept = top == chosen[still]
            commit[still[kept]] = layer
            still = still[kept]
    tokenizer = lm.tokenizer
    return pd.DataFrame(
        {
            "step": range(n),
            "token_id": trace.output_ids,
            "token": [readable(tokenizer, t) for t in trace.output_ids],
            "rank": [s.rank for s in trace.steps],
            "final_top1": final_top1.tolist(),
            "commit_layer": [int(c) if c >= 0 else None for c in commit.tolist()],
        }
    )


def rank_bucket(rank: int) -> tuple[str, str]:
    """(label, colour) of the GLTR bucket a rank falls in."""
    for top, label, colour in RANK_BUCKETS:
        if top is None or rank <= top:
            return label, colour
    raise AssertionError("unreachable: the last bucket has no bound")


def layer_colour(layer: int | None, n_layers: int) -> str:
    """Early commitment dark blue, late light blue; never top-1 grey."""
    if layer is None:
        return "#e5e7eb"
    share = layer / max(n_layers, 1)  # 0 = settled at the embeddings, 1 = only at the output
    light = int(55 + 40 * share)  # lightness %: 55 (early) .. 95 (late); the chip text stays dark
    return f"hsl(212, 80%, {light}%)"


def commitment_legend(n_layers: int) -> list[tuple[str, str]]:
    """Four points of the blue ramp, by the layer they stand for, and the grey of "never"."""
    marks = sorted({0, n_layers // 3, 2 * n_layers // 3, n_layers})
    return [(layer_colour(m, n_layers), f"layer {m}") for m in marks] + [
        (layer_colour(None, n_layers), "never top-1 (sampled)")
    ]


def rank_legend() -> list[tuple[str, str]]:
    return [(colour, label) for _, label, colour in RANK_BUCKETS]


def _hover(row: Any, n_layers: int) -> str:
    layer = row.commit_layer
    where = (
        "not the top-1 at the last layer (it was sampled)"
        if layer is None
        else "top-1 from the embeddings on"
        if layer == 0
        else f"top-1 from layer {layer} of {n_layers} on"
    )
    return f"step {row.step + 1}: {where} · rank {row.rank} in the model's distribution ({rank_bucket(row.rank)[0]})"


def strip_chips(tokenizer: Any, table: pd.DataFrame, n_layers: int, colour_by: str = "layer") -> list[Chip]:
    """The reply as chips coloured by commitment layer ("layer") or by GLTR rank bucket ("rank");
    the sub-label is the layer, and hovering shows both."""
    items = []
    for row in table.itertuples(index=False):
        colour = (
            layer_colour(row.commit_layer, n_layers) if colour_by == "layer" else rank_bucket(row.rank)[1]
        )
        css = ("special",) if is_special(tokenizer, row.token_id) else ()
        sub = "–" if row.commit_layer is None else str(row.commit_layer)
        items.append(Chip(row.token, title=_hover(row, n_layers), background=colour, sub=sub, css=css))
    return items


def rank_chips(tokenizer: Any, trace: Trace) -> list[Chip]:
    """GLTR colouring from the trace alone (no pass): each chip by its recorded rank."""
    items = []
    for i, step in enumerate(trace.steps):
        label, colour = rank_bucket(step.rank)
        css = ("special",) if is_special(tokenizer, step.token_id) else ()
        title = f"step {i + 1}: rank {step.rank} in the model's distribution ({label})"
        items.append(Chip(readable(tokenizer, step.token_id), title=title, background=colour, css=css))
    return items
