"""The data for "From prompt to reply": one real step of one reply, stage by stage.

Every number comes from the model, through the model interface (core.runner): the embedding
row is the model's own table, the layer trajectory and the logit lens come from one plain
forward pass (core.explain.forward), the attention row is the attention page's own pass asked
for one row (core.explain.attention.attention_at), and every "what if" distribution comes from
core.sampling.sampling_probs, the decode loop's own code.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from core.explain.attention import AttentionUnavailable, attention_at
from core.explain.forward import context_ids, hidden_states, lens_logits
from core.models import LoadedModel
from core.runner import runner_for
from core.sampling import sampling_probs
from core.settings import SamplingSettings
from core.tokens import is_special, readable
from core.trace import Trace


@dataclass
class StepWalk:
    """Everything the walkthrough shows for step `step` of a trace.

    context: the ids the model read (prompt + earlier reply tokens); the last one is the
    "current position" whose vector becomes the next-token scores. Its attention is the one
    that chose reply token `step`: the same row as step `step` on the attention page.
    """

    step: int
    context: list[int]
    embedding: np.ndarray  # (d_model,) input embedding row of the last context token (unscaled)
    layers: pd.DataFrame  # one row per residual stream: layer, norm, cosine_to_final, lens_*
    attention: np.ndarray | None  # (layers, heads, T) attention of the last position over the context
    logits: torch.Tensor  # (vocab,) the real next-token scores (fp32)
    attention_unavailable: str | None = None  # why attention is None: one sentence for the page

    @property
    def last_id(self) -> int:
        return self.context[-1]

    @property
    def position(self) -> int:
        """The current position: P + step - 1 (core.explain.attention.step_position)."""
        return len(self.context) - 1

    @property
    def embedding_norm(self) -> float:
        return float(np.linalg.norm(self.embedding))


def context_tokens(lm: LoadedModel, trace: Trace, step: int) -> pd.DataFrame:
    """The context the model read at `step`, one row per token.

    Columns: position, token_id, text (readable), role ("system"/"user"/"assistant"),
    kind ("header"/"content"/"footer"/"reply"), special (bool).
    """
    ids = context_ids(trace, step)
    roles = ["assistant"] * len(ids)
    kinds = ["reply"] * len(ids)
    for span in trace.spans:
        for pos in range(span.start, span.end):
            roles[pos], kinds[pos] = span.role, span.kind
    return pd.DataFrame(
        {
            "position": range(len(ids)),
            "token_id": ids,
            "text": [readable(lm.tokenizer, i) for i in ids],
            "role": roles,
            "kind": kinds,
            "special": [is_special(lm.tokenizer, i) for i in ids],
        }
    )


def embedding_row(lm: LoadedModel, token_id: int) -> np.ndarray:
    """Row `token_id` of the model's input embedding table: (d_model,) fp32.

    The table's own row; a model with facts.embedding_scale != 1 (Gemma) multiplies it by
    that before the first layer.
    """
    with torch.inference_mode():
        return runner_for(lm).embedding_matrix()[int(token_id)].float().numpy().copy()


def embedding_cells(row: np.ndarray, width: int = 64) -> pd.DataFrame:
    """A vector laid out as a grid of cells for a heatmap: (index, row, col, value)."""
    idx = np.arange(row.shape[0])
    return pd.DataFrame({"index": idx, "row": idx // width, "col": idx % width, "value": row})


def layer_table(lm: LoadedModel, states: torch.Tensor) -> pd.DataFrame:
    """How the last position's vector changes through the stack, and what it "says" at each layer.

    states: (layers + 1, d_model), the last position's residual stream from hidden_states.
    Row 0 is the input embedding, row L the output of decoder block L (the last row already
    has the final norm applied, so it is exactly what the output head reads).
    Columns: layer, stage, norm (of the raw residual vector; the last row after the final
    norm), cosine_to_final (after the final norm), lens_id, lens_token, lens_prob.
    """
    states = states.float()
    with torch.inference_mode():
        # Compare what the output head would read at each layer (final norm applied, as the
        # logit lens does) with what it reads at the end. subtle: on the raw residual a few
        # huge dimensions dominate and the cosine says little.
        norm = runner_for(lm).final_norm()
        normed = torch.cat([norm(states[:-1]), states[-1:]])  # (layers+1, d)
    cos = torch.nn.functional.cosine_similarity(normed, normed[-1:], dim=-1)  # (layers+1,)
    probs = torch.softmax(lens_logits(lm, states).float(), dim=-1)  # (layers+1, vocab)
    top_p, top_id = probs.max(dim=-1)
    n = states.shape[0]
    return pd.DataFrame(
        {
            "layer": range(n),
            "stage": ["embedding"]
            + [f"block {i}" for i in range(1, n - 1)]
            + [f"block {n - 1} + final norm"],
            "norm": states.norm(dim=-1).tolist(),
            "cosine_to_final": cos.tolist(),
            "lens_id": top_id.tolist(),
            "lens_token": [readable(lm.tokenizer, int(i)) for i in top_id],
            "lens_prob": top_p.tolist(),
        }
    )


def walk_step(lm: LoadedModel, trace: Trace, step: int) -> StepWalk:
    """All the live data for one step (two passes over the step's context, through the runner)."""
    if not 0 <= step < len(trace.steps):
        raise IndexError(f"step {step} is outside this reply (0..{len(trace.steps) - 1})")
    ids = context_ids(trace, step)
    states = hidden_states(lm, ids)[:, -1]  # (layers + 1, d): the last position only
    logits = lens_logits(lm, states[-1:])[-1].float()  # (vocab,) == the model's real scores
    attention, why = None, None
    try:
        attention = attention_at(lm, ids, [len(ids) - 1])[:, :, 0]  # (layers, heads, T)
    except AttentionUnavailable as exc:  # the other stages still show; stage 5 says why
        why = str(exc)
    return StepWalk(
        step=step,
        context=ids,
        embedding=embedding_row(lm, ids[-1]),
        layers=layer_table(lm, states),
        attention=attention,
        logits=logits,
        attention_unavailable=why,
    )


def attention_table(lm: LoadedModel, walk: StepWalk, layer: int | None = None) -> pd.DataFrame:
    """The current position's attention averaged over heads (and over layers when layer is None).

    Columns: position, token_id, text, weight; one row per context token, in order.
    walk.attention must be there (see walk.attention_unavailable).
    """
    if walk.attention is None:
        raise AttentionUnavailable(
            walk.attention_unavailable or "The attention of this step is not available."
        )
    att = walk.attention if layer is None else walk.attention[layer : layer + 1]  # (L, H, T)
    weights = att.mean(axis=(0, 1))  # (T,)
    return pd.DataFrame(
        {
            "position": range(len(walk.context)),
            "token_id": walk.context,
            "text": [readable(lm.tokenizer, i) for i in walk.context],
            "weight": weights,
        }
    )


def top_logits(lm: LoadedModel, logits: torch.Tensor, n: int = 10) -> pd.DataFrame:
    """The n highest raw scores: rank, token_id, token, logit."""
    values, ids = torch.topk(logits.float(), n)
    return pd.DataFrame(
        {
            "rank": range(1, n + 1),
            "token_id": ids.tolist(),
            "token": [readable(lm.tokenizer, int(i)) for i in ids],
            "logit": values.tolist(),
        }
    )


def temperature_table(
    lm: LoadedModel, logits: torch.Tensor, temperature: float, chosen: int, n: int = 10
) -> pd.DataFrame:
    """The n most likely tokens under softmax at temperature 1 and at `temperature`.

    Temperature only (top-k and top-p off), computed by the sampler's own sampling_probs.
    Columns: token_id, token, raw_prob, prob (at `temperature`), chosen (bool).
    """
    raw = sampling_probs(logits, SamplingSettings(temperature=1.0, top_k=0, top_p=1.0))
    warm = sampling_probs(logits, SamplingSettings(temperature=temperature, top_k=0, top_p=1.0))
    ids = torch.topk(logits.float(), n).indices
    return pd.DataFrame(
        {
            "token_id": ids.tolist(),
            "token": [readable(lm.tokenizer, int(i)) for i in ids],
            "raw_prob": raw[ids].tolist(),
            "prob": warm[ids].tolist(),
            "chosen": [int(i) == int(chosen) for i in ids],
        }
    )


def choice_table(
    lm: LoadedModel, logits: torch.Tensor, settings: SamplingSettings, chosen: int
) -> pd.DataFrame:
    """How greedy, top-k and top-p sampling would each treat this step's scores.

    Each row is one decoding rule, run through sampling_probs: pool (how many tokens can be
    drawn), pick (the most likely token under the rule), pick_prob, chosen_prob (the chance
    the rule gives the token that was actually chosen). The last row is the reply's own
    settings, so its chosen_prob equals the trace's recorded sample_prob.
    """
    temp = settings.temperature if not settings.greedy else 1.0
    k = settings.top_k if settings.top_k > 0 else 50
    p = settings.top_p if settings.top_p < 1.0 else 0.9
    base = replace(settings, temperature=temp)
    rules = [
        ("greedy", "always the single most likely token", replace(settings, temperature=0.0)),
        ("top-k", f"temperature {temp:g}, only the {k} most likely", replace(base, top_k=k, top_p=1.0)),
        ("top-p", f"temperature {temp:g}, smallest set covering {p:.0%}", replace(base, top_k=0, top_p=p)),
        ("this reply", _describe(settings), settings),
    ]
    rows = []
    for name, how, rule in rules:
        probs = sampling_probs(logits, rule)  # (vocab,)
        pick = int(probs.argmax())
        rows.append(
            {
                "rule": name,
                "how": how,
                "pool": int((probs > 0).sum()),
                "pick": readable(lm.tokenizer, pick),
                "pick_id": pick,
                "pick_prob": float(probs[pick]),
                "chosen_prob": float(probs[int(chosen)]),
            }
        )
    return pd.DataFrame(rows)


def _describe(settings: SamplingSettings) -> str:
    if settings.greedy:
        return "greedy (temperature 0)"
    parts = [f"temperature {settings.temperature:g}"]
    parts.append(f"top-k {settings.top_k}" if settings.top_k > 0 else "top-k off")
    parts.append(f"top-p {settings.top_p:g}" if settings.top_p < 1.0 else "top-p off")
    return ", ".join(parts)
