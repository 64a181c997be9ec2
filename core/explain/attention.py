"""Attention patterns behind a reply: where each token looked, at every layer and head.

One forward pass over the reply's whole sequence (prompt + reply) records attention weights.
subtle: 30 layers x 9 heads x T^2 floats is 4.5 GB at T = 2048, so the weights are never kept
for all layers, and for most layers not even computed for every row. The model runs with its
fast sdpa attention (which never materialises weights); a pre-hook on each attention block
recomputes softmax(q·kᵀ/√d) from the block's own projections, with rotary positions and the
causal mask, for just the query rows the page needs, and reduces them at once:

- head statistics over the step rows (entropy, sink, previous token, current question);
- the step rows' attention summed by column group (each message's text, template tokens,
  the reply itself): (layers, heads, reply, groups);
- a small thumbnail of each head for the model view, from a fixed sample of query rows per
  row block: (layers, heads, k, k);
- the step rows averaged over every layer and head: (reply, T);
- and the step rows of ONE layer, for the head and per-token views: (heads, R, T).

Step rows. Step s of a reply (0-based) is the choice of reply token s. The attention that
made it is the query row of the position BEFORE that token: position P + s - 1 (P = prompt
length; for step 0 the last prompt token). The row at token s's own position chose token
s + 1. So "step s" means row P + s - 1 everywhere: here, in core.explain.walkthrough (whose
context for step s ends at that position), on every page and in every link between them.

After chatting there is a cheaper way (kv_rows_pass): the chat's SessionKV already holds
every token's keys and values, so only the rows above (the step rows, and the sampled rows of
the thumbnails) go through the layers, each with a causal mask over the cached keys: about
0.4 s instead of a whole 3.5 s pass at T = 2,000. The session's cache is only read; tokens it
lacks (the reply's last one, or a whole other take) get keys and values in scratch tensors.
Without a usable cache (an imported chat), the full pass above runs; the head view's "whole
sequence" rows (heads, T, T) always come from it, on demand.

Models whose attention blocks do not look like Llama's fall back to one eager pass (the
reference the tests compare against). Results are cached per (trace, length) in caches
bounded by entries and bytes, so revisits are instant and memory stays flat. The model lock
is held for each pass.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from core.cache import BoundedCache
from core.kvcache import LeanModel, SessionKV, _rms_norm
from core.models import LoadedModel
from core.tokens import readable
from core.trace import Trace

THUMB = 6  # model-view thumbnail side: 30 x 9 heads x 36 cells = 9,720 cells in one chart
THUMB_ROWS = 16  # query rows sampled per thumbnail row block
SINK_HEAD = 0.5  # a head whose reply rows give at least this share to the first token
PREVIOUS_HEAD = 0.5  # ... or to the previous token
CATEGORIES = ["System prompt", "Earlier turns", "Current question", "Template tokens", "This reply so far"]

MAX_EXTENSION = 0.5  # the session-KV rows pass is used when at most this share of T is not cached
# subtle: the rows pass is ~20 small ops per layer; with 2 OpenMP threads on a shared 2-core
# machine each op waits for a core another process holds (measured: 8.0 s vs 0.5 s on 1 thread).
ROWS_PASS_THREADS = 1

_OVERVIEWS: BoundedCache[AttentionOverview] = BoundedCache(max_entries=4)  # < 10 MB each
# Whole layers (heads, T, T): 144 MB each at T = 2,000; only the "whole sequence" head view needs one.
_LAYERS: BoundedCache[np.ndarray] = BoundedCache(max_entries=2, max_bytes=300 * 2**20)
# The reply's rows of one layer (heads, R, T): 3.5 MB for 48 reply tokens at T = 2,000.
_REPLY_ROWS: BoundedCache[np.ndarray] = BoundedCache(max_entries=16, max_bytes=64 * 2**20)


@dataclass(frozen=True)
class Group:
    """A run of context columns that belong together: one message's text, or a kind of token."""

    name: str  # "System prompt", "User (msg 1): What is…", "Template tokens", "This reply"
    category: str  # one of CATEGORIES


