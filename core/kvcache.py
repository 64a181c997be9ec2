"""A lean Llama forward pass over a per-session KV cache that survives between turns.

Why not the model's own forward for decoding: on a 2-core CPU, SmolLM2-135M spends a third
of each ``model.generate`` step outside the matrix multiplies (module calls, cache objects,
masks, rotary tables rebuilt every step), and the matrix-vector products themselves take
MKL's slow GEMV path because nn.Linear keeps its weight as (out, in). Here the weights are
copied once into (in, out) layout, with q/k/v and gate/up fused, so each step is ~4 GEMMs
per layer and a few dozen small ops. Precision stays fp32; only the summation order of the
matrix products changes, which does not change the greedy tokens (tests prove it).

SessionKV keeps the keys and values of the tokens it has read. A follow-up turn shares a
prefix with the previous prompt + reply, so only the new tokens are read. Reuse is keyed on
the token ids themselves (longest common prefix), which makes it correct by construction
after an edit, a regenerate, a branch, a new system prompt or a context trim: whatever
changed, the cache is cut back to the last token that is still the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

GROW = 256  # the cache grows in steps of this many positions


@dataclass
class LayerWeights:
    """One decoder layer, in (in, out) layout for x @ W."""

    ln1: torch.Tensor  # (d,)
    qkv: torch.Tensor  # (d, (heads + 2 * kv_heads) * head_dim)
    o: torch.Tensor  # (heads * head_dim, d)
    ln2: torch.Tensor  # (d,)
    gate_up: torch.Tensor  # (d, 2 * ffn)
    down: torch.Tensor  # (ffn, d)


@dataclass
class LeanModel:
    """The weights of a Llama-family model rearranged for fast single-token steps."""

    layers: list[LayerWeights]
    embed: torch.Tensor  # (vocab, d), shared with the model
    norm: torch.Tensor  # (d,)
    head: torch.Tensor  # (d, vocab)
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn: int
    eps: float
    inv_freq: torch.Tensor  # (head_dim / 2,)
    rope_scaling: float
    max_positions: int
    model_id: int  # id() of the source model, so a reloaded model is never mixed up
    cos: torch.Tensor = field(default_factory=lambda: torch.empty(0))  # (positions, head_dim)
    sin: torch.Tensor = field(default_factory=lambda: torch.empty(0))  # sign-folded, see _rope

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def rope(self, upto: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin tables for positions [0, upto), built once and grown by doubling.

        Same arithmetic as transformers' LlamaRotaryEmbedding, so the values are bit-identical.
        subtle: rotate_half(x) * sin == roll(x, half) * [-sin_lo, sin_hi]; folding the sign
        into the table saves the neg and cat ops of rotate_half at every layer.
        """
        if self.cos.shape[0] < upto:
            size = min(max(upto, 2 * self.cos.shape[0], 512), max(self.max_positions, upto))
            positions = torch.arange(size, dtype=torch.float32)
            freqs = positions[:, None] * self.inv_freq.float()[None, :]  # (size, head_dim/2)
            emb = torch.cat((freqs, freqs), dim=-1)  # (size, head_dim)
            half = self.head_dim // 2
            self.cos = emb.cos() * self.rope_scaling
            sin = emb.sin() * self.rope_scaling
            self.sin = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)
        return self.cos, self.sin


_LEAN_KEY = "_glassbox_lean"


def lean_model(model: Any) -> LeanModel | None:
    """The lean copy of a transformers Llama-family model (built once, kept on the model).

    Returns None for architectures this path does not cover; callers then use the model's
    own forward.
    """
    cached = getattr(model, _LEAN_KEY, None)
    if cached is not None:
        return cached
    if not supports(model):
        return None
    config = model.config
    layers = []
    with torch.no_grad():
        for layer in model.model.layers:
            att, mlp = layer.self_attn, layer.mlp
            qkv = torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight]).t().contiguous()
            gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).t().contiguous()
            layers.append(
                LayerWeights(
                    ln1=layer.input_layernorm.weight.detach().clone(),
                    qkv=qkv,
                    o=att.o_proj.weight.t().contiguous(),
                    ln2=layer.post_attention_layernorm.weight.detach().clone(),
                    gate_up=gate_up,
                    down=mlp.down_proj.weight.t().contiguous(),
                )
            )
        rotary = model.model.rotary_emb
        lean = LeanModel(
            layers=layers,
            embed=model.model.embed_tokens.weight.detach(),
            norm=model.model.norm.weight.detach().clone(),
            head=model.lm_head.weight.t().contiguous(),
            n_heads=config.num_attention_heads,
            n_kv_heads=config.num_key_value_heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
            ffn=config.intermediate_size,
            eps=float(config.rms_norm_eps),
            inv_freq=rotary.inv_freq.detach().clone(),
            rope_scaling=float(getattr(rotary, "attention_scaling", 1.0)),
            max_positions=int(getattr(config, "max_position_embeddings", 2048)),
            model_id=id(model),
        )
        _share_storage(model, lean)
    object.__setattr__(model, _LEAN_KEY, lean)  # plain attribute: not a submodule or buffer
    return lean


