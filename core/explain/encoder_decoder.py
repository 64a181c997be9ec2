"""Encoder versus decoder: the same sentence read by MiniLM (an encoder) and SmolLM2 (a decoder).

An encoder's self-attention is bidirectional: every token may look at every token, before
and after it, so one head's weights fill the whole (T, T) square. A decoder's is causal: a
token may look only at itself and the tokens before it, so everything above the diagonal is
masked to exactly 0 and the weights form a lower triangle. That is what lets a decoder
generate left to right: the next token never depends on tokens that do not exist yet.

Both views come from the models' own eager attention (softmax(q·kᵀ/√d) as transformers
computes it), never from arithmetic of ours:
- MiniLM: the sentence-transformers model's underlying BertModel, run with
  output_attentions=True on an eager twin that shares its weights (see _eager_encoder);
- SmolLM2: core.explain.attention.eager_pass, the reference pass the Attention page is
  tested against.

The two models tokenize differently (WordPiece with [CLS] and [SEP] against byte-level BPE),
so the two squares have different rows. Results are cached per (model, sentence, layer).
"""

from __future__ import annotations

import copy
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from core.cache import BoundedCache
from core.conversation import Message, reply_number
from core.explain.attention import eager_pass
from core.explain.tokenization import encode_text
from core.models import LoadedModel
from core.tokens import encode, readable

MAX_CHARS = 300  # a sentence longer than this is cut: a 300-character sentence is ~60-100 tokens
ENCODER_NAME = "all-MiniLM-L6-v2"

# One layer of one sentence: (heads, T, T) float32, 3.2 MB at T = 300. Keyed by model and text.
_LAYERS: BoundedCache[tuple[list[str], np.ndarray]] = BoundedCache(max_entries=16, max_bytes=64 * 2**20)
_EAGER_TWINS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_TWIN_LOCK = threading.Lock()


@dataclass(frozen=True)
class Bounded:
    """A sentence cut to at most MAX_CHARS characters; `cut` says whether anything was left out."""

    text: str
    cut: bool
    original_length: int


def bounded(text: str, limit: int = MAX_CHARS) -> Bounded:
    """The first `limit` characters of text. "abcdef", limit 4 -> Bounded("abcd", True, 6)."""
    return Bounded(text[:limit], len(text) > limit, len(text))


@dataclass(frozen=True)
class MessageChoice:
    """A chat message that can be compared: its index in the conversation and a picker label."""

    index: int
    label: str  # "Your message 2: What is its population?" or "Reply 2: Canberra has…"
    text: str


def message_choices(messages: list[Message], preview: int = 50) -> list[MessageChoice]:
    """Every user and assistant message with text, in conversation order (the system prompt is left out)."""
    choices: list[MessageChoice] = []
    asked = 0
    for i, m in enumerate(messages):
        if m.role not in ("user", "assistant") or not m.content.strip():
            continue
        if m.role == "user":
            asked += 1
            tag = f"Your message {asked}"
        else:
            tag = f"Reply {reply_number(messages, i)}"
        short = m.content.strip().replace("\n", " ")
        short = short[:preview] + ("…" if len(short) > preview else "")
        choices.append(MessageChoice(i, f"{tag}: {short}", m.content))
    return choices