@dataclass
class AttentionOverview:
    """Everything the page shows that needs every layer, from one pass. Shapes in comments."""

    trace_id: str
    n_prompt: int  # P: the reply's first token sits at position P
    labels: list[str]  # (T,) readable token text
    groups: list[Group]  # (G,)
    group_of: np.ndarray  # (T,) index into groups for each position
    grouped: np.ndarray  # (layers, heads, R, G) step rows' attention summed per group
    thumbs: np.ndarray  # (layers, heads, k, k) share of a row block's attention per key block
    reply_mean: np.ndarray  # (R, T) step rows averaged over every layer and head; row s = P + s - 1
    stats: pd.DataFrame  # one row per (layer, head)
    seconds: float  # how long the pass took
    method: str  # "kv" (rows pass over the chat's KV cache), "hooks" (sdpa + recomputed rows) or "eager"

    @property
    def n_tokens(self) -> int:
        return len(self.labels)

    @property
    def n_reply(self) -> int:
        return self.n_tokens - self.n_prompt

    def position(self, step: int) -> int:
        """The query position whose attention chose reply token `step`: P + step - 1."""
        return step_position(self.n_prompt, step)

    def step_label(self, step: int) -> str:
        """'·is → ·Canberra': the token whose attention it is, then the token it chose."""
        return chooser_label(self.labels, self.n_prompt, step)


def step_position(n_prompt: int, step: int) -> int:
    """The query row that chose reply token `step` (0-based): the position just before it.

    12 prompt tokens, step 0 -> 11 (the last prompt token chose the first reply token).
    """
    return n_prompt + step - 1


def step_rows(n_prompt: int, n_tokens: int) -> torch.Tensor:
    """The step rows of a reply, in step order: positions P - 1 .. T - 2 (LongTensor, (R,))."""
    return torch.arange(step_position(n_prompt, 0), n_tokens - 1)


def chooser_label(labels: list[str], n_prompt: int, step: int) -> str:
    """'·is → ·Canberra' for a step: the looking token, an arrow, the token it chose."""
    pos = step_position(n_prompt, step)
    return f"{labels[pos]} → {labels[pos + 1]}"


# -- column groups ---------------------------------------------------------------------


def token_groups(tokenizer, trace: Trace) -> tuple[list[Group], np.ndarray]:
    """Group every position of trace.full_ids by conversation turn.

    Each message's text is its own group; every template token (headers, footers, the
    assistant generation prompt) goes to "Template tokens"; the reply's tokens to "This reply".
    -> (groups, group_of (T,)).
    """
    user_indices = [s.message_index for s in trace.spans if s.role == "user" and s.kind == "content"]
    current = max(user_indices) if user_indices else None
    groups: list[Group] = [Group("Template tokens", "Template tokens")]
    group_of = np.zeros(len(trace.full_ids), dtype=np.int64)
    for span in trace.spans:
        if span.kind != "content" or len(span) == 0:
            continue  # header/footer: template (group 0)
        if span.role == "system":
            name, category = "System prompt", "System prompt"
        else:
            preview = tokenizer.decode(trace.prompt_ids[span.start : span.end]).strip().replace("\n", " ")
            preview = preview[:24] + ("…" if len(preview) > 24 else "")
            name = f"{span.role.capitalize()} (msg {span.message_index}): {preview}"
            category = "Current question" if span.message_index == current else "Earlier turns"
        groups.append(Group(name, category))
        group_of[span.start : span.end] = len(groups) - 1
    groups.append(Group("This reply", "This reply so far"))
    group_of[len(trace.prompt_ids) :] = len(groups) - 1
    return groups, group_of


# -- the eager pass --------------------------------------------------------------------


class _StopPass(Exception):
    """Raised from a hook once the last layer a caller needs has been seen."""


def attention_modules(model) -> list[torch.nn.Module]:
    """The attention block of every decoder layer, in order (modules named '*.self_attn')."""
    return [m for name, m in model.named_modules() if name.endswith("self_attn")]


def eager_pass(
    lm: LoadedModel,
    ids: list[int],
    on_layer: Callable[[int, torch.Tensor], None],
    last_layer: int | None = None,
) -> None:
    """Run the model once with eager attention and hand each layer's weights to on_layer.

    on_layer(layer, weights) gets weights of shape (heads, T, T), row = query, column = key.
    It must not keep them unless it means to. last_layer: stop the pass after this layer.
    Holds the model lock for the whole pass; the model is back on its own attention
    implementation (sdpa) before the lock is released, even if the pass fails.
    """
    model = lm.model
    modules = attention_modules(model)

    def hook(layer: int):
        def run(_module, _args, output) -> None:
            weights = output[1]  # (1, heads, T, T)
            if weights is None:
                raise RuntimeError("the attention block returned no weights; eager attention is off")
            on_layer(layer, weights[0])
            if last_layer is not None and layer >= last_layer:
                raise _StopPass

        return run

    with lm.lock, torch.inference_mode():
        previous = model.config._attn_implementation
        handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(modules)]
        try:
            model.set_attn_implementation("eager")
            # The base model only: the vocabulary head is not needed for attention.
            model.get_decoder()(input_ids=torch.tensor([ids]), use_cache=False)
        except _StopPass:
            pass
        finally:
            for h in handles:
                h.remove()
            model.set_attn_implementation(previous)


