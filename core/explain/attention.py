"""Attention patterns behind a reply: where each token looked, at every layer and head.

Every weight comes from the model interface (core.runner), never from the model's modules:
the runner's rows pass runs the model's own attention code (sdpa for the output, the model's
eager function on just the query rows asked for, so q/k norms, biases, sliding windows and
scaled embeddings are all the model's), proven against an eager pass at load. subtle: 30
layers x 9 heads x T^2 floats is 4.5 GB at T = 2048, so the weights are never kept for all
layers, and for most layers not even computed for every row. The rows the page needs are
reduced as each layer is recorded:

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
attention is attention_at for that one row), on every page and in every link between them.

After chatting with a Llama-style model there is a cheaper way (core.runner.session_rows): the
chat's SessionKV already holds every token's keys and values, so only the rows above go
through the layers, each with a causal mask over the cached keys: well under a second instead
of a whole pass of several seconds at T = 2,000. It is used only once its own self-check
against the eager pass has passed. The session's cache is only read; tokens it lacks (the
reply's last one, or a whole other take) get keys and values in scratch tensors. Without a
usable cache (an imported chat, another architecture) one pass of the model runs; the head
view's "whole sequence" rows (heads, T, T) come from a pass that stops after their layer.

Where the rows pass fails its self-check, the views use the model's eager pass (the same
numbers, slower; fallback_note says so), and refuse, in a sentence, a length whose eager
weights would not fit (AttentionUnavailable). Results are cached per (trace, length) in
caches bounded by entries and bytes, so revisits are instant and memory stays flat. The
model lock is held for each pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from core.cache import BoundedCache
from core.models import LoadedModel
from core.runner import Runner, attention_rows_each_layer, runner_for, session_rows
from core.tokens import readable
from core.trace import Trace

if TYPE_CHECKING:
    from core.kvcache import SessionKV

THUMB = 6  # model-view thumbnail side: 30 x 9 heads x 36 cells = 9,720 cells in one chart
THUMB_ROWS = 16  # query rows sampled per thumbnail row block
SINK_HEAD = 0.5  # a head whose reply rows give at least this share to the first token
PREVIOUS_HEAD = 0.5  # ... or to the previous token
CATEGORIES = ["System prompt", "Earlier turns", "Current question", "Template tokens", "This reply so far"]

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
    method: str  # "kv" (session pass over the chat's KV cache), "rows" (one pass, runner rows) or "eager"

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


# -- the passes (every one through core.runner) -----------------------------------------

# The eager fallback holds every layer's (heads, T, T) weights at once: 4.5 GB for a 30 x 9
# model at T = 2,048. Above this it is refused, with a sentence, instead of exhausting memory.
EAGER_LIMIT_BYTES = 1 << 30


class AttentionUnavailable(ValueError):
    """A view this model's attention cannot give exactly; str() is one sentence for the page."""


def fallback_note(lm: LoadedModel) -> str | None:
    """One sentence when the views use the eager fallback (the rows pass failed its self-check), else None."""
    runner = runner_for(lm)
    if runner.self_check():
        return None
    error = runner.check_error
    how = "could not be hooked" if error is None or error == float("inf") else f"differed by {error:.1e}"
    return (
        "Reading this model's attention row by row did not pass its check against the model's own eager "
        f"pass (it {how}), so every weight here comes from that eager pass: the same numbers, slower."
    )


def _eager_bytes(runner: Runner, T: int) -> int:
    facts = runner.facts
    return facts.n_layers * facts.n_heads * T * T * 4


def _size(n: float) -> str:
    """Bytes for a reader: 4.5 GB, 38 MB, 77 KB."""
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}" if unit == "GB" else f"{n / scale:,.0f} {unit}"
    return f"{n:.0f} bytes"


def eager_fits(runner: Runner, T: int) -> bool:
    """Whether every layer's whole attention over T tokens is small enough to hold at once."""
    return _eager_bytes(runner, T) <= EAGER_LIMIT_BYTES


def _guard(runner: Runner, T: int) -> None:
    """Where the rows pass failed its self-check: refuse an eager pass too large to hold, in a sentence."""
    if runner.self_check() or _eager_bytes(runner, T) <= EAGER_LIMIT_BYTES:
        return
    raise AttentionUnavailable(
        f"This model's attention cannot be read row by row (its self-check failed), and its full eager "
        f"pass over {T:,} tokens would hold {_size(_eager_bytes(runner, T))} of weights, more than this app "
        "allows; pick a shorter reply to see its attention."
    )


def _guard_eager(runner: Runner, T: int) -> None:
    if _eager_bytes(runner, T) > EAGER_LIMIT_BYTES:
        raise AttentionUnavailable(
            f"An eager pass over {T:,} tokens would hold {_size(_eager_bytes(runner, T))} of attention "
            "weights, more than this app allows; pick a shorter text."
        )


def eager_pass(
    lm: LoadedModel,
    ids: list[int],
    on_layer: Callable[[int, torch.Tensor], None],
    last_layer: int | None = None,
) -> None:
    """The model's own eager attention, every row: on_layer(layer, weights (heads, T, T)) up to last_layer.

    The reference the other passes are proven against (Runner.eager_attention). It holds
    every layer at once, so it is for short inputs (the encoder/decoder page's sentence).
    """
    runner = runner_for(lm)
    _guard_eager(runner, len(ids))
    weights = runner.eager_attention(ids)  # [(heads, T, T)] * layers
    for layer, w in enumerate(weights[: None if last_layer is None else last_layer + 1]):
        on_layer(layer, w)