def _share_storage(model: Any, lean: LeanModel) -> None:
    """Point the model's own weights at views of the lean copies, so memory is not doubled.

    Each view has the module's usual (out, in) shape; F.linear on it multiplies by the
    contiguous (in, out) tensor, the fast GEMM path. Values are unchanged.
    """
    config = model.config
    q_width = lean.n_heads * lean.head_dim
    k_width = lean.n_kv_heads * lean.head_dim
    cuts = {"q_proj": (0, q_width), "k_proj": (q_width, q_width + k_width)}
    cuts["v_proj"] = (q_width + k_width, q_width + 2 * k_width)
    for layer, w in zip(model.model.layers, lean.layers, strict=True):
        att, mlp = layer.self_attn, layer.mlp
        for name, (a, b) in cuts.items():
            _set_weight(getattr(att, name), w.qkv[:, a:b].t())
        _set_weight(att.o_proj, w.o.t())
        _set_weight(mlp.gate_proj, w.gate_up[:, : lean.ffn].t())
        _set_weight(mlp.up_proj, w.gate_up[:, lean.ffn :].t())
        _set_weight(mlp.down_proj, w.down.t())
        # subtle: the loaded weights may all be views of one memory-mapped file; a single
        # tensor left pointing into it keeps the whole mapping (0.5 GB) alive.
        _set_weight(layer.input_layernorm, w.ln1)
        _set_weight(layer.post_attention_layernorm, w.ln2)
    _set_weight(model.model.norm, lean.norm)
    if (
        getattr(config, "tie_word_embeddings", False)
        or model.lm_head.weight is model.model.embed_tokens.weight
    ):
        shared = _set_weight(model.lm_head, lean.head.t())
        model.model.embed_tokens.weight = shared
        lean.embed = lean.head.t()  # (vocab, d) view; a row lookup per prompt token is cheap
    else:
        _set_weight(model.lm_head, lean.head.t())


def _set_weight(module: Any, view: torch.Tensor) -> torch.nn.Parameter:
    if view.shape != module.weight.shape:
        raise ValueError(f"lean weight {tuple(view.shape)} does not match {tuple(module.weight.shape)}")
    module.weight = torch.nn.Parameter(view, requires_grad=False)
    return module.weight