_HOOK_NEEDS = ("q_proj", "k_proj", "head_dim", "num_key_value_groups", "scaling")


def hooks_fit(lm: LoadedModel) -> bool:
    """Whether the attention blocks look like Llama's (what the recomputing hook relies on)."""
    modules = attention_modules(lm.model)
    if not modules:
        return False
    rope = getattr(sys.modules.get(type(modules[0]).__module__), "apply_rotary_pos_emb", None)
    return rope is not None and all(hasattr(modules[0], a) for a in _HOOK_NEEDS)


def _recompute(module, h: torch.Tensor, position_embeddings, rows: torch.Tensor) -> torch.Tensor:
    """softmax(q·kᵀ·scale) for the query positions `rows` of one Llama-style block: (H, r, T).

    h: the block's input (1, T, d). Keys after a query's own position are masked out.
    """
    T, hd = h.shape[1], module.head_dim
    cos, sin = position_embeddings  # (1, T, head_dim) each
    rope = sys.modules[type(module).__module__].apply_rotary_pos_emb
    q = module.q_proj(h[:, rows]).view(1, len(rows), -1, hd).transpose(1, 2)  # (1, H, r, hd)
    k = module.k_proj(h).view(1, T, -1, hd).transpose(1, 2)  # (1, KV, T, hd)
    # rope rotates both of its arguments; the second one here is a one-head stand-in.
    q = rope(q, q[:, :1], cos[:, rows], sin[:, rows])[0]
    k = rope(k[:, :1], k, cos, sin)[1]
    k = k.repeat_interleave(module.num_key_value_groups, dim=1)[0]  # (H, T, hd)
    masked = torch.arange(T)[None, :] > rows[:, None]  # (r, T): keys after the query are hidden
    H = q.shape[1]
    # subtle: on a busy 2-core machine every small op waits for both threads, so many heads
    # go in one op; only a large block (every row of a layer) goes head by head, to bound memory.
    step = H if H * len(rows) * T <= 8_000_000 else 1
    weights = torch.empty(H, len(rows), T)  # (H, r, T)
    for first in range(0, H, step):
        heads = slice(first, first + step)
        scores = (q[0, heads] @ k[heads].transpose(1, 2)).float() * module.scaling  # (h, r, T)
        weights[heads] = torch.softmax(scores.masked_fill_(masked, float("-inf")), dim=-1)
    return weights


def hooks_pass(
    lm: LoadedModel,
    ids: list[int],
    rows_for: Callable[[int], torch.Tensor],
    on_layer: Callable[[int, torch.Tensor, torch.Tensor], None],
    last_layer: int | None = None,
) -> None:
    """Run the model as it generates (sdpa) and recompute the attention rows asked for.

    rows_for(layer) -> the query positions wanted (LongTensor); on_layer(layer, rows, weights)
    gets weights of shape (heads, len(rows), T). Each row is softmax(q·kᵀ·scale) over the keys
    at or before its position, from the block's own q/k projections with rotary applied.
    """
    model = lm.model
    modules = attention_modules(model)

    def hook(layer: int):
        def run(module, args, kwargs) -> None:
            rows = rows_for(layer)
            if len(rows):
                h = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]  # (1, T, d)
                on_layer(layer, rows, _recompute(module, h, kwargs["position_embeddings"], rows))
            if last_layer is not None and layer >= last_layer:
                raise _StopPass

        return run

    with lm.lock, torch.inference_mode():
        handles = [m.register_forward_pre_hook(hook(i), with_kwargs=True) for i, m in enumerate(modules)]
        try:
            model.get_decoder()(input_ids=torch.tensor([ids]), use_cache=False)
        except _StopPass:
            pass
        finally:
            for h in handles:
                h.remove()


def attention_pass(
    lm: LoadedModel,
    ids: list[int],
    rows_for: Callable[[int], torch.Tensor],
    on_layer: Callable[[int, torch.Tensor, torch.Tensor], None],
    last_layer: int | None = None,
    method: str = "auto",
) -> str:
    """The chosen query rows of every layer (up to last_layer), by hooks or eager -> the method used.

    method "auto" uses the hooks when they fit the model, else the eager pass.
    """
    if method == "auto":
        method = "hooks" if hooks_fit(lm) else "eager"
    if method == "hooks":
        hooks_pass(lm, ids, rows_for, on_layer, last_layer)
    elif method == "eager":

        def full(layer: int, w: torch.Tensor) -> None:
            rows = rows_for(layer)
            on_layer(layer, rows, w[:, rows])

        eager_pass(lm, ids, full, last_layer)
    else:
        raise ValueError(f"unknown attention method {method!r}")
    return method


