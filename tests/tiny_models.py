"""Tiny random-weight chat models of every architecture the app accepts, built in the test session.

No network: each is a transformers config with small dimensions, random weights (seeded) and
the SmolLM2 tokenizer (with its chat template) saved next to it, so GLASSBOX_MODEL can point at
the folder. The weights are random, so the replies are gibberish, but every number a page
shows can still be compared with the model's own forward pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4)


def _configs(vocab: int, bos: int, eos: int) -> dict[str, Any]:
    from transformers import (
        Gemma3TextConfig,
        GPT2Config,
        LlamaConfig,
        Phi3Config,
        Qwen2Config,
        Qwen3Config,
    )

    ids = dict(vocab_size=vocab, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)
    return {
        # GQA (4 query heads share 2 key/value heads) and an untied output head
        "llama": LlamaConfig(**SMALL, num_key_value_heads=2, tie_word_embeddings=False, **ids),
        # biases on q/k/v
        "qwen2": Qwen2Config(**SMALL, num_key_value_heads=2, tie_word_embeddings=True, **ids),
        # RMSNorm on queries and keys (q_norm / k_norm)
        "qwen3": Qwen3Config(**SMALL, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True, **ids),
        # scaled embeddings, sliding-window layers, q/k norm, soft-capping off
        "gemma3": Gemma3TextConfig(
            **{**SMALL, "num_hidden_layers": 4},
            num_key_value_heads=2,
            head_dim=16,
            sliding_window=8,
            layer_types=["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
            **ids,
        ),
        "phi3": Phi3Config(**SMALL, num_key_value_heads=2, tie_word_embeddings=False, **ids),
        # learned absolute positions, LayerNorm, fused c_attn
        "gpt2": GPT2Config(n_embd=64, n_layer=3, n_head=4, n_positions=2048, **ids),
    }


ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma3", "phi3", "gpt2")


def build(arch: str, folder: Path, tokenizer_source: Any) -> Path:
    """Save a tiny `arch` model with the SmolLM2 tokenizer into folder; returns the folder."""
    from transformers import AutoModelForCausalLM

    tok = tokenizer_source
    if (folder / "config.json").is_file():
        return folder
    config = _configs(len(tok), tok.bos_token_id or 0, tok.eos_token_id)[arch]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # larger weights than the default init, so the distributions are not flat
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
    model.generation_config.eos_token_id = tok.eos_token_id
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