def supports(model: Any) -> bool:
    """True for plain fp32 Llama-style decoders (SmolLM2, Llama, ...) this path reproduces exactly."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", "") not in ("llama",):
        return False
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") != "default":
        return False
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        return False
    if getattr(config, "hidden_act", "silu") != "silu":
        return False
    return all(p.dtype == torch.float32 for p in model.parameters())


class SessionKV:
    """The keys and values of the tokens one chat session's model has read, reused across turns.

    Only touch it while holding the model's lock (stream() does). Memory is bounded by
    max_tokens positions: about 46 KB per position for SmolLM2-135M, so 94 MB at 2,048.
    """

    def __init__(self, max_tokens: int = 8192) -> None:
        self.max_tokens = max_tokens
        self.ids: list[int] = []  # tokens whose keys and values are in the buffers, in order
        self.keys: torch.Tensor | None = None  # (layers, kv_heads, capacity, head_dim)
        self.values: torch.Tensor | None = None
        self.model_id: int | None = None
        self.reused = 0  # how many prompt tokens the last prepare() could skip (for tests and UI)

    @property
    def capacity(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def clear(self) -> None:
        """Forget everything and free the buffers."""
        self.ids, self.keys, self.values, self.model_id, self.reused = [], None, None, None, 0

    def prepare(self, lean: LeanModel, prompt_ids: list[int], need: int) -> int:
        """Cut the cache back to its longest common prefix with prompt_ids; make room for need positions.

        Returns how many prompt tokens are already in the cache (at most len(prompt_ids) - 1,
        because the last prompt token must be read again to get the next-token scores).
        """
        if self.model_id != lean.model_id:
            self.clear()
            self.model_id = lean.model_id
        keep = 0
        limit = min(len(self.ids), len(prompt_ids) - 1)
        while keep < limit and self.ids[keep] == prompt_ids[keep]:
            keep += 1
        self.ids = self.ids[:keep]
        self.reused = keep
        self._reserve(lean, need)
        return keep

    def _reserve(self, lean: LeanModel, need: int) -> None:
        if need > self.max_tokens:
            raise ValueError(f"the KV cache is limited to {self.max_tokens:,} positions; {need:,} requested")
        if need <= self.capacity:
            return
        size = min(-(-need // GROW) * GROW, self.max_tokens)
        shape = (lean.n_layers, lean.n_kv_heads, size, lean.head_dim)
        keys, values = torch.empty(shape), torch.empty(shape)
        if self.ids and self.keys is not None and self.values is not None:
            n = len(self.ids)
            keys[:, :, :n] = self.keys[:, :, :n]
            values[:, :, :n] = self.values[:, :, :n]
        self.keys, self.values = keys, values

    def forward(self, lean: LeanModel, ids: list[int]) -> torch.Tensor:
        """Read ids after the cached tokens; returns the next-token logits (vocab,).

        The cache must have room (prepare() with enough need). Call under torch.inference_mode().
        """
        start, n = len(self.ids), len(ids)
        if self.keys is None or self.values is None or start + n > self.capacity:
            raise ValueError("prepare() the cache with room for these tokens first")
        end = start + n
        cos_all, sin_all = lean.rope(end)
        cos, sin = cos_all[start:end], sin_all[start:end]  # (n, head_dim)
        heads, kv_heads, hd = lean.n_heads, lean.n_kv_heads, lean.head_dim
        q_width, k_width = heads * hd, kv_heads * hd
        half = hd // 2
        mask = None
        if n > 1 and start > 0:  # new tokens see every cached token and the new ones before them
            mask = torch.arange(end)[None, :] <= torch.arange(start, end)[:, None]  # (n, end)
        causal = n > 1 and start == 0
        h = lean.embed[torch.tensor(ids)]  # (n, d)
        for i, w in enumerate(lean.layers):
            x = _rms_norm(h, w.ln1, lean.eps)
            qkv = x @ w.qkv  # (n, q_width + 2 * k_width)
            qk = qkv[:, : q_width + k_width].view(n, heads + kv_heads, hd).transpose(0, 1)  # (h+kv, n, hd)
            qk = qk * cos + qk.roll(half, dims=-1) * sin
            q = qk[:heads]  # (heads, n, hd)
            self.keys[i, :, start:end] = qk[heads:]
            self.values[i, :, start:end] = qkv[:, q_width + k_width :].view(n, kv_heads, hd).transpose(0, 1)
            att = F.scaled_dot_product_attention(
                q[None],
                self.keys[None, i, :, :end],
                self.values[None, i, :, :end],
                attn_mask=mask,
                is_causal=causal,
                scale=hd**-0.5,
                enable_gqa=True,
            )  # (1, heads, n, hd)
            h = h + att[0].transpose(0, 1).reshape(n, q_width) @ w.o
            x = _rms_norm(h, w.ln2, lean.eps)
            gate_up = x @ w.gate_up  # (n, 2 * ffn)
            h = h + (F.silu(gate_up[:, : lean.ffn]) * gate_up[:, lean.ffn :]) @ w.down
        self.ids.extend(ids)
        last = _rms_norm(h[-1:], lean.norm, lean.eps)  # (1, d): only the last position's scores
        return (last @ lean.head)[0]  # (vocab,)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm, op for op, so results match the model's own bit for bit."""
    variance = x.pow(2).mean(-1, keepdim=True)
    return weight * (x * torch.rsqrt(variance + eps))