# -- the rows pass over the session's KV cache -------------------------------------------


def _lean_of(lm: LoadedModel) -> LeanModel | None:
    """The lean model the chat decodes with, if it is built (never builds it here)."""
    lean = getattr(lm, "lean", None)
    return lean if lean is not None else getattr(lm.model, "_glassbox_lean", None)


def cached_prefix(lean: LeanModel | None, kv: SessionKV | None, ids: list[int]) -> int:
    """How many leading positions of ids have their keys and values in kv (0 when unusable).

    Reuse is keyed on the token ids: K/V at position i depend only on ids[: i + 1], so the
    longest common prefix is valid by construction. Read under the model lock.
    """
    if lean is None or kv is None or kv.keys is None or kv.values is None or kv.model_id != lean.model_id:
        return 0
    n = min(len(kv.ids), len(ids), kv.capacity)
    mismatch = np.flatnonzero(np.asarray(kv.ids[:n]) != np.asarray(ids[:n]))
    return int(mismatch[0]) if len(mismatch) else n


def kv_rows_pass(
    lm: LoadedModel,
    kv: SessionKV | None,
    ids: list[int],
    rows: torch.Tensor,
    on_layer: Callable[[int, torch.Tensor, torch.Tensor], None],
    last_layer: int | None = None,
) -> int | None:
    """The attention rows asked for, computed from the chat's cached keys and values.

    A query row's weights at layer L need only its own q at L and the keys at or before it;
    its hidden state at L needs only the cached K/V of the positions before it. So only the
    asked-for rows go through the layers (a per-row causal mask over the cached keys), plus
    the positions [c, T) missing from the cache (c = cached_prefix), whose K/V are computed
    into scratch tensors. kv is only read: its ids and tensors are left as they are.

    on_layer(layer, positions, weights) gets the computed positions (sorted; a superset of
    rows) and weights (heads, len(positions), T). Returns c, or None (nothing computed) when
    kv does not cover enough of ids (more than MAX_EXTENSION of T missing): use a full pass.
    Holds the model lock for the whole computation.
    """
    T = len(ids)
    with lm.lock, torch.inference_mode():
        lean = _lean_of(lm) if kv is not None and kv.ids else None
        c = cached_prefix(lean, kv, ids)
        if lean is None or c == 0 or T - c > MAX_EXTENSION * T:
            return None
        threads = torch.get_num_threads()
        torch.set_num_threads(min(ROWS_PASS_THREADS, threads))
        try:
            _rows_through_layers(lean, kv, ids, c, rows, on_layer, last_layer)
        finally:
            torch.set_num_threads(threads)
    return c


def _rows_through_layers(
    lean: LeanModel,
    kv: SessionKV,
    ids: list[int],
    c: int,
    rows: torch.Tensor,
    on_layer: Callable[[int, torch.Tensor, torch.Tensor], None],
    last_layer: int | None,
) -> None:
    """kv_rows_pass's computation (the caller holds the lock and checked that kv covers [0, c))."""
    T = len(ids)
    pos = torch.unique(torch.cat([rows[rows < c], torch.arange(c, T)]))  # (n,) sorted
    n, first_new = len(pos), int((pos < c).sum())
    heads, kv_heads, hd = lean.n_heads, lean.n_kv_heads, lean.head_dim
    group, q_width, k_width, half = heads // kv_heads, heads * hd, kv_heads * hd, hd // 2
    cos_all, sin_all = lean.rope(T)
    cos, sin = cos_all[pos], sin_all[pos]  # (n, hd)
    hidden = torch.arange(T)[None, :] > pos[:, None]  # (n, T): keys after each row's own position
    h = lean.embed[torch.tensor(ids)[pos]]  # (n, d)
    last = lean.n_layers - 1 if last_layer is None else last_layer
    for i, w in enumerate(lean.layers[: last + 1]):
        x = _rms_norm(h, w.ln1, lean.eps)
        qkv = x @ w.qkv  # (n, q_width + 2 * k_width)
        qk = qkv[:, : q_width + k_width].view(n, heads + kv_heads, hd).transpose(0, 1)  # (h+kv, n, hd)
        qk = qk * cos + qk.roll(half, dims=-1) * sin  # rotary, as SessionKV.forward applies it
        v = qkv[:, q_width + k_width :].view(n, kv_heads, hd).transpose(0, 1)  # (kv, n, hd)
        keys, values = kv.keys[i, :, :c], kv.values[i, :, :c]  # (kv, c, hd) read-only views
        if c < T:  # the uncached tail: this pass's own keys and values, in new tensors
            keys = torch.cat([keys, qk[heads:, first_new:]], dim=1)  # (kv, T, hd)
            values = torch.cat([values, v[:, first_new:]], dim=1)
        # Query head j uses kv head j // group (transformers' repeat_interleave order).
        q = qk[:heads].reshape(kv_heads, group * n, hd)  # (kv, group * n, hd)
        scores = (q @ keys.transpose(1, 2)).view(heads, n, T) * hd**-0.5  # (heads, n, T)
        weights = torch.softmax(scores.masked_fill_(hidden, float("-inf")), dim=-1)
        mixed = (weights.view(kv_heads, group * n, T) @ values).view(heads, n, hd)
        h = h + mixed.transpose(0, 1).reshape(n, q_width) @ w.o
        x = _rms_norm(h, w.ln2, lean.eps)
        gate_up = x @ w.gate_up  # (n, 2 * ffn)
        h = h + (torch.nn.functional.silu(gate_up[:, : lean.ffn]) * gate_up[:, lean.ffn :]) @ w.down
        on_layer(i, pos, weights)


