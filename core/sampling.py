"""From scores to the distribution that is sampled: repetition penalty, temperature, top-k, top-p.

The decode loop and every "what if" view call the same function, so what the page shows
under another temperature is exactly what the sampler would have done. The filters are
transformers' own logits processors, in the order ``generate`` applies them: the repetition
penalty first (a logits processor), then the warpers.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch

from core.imports import TRANSFORMERS_IMPORT
from core.settings import SamplingSettings


@lru_cache(maxsize=1)
def _transformers() -> Any:
    """transformers, with its logits processors imported, on first use rather than with this
    module: importing transformers costs about 0.6 s, and the app's start is ready to chat
    without it (core.models' fast start)."""
    with TRANSFORMERS_IMPORT:
        import transformers

        for name in _PROCESSORS:  # transformers imports a name's module when it is first read
            getattr(transformers, name)
    return transformers


_PROCESSORS = (
    "LogitsProcessorList",
    "RepetitionPenaltyLogitsProcessor",
    "TemperatureLogitsWarper",
    "TopKLogitsWarper",
    "TopPLogitsWarper",
)


def import_for(settings: SamplingSettings) -> None:
    """Import what sampling with these settings needs, in the caller's thread: the decode loop
    must not wait for transformers' import (or for the start's background load, which holds its
    lock) while it holds the model and every other reply waits with it. Greedy without a
    penalty needs nothing (the scheduler takes the argmax itself)."""
    if not settings.greedy or settings.repetition_penalty != 1.0:
        _transformers()


def processors(settings: SamplingSettings) -> Any:
    """The processors for these settings (a LogitsProcessorList), in ``generate``'s order.

    Greedy keeps only the repetition penalty (``generate`` applies it before its argmax too);
    greedy without a penalty is an empty list: the raw argmax.
    """
    tf = _transformers()
    chain = tf.LogitsProcessorList()
    if settings.repetition_penalty != 1.0:
        chain.append(tf.RepetitionPenaltyLogitsProcessor(settings.repetition_penalty))
    if settings.greedy:
        return chain
    if settings.temperature != 1.0:
        chain.append(tf.TemperatureLogitsWarper(settings.temperature))
    if settings.top_k > 0:
        chain.append(tf.TopKLogitsWarper(settings.top_k))
    if settings.top_p < 1.0:
        chain.append(tf.TopPLogitsWarper(settings.top_p))
    return chain


def sampling_probs(
    logits: torch.Tensor,
    settings: SamplingSettings,
    context_ids: torch.Tensor | Sequence[int] | None = None,
) -> torch.Tensor:
    """The distribution the sampler draws from. logits: (vocab,) or (batch, vocab).

    context_ids: the ids already in the text (prompt + reply so far), as indices into the last
    dimension of `logits`; the repetition penalty lowers their scores. An index equal to that
    dimension's size stands for "not among these scores" and is ignored (what_if uses it for
    context tokens outside the recorded top 50). Needed only when the penalty is on.
    Greedy (temperature 0) is a one-hot on the argmax of the (penalised) scores.
    """
    squeeze = logits.dim() == 1
    scores = logits.float().reshape(-1, logits.shape[-1])  # (batch, vocab)
    if settings.repetition_penalty != 1.0:
        if context_ids is None:
            raise ValueError("The repetition penalty needs the ids already in the text (context_ids).")
        ids = torch.as_tensor(context_ids, dtype=torch.long).reshape(1, -1)  # (1, T)
        ids = ids.expand(scores.shape[0], -1)  # (batch, T)
    else:
        # the warpers do not read input_ids; an empty (batch, 0) tensor satisfies the API
        ids = torch.empty((scores.shape[0], 0), dtype=torch.long)
    scores = processors(settings)(ids, scores.clone())
    if settings.greedy:
        probs = torch.zeros_like(scores)
        probs.scatter_(-1, scores.argmax(-1, keepdim=True), 1.0)
    else:
        probs = torch.softmax(scores, dim=-1)
    return probs[0] if squeeze else probs


def tokens_for_mass(probs: torch.Tensor, mass: float = 0.9) -> int:
    """How many of the most likely tokens it takes to cover `mass` of the probability."""
    ordered = torch.sort(probs.flatten(), descending=True).values
    return int(torch.searchsorted(torch.cumsum(ordered, 0), torch.tensor(mass)).item()) + 1