@dataclass
class AttentionSquare:
    """One model's attention over one sentence, at one layer: one head, or the mean of its heads."""

    model: str  # "all-MiniLM-L6-v2" or the chat model's name
    kind: str  # "encoder" or "decoder"
    tokenizer: str  # "WordPiece" or "BPE"
    labels: list[str]  # (T,) token text as the model read it
    weights: np.ndarray  # (T, T) float32, row = query (the token looking), column = key (looked at)
    layer: int  # 0-based
    head: int | None  # 0-based, or None for the mean over every head of the layer
    n_layers: int
    n_heads: int

    @property
    def causal(self) -> bool:
        return self.kind == "decoder"

    @property
    def n_tokens(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Summary:
    """What a test (and the page) can check about a square. Shares are of the whole square's weight."""

    n_tokens: int
    above_diagonal: float  # share of weight on keys AFTER the query: 0 for a decoder, > 0 for an encoder
    max_row_error: float  # largest |row sum - 1|: every query's weights sum to 1


def above_diagonal_share(weights: np.ndarray) -> float:
    """Share of the weight strictly above the diagonal (on later tokens). (T, T) -> [0, 1].

    [[1, 0], [.5, .5]] -> 0.0 (causal); [[.5, .5], [.5, .5]] -> 0.25.
    """
    total = float(weights.sum(dtype=np.float64))
    return float(np.triu(weights, k=1).sum(dtype=np.float64)) / total if total else 0.0


def summary(square: AttentionSquare) -> Summary:
    rows = square.weights.sum(axis=1, dtype=np.float64)  # (T,)
    return Summary(
        n_tokens=square.n_tokens,
        above_diagonal=above_diagonal_share(square.weights),
        max_row_error=float(np.abs(rows - 1.0).max()) if len(rows) else 0.0,
    )


def attention_frame(square: AttentionSquare) -> pd.DataFrame:
    """The square as tidy rows: query, key, query_token, key_token, weight, masked.

    Tokens are labelled "3 ·cat" (position, then text) so that a repeated token keeps its own
    row. masked: the decoder's keys after the query, which its causal mask hides.
    """
    T = square.n_tokens
    q, k = np.divmod(np.arange(T * T), T)  # row-major over (T, T)
    names = np.asarray([f"{i} {t}" for i, t in enumerate(square.labels)], dtype=object)
    return pd.DataFrame(
        {
            "query": q,
            "key": k,
            "query_token": names[q],
            "key_token": names[k],
            "weight": square.weights.ravel().astype(np.float64),
            "masked": (k > q) if square.causal else np.zeros(T * T, dtype=bool),
        }
    )


def _pick(layer_weights: np.ndarray, head: int | None) -> np.ndarray:
    """(heads, T, T) -> (T, T): one head, or the mean over heads (rows still sum to 1)."""
    return layer_weights.mean(axis=0) if head is None else layer_weights[head]


def _check(index: int | None, n: int, what: str) -> None:
    if index is not None and not 0 <= index < n:
        raise ValueError(f"{what} {index} does not exist: the model has {n} (0-based indices)")


# -- the encoder -------------------------------------------------------------------------


def bert_of(embedder: Any) -> Any:
    """The transformers model inside a sentence-transformers model (a BertModel for MiniLM)."""
    first = embedder[0]
    model = getattr(first, "auto_model", None) or getattr(first, "model", None)
    if model is None or not hasattr(model, "config"):
        raise ValueError("the sentence-embedding model holds no transformers model")
    return model


def _eager_encoder(embedder: Any) -> Any:
    """An eager-attention twin of the embedder's BertModel that shares every weight tensor.

    subtle: the embedder is shared by every session and the Embeddings page encodes with it
    without a lock. Switching its attention implementation for one pass would switch it for a
    concurrent encode too, which could then build its mask for sdpa and use it in eager. The
    twin has its own config (so its own attention implementation) and costs no weight memory.
    """
    bert = bert_of(embedder)
    with _TWIN_LOCK:
        twin = _EAGER_TWINS.get(bert)
        if twin is None:
            shared = {id(t): t for t in (*bert.parameters(), *bert.buffers())}
            twin = copy.deepcopy(bert, memo=shared)
            twin.set_attn_implementation("eager")
            twin.eval()
            _EAGER_TWINS[bert] = twin
    return twin


def encoder_ids(embedder: Any, text: str) -> list[int]:
    """WordPiece ids as the encoder reads a sentence: [CLS] text [SEP]. Typed "[SEP]" stays text."""
    bert = bert_of(embedder)
    return encode(
        embedder.tokenizer,
        text,
        split_special=True,
        add_special_tokens=True,
        truncation=True,
        max_length=int(bert.config.max_position_embeddings),
    )


def _encoder_layer(embedder: Any, text: str, layer: int) -> tuple[list[str], np.ndarray]:
    def compute() -> tuple[list[str], np.ndarray]:
        ids = encoder_ids(embedder, text)
        twin = _eager_encoder(embedder)
        with torch.inference_mode():
            out = twin(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                output_attentions=True,
            )
        weights = out.attentions[layer][0].float().numpy().copy()  # (heads, T, T)
        return embedder.tokenizer.convert_ids_to_tokens(ids), weights

    return _LAYERS.get_or_compute(("encoder", id(bert_of(embedder)), text, layer), compute)


def encoder_attention(embedder: Any, text: str, layer: int, head: int | None = None) -> AttentionSquare:
    """MiniLM's attention over `text` at `layer` (0-based): one head, or head None for their mean."""
    if not text:
        raise ValueError("there is no text to read")
    config = bert_of(embedder).config
    n_layers, n_heads = int(config.num_hidden_layers), int(config.num_attention_heads)
    _check(layer, n_layers, "layer")
    _check(head, n_heads, "head")
    labels, weights = _encoder_layer(embedder, text, layer)
    return AttentionSquare(
        ENCODER_NAME, "encoder", "WordPiece", labels, _pick(weights, head), layer, head, n_layers, n_heads
    )


# -- the decoder -------------------------------------------------------------------------


def decoder_ids(lm: LoadedModel, text: str) -> list[int]:
    """BPE ids as the chat model reads the sentence on its own (no chat template around it)."""
    return encode_text(lm.tokenizer, text)


def _decoder_layer(lm: LoadedModel, text: str, layer: int) -> tuple[list[str], np.ndarray]:
    def compute() -> tuple[list[str], np.ndarray]:
        ids = decoder_ids(lm, text)
        kept: dict[int, np.ndarray] = {}

        def on_layer(i: int, w: torch.Tensor) -> None:  # w: (heads, T, T)
            if i == layer:
                kept[i] = w.float().numpy().copy()

        eager_pass(lm, ids, on_layer, last_layer=layer)  # stops after the layer asked for
        return [readable(lm.tokenizer, i) for i in ids], kept[layer]

    return _LAYERS.get_or_compute(("decoder", id(lm), lm.name, text, layer), compute)


def decoder_attention(lm: LoadedModel, text: str, layer: int, head: int | None = None) -> AttentionSquare:
    """The chat model's attention over `text` at `layer` (0-based): one head, or head None for their mean."""
    if not text:
        raise ValueError("there is no text to read")
    _check(layer, lm.n_layers, "layer")
    _check(head, lm.n_heads, "head")
    labels, weights = _decoder_layer(lm, text, layer)
    return AttentionSquare(
        lm.name, "decoder", "BPE", labels, _pick(weights, head), layer, head, lm.n_layers, lm.n_heads
    )
