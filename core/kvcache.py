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

import itertools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from core.memory import give_back_freed_memory
from core.runner import GenericKV

GROW = 128  # the cache grows in steps of this many positions (46 KB each for SmolLM2-135M)


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
    model_id: int  # unique per build, so a session's cache is never used with another model's weights
    cos: torch.Tensor = field(default_factory=lambda: torch.empty(0))  # (positions, head_dim)
    sin: torch.Tensor = field(default_factory=lambda: torch.empty(0))  # sign-folded, see _rope
    batched: BatchWeights | None = None  # for steps of several sessions at once (forward_batch)
    unpackable: bool = False  # packing failed once: batched steps use the plain weights from then on

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def tied(self) -> bool:
        """The embedding is the output head's (vocab, d) view, one matrix for both."""
        return self.embed.data_ptr() == self.head.data_ptr()

    @property
    def n_params(self) -> int:
        """The model's parameter count (q/k/v and gate/up fused hold the same numbers; a tied
        embedding is the head's view and counts once)."""
        layers = sum(t.numel() for w in self.layers for t in vars(w).values())
        return layers + self.norm.numel() + self.head.numel() + (0 if self.tied else self.embed.numel())

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


class BatchWeights:
    """The lean weights once more, prepacked for oneDNN's matrix products, for batched steps.

    subtle: for a product of a few rows (2-16 sessions) with a weight matrix, MKL's sgemm
    runs far below what the memory allows on some CPUs (on the AMD EPYC here, 4 rows times
    the 576x49152 unembedding took 20 ms against 4.3 ms for one row, so batching gained
    nothing), while oneDNN with the weight packed once took 5 ms. One row stays on MKL's
    matrix-vector path, the fastest for it. Costs one more copy of the weights (0.5 GB for
    SmolLM2-135M), made on the first batched step only. Where oneDNN is missing, plain
    products are used (same numbers, slower batches).
    """

    def __init__(self, lean: LeanModel) -> None:
        def pack(w: torch.Tensor) -> torch.Tensor:  # w: (in, out) -> oneDNN's (out, in) blocked layout
            return torch.ops.mkldnn._reorder_linear_weight(w.t().contiguous(), None)

        self.layers = [(pack(w.qkv), pack(w.o), pack(w.gate_up), pack(w.down)) for w in lean.layers]
        self.head = pack(lean.head)

    @staticmethod
    def product(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
        """x @ W for a packed W: (rows, in) -> (rows, out)."""
        return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


def batch_weights(lean: LeanModel) -> BatchWeights | None:
    """The packed weights for batched steps (made on first use), or None without oneDNN.

    A failed packing is not tried again at every step: it is remembered."""
    if lean.batched is None and not lean.unpackable:
        try:
            if not torch.backends.mkldnn.is_available():
                raise NotImplementedError("torch was built without oneDNN")
            lean.batched = BatchWeights(lean)
            give_back_freed_memory()  # the transposed copies packing went through (0.5 GB)
        except (RuntimeError, AttributeError, NotImplementedError):
            lean.unpackable = True
    return lean.batched


_LEAN_KEY = "_glassbox_lean"
_ids = itertools.count(1)


def supports_config(config: Any) -> bool:
    """True for plain Llama-style decoders (SmolLM2, Llama, ...) this path reproduces exactly.

    config: a transformers config or any object with the same attributes (e.g. config.json
    read into a SimpleNamespace).
    """
    if config is None or getattr(config, "model_type", "") not in ("llama",):
        return False
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        return False
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        return False
    return getattr(config, "hidden_act", "silu") == "silu"


def supports(model: Any) -> bool:
    """True for fp32 transformers models whose config supports_config() accepts."""
    if not supports_config(getattr(model, "config", None)):
        return False
    return all(p.dtype == torch.float32 for p in model.parameters())


def _rope_theta(config: Any) -> float:
    rope = getattr(config, "rope_parameters", None) or {}
    return float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def lean_from_weights(weights: dict[str, torch.Tensor], config: Any) -> LeanModel:
    """Build the lean weights from a Llama state dict (names as in LlamaForCausalLM) and its config.

    Used both on a loaded transformers model and straight on the safetensors file, which is
    what makes the app's start fast: no transformers model class has to be imported first.
    Tensors are copied (fused and transposed) in fp32; the caller may drop `weights` after.
    """
    n_layers = int(config.num_hidden_layers)

    def get(name: str) -> torch.Tensor:
        return weights[name].detach().float()

    layers = []
    with torch.no_grad():
        for i in range(n_layers):
            pre = f"model.layers.{i}."
            qkv = torch.cat([get(pre + f"self_attn.{x}_proj.weight") for x in "qkv"]).t().contiguous()
            gate_up = torch.cat([get(pre + "mlp.gate_proj.weight"), get(pre + "mlp.up_proj.weight")])
            layers.append(
                LayerWeights(
                    ln1=get(pre + "input_layernorm.weight").clone(),
                    qkv=qkv,
                    o=get(pre + "self_attn.o_proj.weight").t().contiguous(),
                    ln2=get(pre + "post_attention_layernorm.weight").clone(),
                    gate_up=gate_up.t().contiguous(),
                    down=get(pre + "mlp.down_proj.weight").t().contiguous(),
                )
            )
        embed = get("model.embed_tokens.weight")
        tied = getattr(config, "tie_word_embeddings", False) or "lm_head.weight" not in weights
        head = (embed if tied else get("lm_head.weight")).t().contiguous()  # (d, vocab)
        # own memory: `weights` may be a memory-mapped file the caller drops
        return _assemble(
            config, layers, get("model.norm.weight").clone(), None if tied else embed.clone(), head
        )


def _assemble(
    config: Any,
    layers: list[LayerWeights],
    norm: torch.Tensor,
    embed: torch.Tensor | None,
    head: torch.Tensor,
) -> LeanModel:
    """The LeanModel around these weights; embed None means tied: the (vocab, d) view head.t(),
    where a row lookup per prompt token is cheap."""
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    # Same arithmetic as transformers' default rotary init, so the tables are bit-identical.
    steps = torch.arange(0, head_dim, 2, dtype=torch.int64).to(dtype=torch.float)
    inv_freq = 1.0 / (_rope_theta(config) ** (steps / head_dim))
    return LeanModel(
        layers=layers,
        embed=head.t() if embed is None else embed,
        norm=norm,
        head=head,
        n_heads=heads,
        n_kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
        head_dim=head_dim,
        ffn=int(config.intermediate_size),
        eps=float(config.rms_norm_eps),
        inv_freq=inv_freq,
        rope_scaling=1.0,  # the default rope type has no attention scaling
        max_positions=int(getattr(config, "max_position_embeddings", 2048)),
        model_id=next(_ids),
    )


# A change to the layout (the order of q/k/v or gate/up, a transpose) keeps every shape and
# must change this version, or files written before it would be read wrongly.
LEAN_FILE_VERSION = "1"
_LAYER_FIELDS = ("ln1", "qkv", "o", "ln2", "gate_up", "down")
_STALE_TMP_S = 600  # a temporary file this old is left by a process killed while writing


def save_lean(lean: LeanModel, path: Path, stamp: dict[str, str]) -> None:
    """Write the lean weights, in their decode layout, to a safetensors file (atomically).

    Building them from the model's own file copies and transposes 0.5 GB (about 0.45 s, a
    fifth of the app's start); read back with lean_from_file they are a memory map, at once.
    stamp: strings that say which weights these are; lean_from_file wants them back equal.
    """
    from safetensors.torch import save_file

    tensors = {f"{i}.{name}": getattr(w, name) for i, w in enumerate(lean.layers) for name in _LAYER_FIELDS}
    tensors["norm"] = lean.norm
    tensors["head"] = lean.head
    if not lean.tied:  # its own matrix (tied: head.t(), which lean_from_file makes again)
        tensors["embed"] = lean.embed
    for left in path.parent.glob(f".{path.name}.tmp-*"):  # 0.5 GB each: never left to pile up
        try:
            if time.time() - left.stat().st_mtime > _STALE_TMP_S:
                left.unlink()
        except OSError:
            pass
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        save_file(tensors, tmp, metadata={"glassbox_lean": LEAN_FILE_VERSION, **stamp})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def lean_from_file(path: Path, config: Any, stamp: dict[str, str]) -> LeanModel | None:
    """The lean weights save_lean wrote, memory-mapped; None if the file is missing, unreadable,
    written by another version or for other weights (stamp), or does not fit the config."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:  # one handle: the stamp and tensors of one file
            if (f.metadata() or {}) != {"glassbox_lean": LEAN_FILE_VERSION, **stamp}:
                return None
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # memory-mapped (copy-on-write)
    except Exception:  # noqa: BLE001 - missing, truncated or corrupt: the caller builds the weights
        return None
    try:
        layers = [
            LayerWeights(**{name: tensors[f"{i}.{name}"] for name in _LAYER_FIELDS})
            for i in range(int(config.num_hidden_layers))
        ]
        lean = _assemble(config, layers, tensors["norm"], tensors.get("embed"), tensors["head"])
    except KeyError:
        return None
    d, q_width = int(config.hidden_size), lean.n_heads * lean.head_dim
    qkv_width = q_width + 2 * lean.n_kv_heads * lean.head_dim
    want = {
        "ln1": (d,),
        "qkv": (d, qkv_width),
        "o": (q_width, d),
        "ln2": (d,),
        "gate_up": (d, 2 * lean.ffn),
        "down": (lean.ffn, d),
    }
    fits = (
        lean.head.shape == (d, int(config.vocab_size))
        and lean.embed.shape == (int(config.vocab_size), d)
        and lean.norm.shape == (d,)
        and all(tuple(getattr(w, name).shape) == shape for w in layers for name, shape in want.items())
    )
    return lean if fits else None


def lean_model(model: Any) -> LeanModel | None:
    """The lean copy of a transformers Llama-family model (built once, kept on the model).

    Returns None for architectures this path does not cover; callers then use the model's
    own forward. The model's weights become views of the lean copies (memory is not doubled).
    """
    cached = getattr(model, _LEAN_KEY, None)
    if cached is not None:
        return cached
    if not supports(model):
        return None
    lean = lean_from_weights(dict(model.state_dict()), model.config)
    attach(model, lean)
    return lean


def attach(model: Any, lean: LeanModel) -> None:
    """Make `lean` the model's lean copy: its weights become views of lean's tensors."""
    with torch.no_grad():
        _share_storage(model, lean)
    object.__setattr__(model, _LEAN_KEY, lean)  # plain attribute: not a submodule or buffer


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
        _set_weight(model.model.embed_tokens, lean.embed)


def _set_weight(module: Any, view: torch.Tensor) -> torch.nn.Parameter:
    if view.shape != module.weight.shape:
        raise ValueError(f"lean weight {tuple(view.shape)} does not match {tuple(module.weight.shape)}")
    module.weight = torch.nn.Parameter(view, requires_grad=False)
    return module.weight


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
        self.generic = GenericKV()  # models the lean path does not cover keep their cache here
        self.busy = False  # a reply in core.scheduler's batch is writing into it

    @property
    def capacity(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def clear(self) -> None:
        """Forget everything and free the buffers."""
        self.ids, self.keys, self.values, self.model_id, self.reused = [], None, None, None, 0
        self.generic.clear()

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
        # a first reservation fits the reply (16 sessions of a class hold 16 of these at once);
        # a cache that grows across turns grows by GROW, so it is not copied at every turn
        step = GROW if self.capacity else 16
        size = min(-(-need // step) * step, self.max_tokens)
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
        mask = None
        if n > 1 and start > 0:  # new tokens see every cached token and the new ones before them
            mask = torch.arange(end)[None, :] <= torch.arange(start, end)[:, None]  # (n, end)
        causal = n > 1 and start == 0
        heads = lean.n_heads

        def attend(i: int, qk: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            qk = qk.transpose(0, 1)  # (heads + kv_heads, n, hd)
            assert self.keys is not None and self.values is not None
            self.keys[i, :, start:end] = qk[heads:]
            self.values[i, :, start:end] = v.transpose(0, 1)
            att = F.scaled_dot_product_attention(
                qk[None, :heads],
                self.keys[None, i, :, :end],
                self.values[None, i, :, :end],
                attn_mask=mask,
                is_causal=causal,
                scale=lean.head_dim**-0.5,
                enable_gqa=True,
            )  # (1, heads, n, hd)
            return att[0].transpose(0, 1).reshape(n, heads * lean.head_dim)

        h = lean.embed[torch.tensor(ids)]  # (n, d)
        for i, w in enumerate(lean.layers):
            h = _decoder_layer(lean, i, w, h, cos[:, None], sin[:, None], attend)
        self.ids.extend(ids)
        last = _rms_norm(h[-1:], lean.norm, lean.eps)  # (1, d): only the last position's scores
        return (last @ lean.head)[0]  # (vocab,)


def forward_batch(lean: LeanModel, caches: list[SessionKV], ids: list[int]) -> torch.Tensor:
    """One new token for each of several sessions in one pass; returns their logits (B, vocab).

    The weight reads are shared: every matrix product runs on (B, d) rows at once, which on a
    CPU costs little more than one row (a decode step is bound by reading the weights). Only
    attention is per session, each query against its own cache, whatever its length. Each
    cache must have room for one more position (prepare() it first); ids[b] goes to caches[b].
    The numbers are those of SessionKV.forward up to the summation order of the products.
    """
    if len(caches) != len(ids) or not ids:
        raise ValueError("one token per cache")
    if any(c.keys is None or len(c.ids) >= c.capacity for c in caches):
        raise ValueError("prepare() every cache with room for one more token first")
    B = len(ids)
    starts = [len(c.ids) for c in caches]
    cos_all, sin_all = lean.rope(max(starts) + 1)
    where = torch.tensor(starts)
    cos, sin = cos_all[where][:, None], sin_all[where][:, None]  # (B, 1, head_dim)
    heads, hd = lean.n_heads, lean.head_dim
    packed = batch_weights(lean)

    def attend(i: int, qk: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        att = torch.empty(B, heads * hd)  # each session's attention output
        for b, (c, s) in enumerate(zip(caches, starts, strict=True)):
            c.keys[i, :, s] = qk[b, heads:]
            c.values[i, :, s] = v[b]
            att[b] = F.scaled_dot_product_attention(
                qk[b, :heads, None][None],  # (1, heads, 1, hd)
                c.keys[None, i, :, : s + 1],
                c.values[None, i, :, : s + 1],
                scale=hd**-0.5,
                enable_gqa=True,
            ).reshape(heads * hd)
        return att

    def product(x: torch.Tensor, i: int, which: int, w: torch.Tensor) -> torch.Tensor:
        return x @ w if packed is None else packed.product(x, packed.layers[i][which])

    h = lean.embed[torch.tensor(ids)]  # (B, d)
    for i, w in enumerate(lean.layers):
        h = _decoder_layer(lean, i, w, h, cos, sin, attend, product)
    last = _rms_norm(h, lean.norm, lean.eps)
    logits = last @ lean.head if packed is None else packed.product(last, packed.head)  # (B, vocab)
    for c, token in zip(caches, ids, strict=True):
        c.ids.append(token)
    return logits


def _matmul(x: torch.Tensor, i: int, which: int, w: torch.Tensor) -> torch.Tensor:
    return x @ w


def _decoder_layer(
    lean: LeanModel,
    i: int,
    w: LayerWeights,
    h: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    attend: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor],
    product: Callable[[torch.Tensor, int, int, torch.Tensor], torch.Tensor] = _matmul,
) -> torch.Tensor:
    """Decoder layer i of a Llama model, op for op as LlamaDecoderLayer, on rows h (rows, d).

    cos, sin (rows, 1, head_dim): each row's rotary angles. attend(i, qk, v) stores the rows'
    keys and values in the caches and returns their attention output (rows, heads * head_dim):
    qk (rows, heads + kv_heads, head_dim) holds the rotated queries, then keys; v (rows,
    kv_heads, head_dim). product(x, i, which, w) is x @ w for weight `which` of layer i (0 qkv,
    1 o, 2 gate_up, 3 down): the batched path passes its packed copy.
    """
    rows = h.shape[0]
    heads, kv_heads, hd = lean.n_heads, lean.n_kv_heads, lean.head_dim
    split = (heads + kv_heads) * hd
    x = _rms_norm(h, w.ln1, lean.eps)
    qkv = product(x, i, 0, w.qkv)  # (rows, q_width + 2 * k_width)
    qk = qkv[:, :split].view(rows, heads + kv_heads, hd)
    qk = qk * cos + qk.roll(hd // 2, dims=-1) * sin
    h = h + product(attend(i, qk, qkv[:, split:].view(rows, kv_heads, hd)), i, 1, w.o)
    x = _rms_norm(h, w.ln2, lean.eps)
    gate_up = product(x, i, 2, w.gate_up)  # (rows, 2 * ffn)
    return h + product(F.silu(gate_up[:, : lean.ffn]) * gate_up[:, lean.ffn :], i, 3, w.down)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm, op for op, so results match the model's own bit for bit."""
    variance = x.pow(2).mean(-1, keepdim=True)
    return weight * (x * torch.rsqrt(variance + eps))