def _bins(n: int, k: int) -> np.ndarray:
    """Equal-width bin index for each of n positions, k bins. 10, 3 -> [0 0 0 0 1 1 1 2 2 2]."""
    return np.minimum((np.arange(n) * k) // max(n, 1), k - 1)


def thumbnail_rows(T: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to THUMB_ROWS evenly spaced query positions in each of k row blocks.

    -> (positions (S,), block of each (S,)). Every row is taken when T <= k * THUMB_ROWS.
    """
    bins = _bins(T, k)
    rows: list[int] = []
    blocks: list[int] = []
    for b in range(k):
        members = np.flatnonzero(bins == b)
        picks = np.unique(np.linspace(0, len(members) - 1, min(THUMB_ROWS, len(members))).round().astype(int))
        rows += members[picks].tolist()
        blocks += [b] * len(picks)
    return torch.tensor(rows), torch.tensor(blocks)


def compute_overview(
    lm: LoadedModel,
    trace: Trace,
    keep_layer: int | None = None,
    method: str = "auto",
    kv: SessionKV | None = None,
) -> AttentionOverview:
    """One pass over trace.full_ids -> the overview (and, if asked, the rows of one layer).

    method "auto": the rows pass over kv (the chat's SessionKV) when it covers the reply's
    context, else a full pass ("hooks", or "eager" for models the hooks do not fit); "kv"
    insists on the rows pass (ValueError when kv does not cover it). The kept layer goes into
    the caches: its reply rows after a rows pass, all its rows after a full pass.
    """
    ids = trace.full_ids
    T, P = len(ids), len(trace.prompt_ids)
    R = T - P
    if R < 1:
        raise ValueError("This reply has no tokens yet, so there is no attention to show.")
    L, H = lm.n_layers, lm.n_heads
    groups, group_of = token_groups(lm.tokenizer, trace)
    G = len(groups)
    k = min(THUMB, T)
    onehot = torch.zeros(T, G)  # (T, G)
    onehot[torch.arange(T), torch.from_numpy(group_of)] = 1.0
    col_bins = torch.zeros(T, k)  # (T, k)
    col_bins[torch.arange(T), torch.from_numpy(_bins(T, k))] = 1.0
    sample, sample_block = thumbnail_rows(T, k)  # (S,), (S,)
    block_avg = torch.zeros(k, len(sample))  # (k, S): mean over a block's sampled rows
    block_avg[sample_block, torch.arange(len(sample))] = 1.0
    block_avg /= block_avg.sum(1, keepdim=True)
    reply_rows = step_rows(P, T)  # (R,): row s chose reply token s
    needed = torch.cat([reply_rows, sample])
    everything = torch.arange(T)
    current = [g for g, grp in enumerate(groups) if grp.category == "Current question"]
    steps = torch.arange(R)

    grouped = np.zeros((L, H, R, G), dtype=np.float32)
    thumbs = np.zeros((L, H, k, k), dtype=np.float32)
    reply_sum = torch.zeros(R, T)
    stat = np.zeros((L, H, 4), dtype=np.float64)  # entropy, sink, previous, question
    kept: list[np.ndarray] = []

    def on_layer(layer: int, rows: torch.Tensor, w: torch.Tensor) -> None:
        where = torch.full((T,), -1, dtype=torch.long)
        where[rows] = torch.arange(len(rows))  # position -> index into w's rows
        reply = w[:, where[reply_rows]]  # (H, R, T)
        by_group = reply @ onehot  # (H, R, G)
        grouped[layer] = by_group.numpy()
        thumbs[layer] = (block_avg @ (w[:, where[sample]] @ col_bins)).numpy()  # (k,S)@(H,S,k) -> (H,k,k)
        reply_sum.add_(reply.sum(0))
        entropy = -(reply * torch.log2(reply.clamp_min(1e-30))).sum(-1)  # (H, R)
        stat[layer, :, 0] = entropy.mean(-1).numpy()
        stat[layer, :, 1] = reply[:, :, 0].mean(-1).numpy()
        stat[layer, :, 2] = reply[:, steps, (reply_rows - 1).clamp_min(0)].mean(-1).numpy()
        stat[layer, :, 3] = by_group[:, :, current].sum(-1).mean(-1).numpy() if current else 0.0
        if layer == keep_layer:
            # every row in order (a full pass), else the reply's rows; nothing writes to them later
            kept.append(w.numpy() if len(rows) == T else reply.numpy())

    start = time.perf_counter()
    if method in ("auto", "kv") and kv_rows_pass(lm, kv, ids, needed, on_layer) is not None:
        used = "kv"
    elif method == "kv":
        raise ValueError("the session's KV cache does not cover this reply")
    else:
        used = attention_pass(
            lm, ids, lambda i: everything if i == keep_layer else needed, on_layer, method=method
        )
    seconds = time.perf_counter() - start
    if kept:
        _keep(trace, keep_layer, kept[0])
    return AttentionOverview(
        trace_id=trace.trace_id,
        n_prompt=P,
        labels=[readable(lm.tokenizer, i) for i in ids],
        groups=groups,
        group_of=group_of,
        grouped=grouped,
        thumbs=thumbs,
        reply_mean=(reply_sum / (L * H)).numpy(),
        stats=_stats_frame(stat),
        seconds=seconds,
        method=used,
    )


def _stats_frame(stat: np.ndarray) -> pd.DataFrame:
    L, H, _ = stat.shape
    df = pd.DataFrame(
        {
            "layer": np.repeat(np.arange(L), H),
            "head": np.tile(np.arange(H), L),
            "entropy_bits": stat[:, :, 0].ravel(),
            "first_token": stat[:, :, 1].ravel(),
            "previous_token": stat[:, :, 2].ravel(),
            "current_question": stat[:, :, 3].ravel(),
        }
    )
    looks = np.full(len(df), "", dtype=object)
    looks[df["previous_token"].to_numpy() >= PREVIOUS_HEAD] = "previous-token head"
    looks[df["first_token"].to_numpy() >= SINK_HEAD] = "sink head"
    df["looks_like"] = looks
    return df


def _check_layer(lm: LoadedModel, layer: int) -> None:
    if not 0 <= layer < lm.n_layers:
        raise ValueError(f"layer must be in 0..{lm.n_layers - 1}, got {layer}")


def compute_layer(lm: LoadedModel, trace: Trace, layer: int, method: str = "auto") -> np.ndarray:
    """Every row of one layer: (heads, T, T). Earlier layers compute no rows; the pass stops after it."""
    _check_layer(lm, layer)
    T = len(trace.full_ids)
    everything, nothing = torch.arange(T), torch.zeros(0, dtype=torch.long)
    kept: list[np.ndarray] = []

    def on_layer(i: int, rows: torch.Tensor, w: torch.Tensor) -> None:
        if i == layer:
            kept.append(w.numpy())

    attention_pass(
        lm, trace.full_ids, lambda i: everything if i == layer else nothing, on_layer, layer, method
    )
    return kept[0]


def compute_reply_rows(lm: LoadedModel, trace: Trace, layer: int, kv: SessionKV | None = None) -> np.ndarray:
    """The step rows of one layer: (heads, R, T), row s at position P + s - 1, zero after it.

    A rows pass over kv that stops after `layer` when kv covers the context; otherwise the
    whole layer (then cached too, for the whole-sequence head view), sliced.
    """
    _check_layer(lm, layer)
    ids, P = trace.full_ids, len(trace.prompt_ids)
    reply_rows = step_rows(P, len(ids))
    kept: list[np.ndarray] = []

    def on_layer(i: int, rows: torch.Tensor, w: torch.Tensor) -> None:
        if i == layer:
            where = torch.full((len(ids),), -1, dtype=torch.long)
            where[rows] = torch.arange(len(rows))
            kept.append(w[:, where[reply_rows]].numpy())  # (H, R, T)

    if (
        not layer_is_cached(trace, layer)
        and kv_rows_pass(lm, kv, ids, reply_rows, on_layer, layer) is not None
    ):
        return kept[0]
    return layer_weights(lm, trace, layer)[:, P - 1 : -1].copy()


def _keep(trace: Trace, layer: int, weights: np.ndarray) -> None:
    """Cache a pass's kept layer: all rows (heads, T, T) or the step rows (heads, R, T)."""
    P, T = len(trace.prompt_ids), len(trace.full_ids)
    if weights.shape[1] == T:
        _LAYERS.get_or_compute(_layer_key(trace, layer), lambda: weights)
        weights = weights[:, P - 1 : -1].copy()
    _REPLY_ROWS.get_or_compute(_reply_key(trace, layer), lambda: weights)


# -- cached entry points ---------------------------------------------------------------


def _overview_key(trace: Trace) -> tuple:
    return ("overview", trace.trace_id, len(trace.full_ids))


def _layer_key(trace: Trace, layer: int | None) -> tuple:
    return ("layer", trace.trace_id, len(trace.full_ids), layer)


def _reply_key(trace: Trace, layer: int | None) -> tuple:
    return ("reply rows", trace.trace_id, len(trace.full_ids), layer)


def overview(
    lm: LoadedModel, trace: Trace, keep_layer: int | None = None, kv: SessionKV | None = None
) -> AttentionOverview:
    """The cached overview of a reply; the first call also keeps `keep_layer`'s weights.

    kv: the chat session's SessionKV (read only); with it the pass reads the cached keys and
    values instead of running the model over the whole context again.
    """
    return _OVERVIEWS.get_or_compute(
        _overview_key(trace), lambda: compute_overview(lm, trace, keep_layer, kv=kv)
    )


def reply_weights(lm: LoadedModel, trace: Trace, layer: int, kv: SessionKV | None = None) -> np.ndarray:
    """The cached step rows of one layer: (heads, R, T); row s is position P + s - 1 (chose token s)."""
    return _REPLY_ROWS.get_or_compute(
        _reply_key(trace, layer), lambda: compute_reply_rows(lm, trace, layer, kv)
    )


def layer_weights(lm: LoadedModel, trace: Trace, layer: int) -> np.ndarray:
    """The cached weights of every row of one layer: (heads, T, T). Needs a pass up to `layer`."""
    return _LAYERS.get_or_compute(_layer_key(trace, layer), lambda: compute_layer(lm, trace, layer))


def is_cached(trace: Trace, layer: int) -> bool:
    """True when the page can open this reply and layer (step rows) without running the model."""
    return _overview_key(trace) in _OVERVIEWS and _reply_key(trace, layer) in _REPLY_ROWS


def layer_is_cached(trace: Trace, layer: int) -> bool:
    """True when every row of this layer is at hand (the whole-sequence head view)."""
    return _layer_key(trace, layer) in _LAYERS


def clear_caches() -> None:
    _OVERVIEWS.clear()
    _LAYERS.clear()
    _REPLY_ROWS.clear()


# -- DataFrames for the views ----------------------------------------------------------


def model_view_frame(ov: AttentionOverview) -> pd.DataFrame:
    """One row per thumbnail cell: layer, head, q_block, k_block, share, relative.

    share: the mean share of attention that the queries in row block q_block gave to keys in
    column block k_block (each block row sums to 1). relative: share / the head's largest share.
    """
    L, H, k, _ = ov.thumbs.shape
    la, he, qb, kb = np.meshgrid(np.arange(L), np.arange(H), np.arange(k), np.arange(k), indexing="ij")
    peak = ov.thumbs.max(axis=(2, 3), keepdims=True)
    rel = np.divide(ov.thumbs, peak, out=np.zeros_like(ov.thumbs), where=peak > 0)
    return pd.DataFrame(
        {
            "layer": la.ravel(),
            "head": he.ravel(),
            "q_block": qb.ravel(),
            "k_block": kb.ravel(),
            "share": ov.thumbs.ravel(),
            "relative": rel.ravel(),
        }
    )


def _axis_label(pos: int, label: str) -> str:
    return f"{pos} {label}"


def _query_label(pos: int, labels: list[str], n_prompt: int) -> str:
    """A query row's axis label; a step row also names the token it chose: '41 ·is → ·Canberra'."""
    if step_position(n_prompt, 0) <= pos < len(labels) - 1:
        return f"{pos} {labels[pos]} → {labels[pos + 1]}"
    return _axis_label(pos, labels[pos])


def head_frame(
    weights: np.ndarray, labels: list[str], rows: range, cols: range, n_prompt: int, first: int = 0
) -> pd.DataFrame:
    """One head's weights as long rows: query, key, query_token, key_token, weight.

    weights: (n, T) for one head (or a mean of heads), row i being position first + i:
    a whole layer's head (first 0) or the step rows (first P - 1). rows/cols: the positions to
    include. A step row's query_token names the token it chose ('41 ·is → ·Canberra').
    """
    q = np.repeat(np.asarray(rows), len(cols))
    kk = np.tile(np.asarray(cols), len(rows))
    return pd.DataFrame(
        {
            "query": q,
            "key": kk,
            "query_token": [_query_label(i, labels, n_prompt) for i in q],
            "key_token": [_axis_label(j, labels[j]) for j in kk],
            "weight": weights[q - first, kk].astype(np.float64),
            "in_reply": q >= step_position(n_prompt, 0),  # a step row: it chose a reply token
        }
    )


def head_frame_by_group(
    weights: np.ndarray, ov: AttentionOverview, rows: range, first: int = 0
) -> pd.DataFrame:
    """One head's rows with columns summed per group: query, query_token, group, group_name, weight.

    weights: (n, T), row i being position first + i (as in head_frame).
    """
    G = len(ov.groups)
    r = np.asarray(rows)
    sums = np.zeros((len(r), G))
    np.add.at(sums.T, ov.group_of, weights[r - first].T)  # (G, rows) += (T, rows) by group
    return pd.DataFrame(
        {
            "query": np.repeat(r, G),
            "query_token": [_query_label(i, ov.labels, ov.n_prompt) for i in np.repeat(r, G)],
            "group": np.tile(np.arange(G), len(r)),
            "group_name": [g.name for g in ov.groups] * len(r),
            "weight": sums.ravel(),
        }
    )


def turn_frame(ov: AttentionOverview, layer: int | None = None, head: int | None = None) -> pd.DataFrame:
    """For each step, the attention that chose its token, split by category (CATEGORIES).

    layer None -> mean over every layer and head; head None -> mean over the layer's heads.
    -> step (0-based), token ("1 ↵ → ·The": numbered from 1, as the pages number steps; the
    token whose attention it is, then the token it chose), category, share (sums to 1 per step).
    """
    g = ov.grouped  # (L, H, R, G)
    if layer is None:
        per_group = g.mean(axis=(0, 1))
    elif head is None:
        per_group = g[layer].mean(axis=0)
    else:
        per_group = g[layer, head]  # (R, G)
    cat_of = np.array([CATEGORIES.index(grp.category) for grp in ov.groups])
    per_cat = np.zeros((per_group.shape[0], len(CATEGORIES)))
    np.add.at(per_cat.T, cat_of, per_group.T)
    R = per_cat.shape[0]
    return pd.DataFrame(
        {
            "step": np.repeat(np.arange(R), len(CATEGORIES)),
            "token": [_axis_label(s + 1, ov.step_label(s)) for s in np.repeat(np.arange(R), len(CATEGORIES))],
            "category": CATEGORIES * R,
            "order": list(range(len(CATEGORIES))) * R,
            "share": per_cat.ravel(),
        }
    )


def token_row(
    ov: AttentionOverview, step: int, reply_w: np.ndarray | None = None, head: int | None = None
) -> np.ndarray:
    """The attention that chose reply token `step`: row P + step - 1, (T,), zero after that position.

    reply_w: one layer's step rows (heads, R, T), or None -> mean over every layer and head;
    head None -> mean of reply_w's heads.
    """
    if reply_w is None:
        return ov.reply_mean[step]
    return reply_w[:, step].mean(axis=0) if head is None else reply_w[head, step]


def top_attended(ov: AttentionOverview, row: np.ndarray, n: int = 10) -> pd.DataFrame:
    """The n positions with the largest weight in row: position, token, turn, weight."""
    order = np.argsort(-row, kind="stable")[:n]
    return pd.DataFrame(
        {
            "position": order,
            "token": [ov.labels[i] for i in order],
            "turn": [ov.groups[ov.group_of[i]].name for i in order],
            "weight": row[order].astype(np.float64),
        }
    )