def attention_at(lm: LoadedModel, ids: list[int], positions: list[int]) -> np.ndarray:
    """The attention of the given query positions at every layer: (layers, heads, R, T).

    One pass through the runner (attention_rows_each_layer), exact: the walkthrough asks it
    for its one row, the same arithmetic as every view of the attention page.
    """
    runner = runner_for(lm)
    _guard(runner, len(ids))
    rows = torch.as_tensor(positions, dtype=torch.long)
    facts = runner.facts
    out = np.zeros((facts.n_layers, facts.n_heads, len(rows), len(ids)), dtype=np.float32)

    def keep(layer: int, weights: torch.Tensor) -> None:
        out[layer] = weights.numpy()  # (heads, R, T)

    attention_rows_each_layer(runner, ids, rows, keep)
    return out


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

    method "auto": the rows pass over kv (the chat's SessionKV, core.runner.session_rows) when
    it covers the reply's context and passed its self-check, else one pass of the model with
    the runner's rows pass ("rows"; "eager" where that failed its self-check). "kv" insists on
    the session pass (ValueError when kv does not cover it); "rows" and "eager" force those.
    The kept layer goes into the caches: its step rows, and every row when every row was computed
    (a short reply, or a session pass over the whole context).
    """
    ids = trace.full_ids
    T, P = len(ids), len(trace.prompt_ids)
    R = T - P
    if R < 1:
        raise ValueError("This reply has no tokens yet, so there is no attention to show.")
    runner = runner_for(lm)
    L, H = runner.facts.n_layers, runner.facts.n_heads
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
    needed = torch.unique(torch.cat([reply_rows, sample]))  # (n,) sorted
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
            # every row in order (all were needed), else the step rows; nothing writes to them later
            kept.append(w.numpy() if len(rows) == T else reply.numpy())

    if method not in ("auto", "kv", "rows", "eager"):
        raise ValueError(f"unknown attention method {method!r}")
    start = time.perf_counter()
    if method in ("auto", "kv") and session_rows(runner, kv, ids, needed, on_layer) is not None:
        used = "kv"
    elif method == "kv":
        raise ValueError("the session's KV cache does not cover this reply")
    elif method == "eager":
        _guard_eager(runner, T)
        for layer, w in enumerate(runner.eager_attention(ids)):  # (heads, T, T) each
            on_layer(layer, needed, w[:, needed])
        used = "eager"
    else:
        _guard(runner, T)
        used = attention_rows_each_layer(runner, ids, needed, lambda i, w: on_layer(i, needed, w))
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
    n = runner_for(lm).facts.n_layers
    if not 0 <= layer < n:
        raise ValueError(f"layer must be in 0..{n - 1}, got {layer}")


def compute_layer(lm: LoadedModel, trace: Trace, layer: int, method: str = "auto") -> np.ndarray:
    """Every row of one layer: (heads, T, T), through the runner; the pass stops after the layer.

    method "eager" takes it from the model's own eager pass (the reference) instead.
    """
    _check_layer(lm, layer)
    runner, ids = runner_for(lm), trace.full_ids
    if method == "eager":
        _guard_eager(runner, len(ids))
        return runner.eager_attention(ids)[layer].numpy()
    _guard(runner, len(ids))
    return runner.attention_rows(ids, layer, torch.arange(len(ids))).numpy()


def compute_reply_rows(lm: LoadedModel, trace: Trace, layer: int, kv: SessionKV | None = None) -> np.ndarray:
    """The step rows of one layer: (heads, R, T), row s at position P + s - 1, zero after it.

    Sliced from the whole layer when it is cached; else the session pass over kv when kv covers
    the context; else the runner's rows pass for just these rows. Each stops after `layer`.
    """
    _check_layer(lm, layer)
    runner, ids, P = runner_for(lm), trace.full_ids, len(trace.prompt_ids)
    if layer_is_cached(trace, layer):
        return layer_weights(lm, trace, layer)[:, P - 1 : -1].copy()
    reply_rows = step_rows(P, len(ids))
    kept: list[np.ndarray] = []

    def on_layer(i: int, rows: torch.Tensor, w: torch.Tensor) -> None:
        if i == layer:
            where = torch.full((len(ids),), -1, dtype=torch.long)
            where[rows] = torch.arange(len(rows))
            kept.append(w[:, where[reply_rows]].numpy())  # (H, R, T)

    if session_rows(runner, kv, ids, reply_rows, on_layer, layer) is not None:
        return kept[0]
    _guard(runner, len(ids))
    return runner.attention_rows(ids, layer, reply_rows).numpy()


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


def turn_shares(ov: AttentionOverview) -> dict[str, float]:
    """The share of the reply's attention per category (CATEGORIES), over every layer, head and
    step: the mean of turn_frame's bars. E.g. {"Current question": 0.04, "Earlier turns": 0.21, ...}."""
    frame = turn_frame(ov)
    means = frame.groupby("category", sort=False)["share"].mean()
    return {c: float(means.get(c, 0.0)) for c in CATEGORIES}


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
