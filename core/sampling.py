"""From scores to the distribution that is sampled: temperature, top-k, top-p.

The decode loop and every "what if" view call the same function, so what the page shows
under another temperature is exactly what the sampler would have done. The filters are
transformers' own logits processors, in the order ``generate`` applies them.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from core.settings import SamplingSettings


def processors(settings: SamplingSettings) -> LogitsProcessorList:
    """The warpers for these settings (empty when greedy: greedy takes the raw argmax)."""
    chain = LogitsProcessorList()
    if settings.greedy:
        return chain
    if settings.temperature != 1.0:
        chain.append(TemperatureLogitsWarper(settings.temperature))
    if settings.top_k > 0:
        chain.append(TopKLogitsWarper(settings.top_k))
    if settings.top_p < 1.0:
        chain.append(TopPLogitsWarper(settings.top_p))
    return chain


def sampling_probs(logits: torch.Tensor, settings: SamplingSettings) -> torch.Tensor:
    """The distribution the sampler draws from. logits: (vocab,) or (batch, vocab).

    Greedy (temperature 0) is a one-hot on the argmax.
    """
    squeeze = logits.dim() == 1
    scores = logits.float().reshape(-1, logits.shape[-1])  # (batch, vocab)
    if settings.greedy:
        probs = torch.zeros_like(scores)
        probs.scatter_(-1, scores.argmax(-1, keepdim=True), 1.0)
    else:
        # input_ids are unused by these warpers; an empty (batch, 0) tensor satisfies the API.
        empty = torch.empty((scores.shape[0], 0), dtype=torch.long)
        probs = torch.softmax(processors(settings)(empty, scores.clone()), dim=-1)
    return probs[0] if squeeze else probs


def tokens_for_mass(probs: torch.Tensor, mass: float = 0.9) -> int:
    """How many of the most likely tokens it takes to cover `mass` of the probability."""
    ordered = torch.sort(probs.flatten(), descending=True).values
    return int(torch.searchsorted(torch.cumsum(ordered, 0), torch.tensor(mass)).item()) + 1
