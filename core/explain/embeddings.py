"""Text as vectors: the chat model's token vectors and the sentence model's message vectors.

Token level uses SmolLM2's own vectors: layer 0 is the input embedding (one fixed vector per
token id, wherever it stands); layer L is the residual stream after decoder block L, which
depends on every earlier token. Message level uses all-MiniLM-L6-v2 sentence embeddings; the
page passes the loaded SentenceTransformer in, so nothing here imports streamlit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from core.cache import BoundedCache
from core.conversation import Message
from core.explain.forward import hidden_states
from core.models import LoadedModel
from core.runner import runner_for
from core.tokens import encode, readable
from core.trace import Trace

# One forward pass per reply: (layers+1, T, d) fp32 is ~36 MB for T = 500 and ~143 MB for
# T = 2,000, so the bound is in bytes: a long chat keeps two passes, a short one four.
_STATES: BoundedCache[torch.Tensor] = BoundedCache(4, max_bytes=300 * 2**20)
# Sentence vectors per text: 384 floats each, so many fit.
_SENTENCES: BoundedCache[np.ndarray] = BoundedCache(2048)
_NORMS: BoundedCache[torch.Tensor] = BoundedCache(6)  # per model: row norms, mean row, shared cosine

ANALOGY_NOTE = (
    "Small models do this imperfectly: a 135M-parameter model's input embeddings are not trained "
    "for analogies, the answer often is one of the three words you typed (they are left out here), "
    "and many words are split into several tokens, whose vectors are averaged."
)


# -- which tokens ---------------------------------------------------------------------------
@dataclass(frozen=True)
class MessagePart:
    """A run of a trace's tokens [start, end) that is one message's text (or the reply)."""

    label: str
    role: str
    message_index: int
    start: int
    end: int


def message_parts(trace: Trace, messages: list[Message] | None = None) -> list[MessagePart]:
    """The messages a reply's trace holds, in order: each prompt message's content, then the reply."""
    parts: list[MessagePart] = []
    for span in trace.spans:
        if span.kind != "content" or len(span) == 0:
            continue
        preview = ""
        if messages is not None and 0 <= span.message_index < len(messages):
            preview = messages[span.message_index].content.strip().replace("\n", " ")[:40]
        label = f"{span.role} message {span.message_index}" + (f": {preview}" if preview else "")
        parts.append(MessagePart(label, span.role, span.message_index, span.start, span.end))
    reply_index = trace.spans[-1].message_index if trace.spans else 0
    start = len(trace.prompt_ids)
    preview = trace.text.strip().replace("\n", " ")[:40]
    parts.append(
        MessagePart(f"the reply: {preview}", "assistant", reply_index, start, start + len(trace.steps))
    )
    return parts


def token_labels(lm: LoadedModel, ids: list[int]) -> list[str]:
    """Readable token text, e.g. ["·The", "·capital", "↵"]."""
    return [readable(lm.tokenizer, i) for i in ids]


# -- vectors ---------------------------------------------------------------------------------
def _table(lm: LoadedModel) -> torch.Tensor:
    """The model's input embedding table (vocab, d), unscaled, from the model interface."""
    return runner_for(lm).embedding_matrix()


def _key(table: torch.Tensor) -> tuple:
    """A cache key for a table: its storage, which every view of the same weights shares."""
    return (table.data_ptr(), tuple(table.shape))


def input_embeddings(lm: LoadedModel, ids: list[int]) -> torch.Tensor:
    """The input embedding of each token: (T, d). Same id, same vector, wherever it stands."""
    weight = _table(lm)  # (vocab, d)
    with torch.inference_mode():
        return weight[torch.tensor(ids, dtype=torch.long)].float()


def trace_states(lm: LoadedModel, trace: Trace) -> torch.Tensor:
    """Every layer's hidden state over the whole trace: (layers+1, T, d); one pass, cached per trace."""
    return _STATES.get_or_compute(("states", trace.trace_id), lambda: hidden_states(lm, trace.full_ids))


def token_vectors(lm: LoadedModel, trace: Trace, part: MessagePart, layer: int) -> torch.Tensor:
    """The vectors of one message's tokens: (n, d). layer 0 = input embeddings, no forward pass."""
    n_layers = runner_for(lm).facts.n_layers
    if not 0 <= layer <= n_layers:
        raise ValueError(f"layer must be between 0 and {n_layers}, not {layer}")
    if layer == 0:
        return input_embeddings(lm, trace.full_ids[part.start : part.end])
    return trace_states(lm, trace)[layer, part.start : part.end]  # (n, d)


# -- similarity and projection ---------------------------------------------------------------
def cosine_matrix(
    vectors: torch.Tensor | np.ndarray,
    centre: bool = False,
    origin: torch.Tensor | np.ndarray | None = None,
) -> np.ndarray:
    """Cosine similarity of every pair of rows: (n, d) -> (n, n), symmetric, ones on the diagonal.

    centre subtracts the mean of these rows first; origin subtracts a given vector (d,)
    instead, e.g. vocabulary_mean. subtle: every input embedding shares one common direction
    and hidden states share a few very large ones, so raw cosines between them are all high;
    centring shows what differs. The mean of the rows shown depends on which rows are shown
    (and is pulled toward them); the vocabulary's mean is the same for every view.
    """
    x = torch.as_tensor(np.asarray(vectors) if not isinstance(vectors, torch.Tensor) else vectors).double()
    if origin is not None:
        x = x - torch.as_tensor(np.asarray(origin)).double().reshape(1, -1)  # (n, d)
    elif centre and x.shape[0] > 1:
        x = x - x.mean(dim=0, keepdim=True)  # (n, d)
    x = torch.nn.functional.normalize(x, dim=-1)  # (n, d), unit rows
    sim = (x @ x.T).clamp(-1.0, 1.0)  # (n, n)
    sim = (sim + sim.T) / 2  # exact symmetry despite rounding
    sim.fill_diagonal_(1.0)  # a vector is like itself, even one that centring made zero
    return sim.numpy()


def similarity_frame(
    labels: list[str], matrix: np.ndarray, positions: list[int] | None = None
) -> pd.DataFrame:
    """Long form for a heatmap: one row per (row, col) pair with the exact similarity.

    positions are the numbers shown with each label (default 0..n-1), which keep repeated
    tokens apart: "3 ·the" and "9 ·the".
    """
    n = len(labels)
    pos = positions if positions is not None else list(range(n))
    names = [f"{p} {t}" for p, t in zip(pos, labels, strict=True)]
    rows, cols = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return pd.DataFrame(
        {
            "row": np.asarray(pos)[rows.ravel()],
            "col": np.asarray(pos)[cols.ravel()],
            "row_label": np.asarray(names, dtype=object)[rows.ravel()],
            "col_label": np.asarray(names, dtype=object)[cols.ravel()],
            "similarity": matrix.ravel().astype(float),
        }
    )


@dataclass
class Projection:
    """A 2D PCA of n vectors: coordinates (n, 2) and each axis's share of the total variance."""

    coords: np.ndarray  # (n, 2)
    explained: tuple[float, float]  # share of variance on PC1, PC2 (0..1)


def pca_2d(vectors: torch.Tensor | np.ndarray) -> Projection:
    """PCA to two dimensions via the SVD of the centred data (torch.linalg.svd).

    explained[i] = s_i² / Σ s_j²: the share of the total variance along component i, the same
    figure as scikit-learn's explained_variance_ratio_.
    """
    x = torch.as_tensor(np.asarray(vectors) if not isinstance(vectors, torch.Tensor) else vectors).double()
    n = x.shape[0]
    if n == 0:
        return Projection(np.zeros((0, 2)), (0.0, 0.0))
    centred = x - x.mean(dim=0, keepdim=True)  # (n, d)
    u, s, _ = torch.linalg.svd(centred, full_matrices=False)  # u (n, k), s (k,)
    total = float((s**2).sum())
    coords = np.zeros((n, 2))
    k = min(2, s.shape[0])
    coords[:, :k] = (u[:, :k] * s[:k]).numpy()
    shares = [float(s[i] ** 2) / total if total > 0 and i < k else 0.0 for i in range(2)]
    return Projection(coords, (shares[0], shares[1]))


def token_map(labels: list[str], positions: list[int], projection: Projection) -> pd.DataFrame:
    """Scatter rows: position, token, x, y."""
    return pd.DataFrame(
        {
            "position": positions,
            "token": labels,
            "x": projection.coords[:, 0],
            "y": projection.coords[:, 1],
        }
    )


# -- the whole vocabulary --------------------------------------------------------------------
CENTRES = {  # how a token-similarity heatmap may centre its vectors: key -> what the reader sees
    "vocabulary": "the mean of the whole vocabulary",
    "shown": "the mean of the tokens shown",
    "none": "nothing (raw cosine)",
}


def vocabulary_mean(lm: LoadedModel) -> torch.Tensor:
    """The mean of every row of the input embedding matrix: (d,). One pass over 49,152 rows, cached."""
    weight = _table(lm)
    return _NORMS.get_or_compute(("mean", _key(weight)), lambda: weight.detach().float().mean(dim=0))


def shared_direction(lm: LoadedModel) -> float:
    """The average cosine between an input embedding and the vocabulary's mean vector.

    Near 0 if the vectors pointed every which way; for SmolLM2-135M it is about 0.66.
    """
    weight = _table(lm)
    mean = vocabulary_mean(lm)

    def compute() -> torch.Tensor:
        with torch.inference_mode():
            cos = (weight.detach().float() @ mean) / (_embedding_norms(lm) * mean.norm()).clamp_min(1e-12)
        return cos.mean().reshape(1)

    return float(_NORMS.get_or_compute(("shared", _key(weight)), compute)[0])


def raw_cosine_note(lm: LoadedModel) -> str:
    """One sentence on why raw cosines between input embeddings are all high."""
    return (
        "Raw cosines between input embeddings are all fairly high because every vector in the "
        f"vocabulary leans the same way: on average its cosine with the vocabulary's mean vector is "
        f"{shared_direction(lm):.2f}, so any two tokens look alike before that common direction is taken out."
    )


def _embedding_norms(lm: LoadedModel) -> torch.Tensor:
    """‖E[v]‖ for every vocabulary row: (vocab,). Cheaper than keeping a normalised copy (113 MB)."""
    weight = _table(lm)
    return _NORMS.get_or_compute(("norms", _key(weight)), lambda: weight.detach().float().norm(dim=-1))


def word_ids(lm: LoadedModel, text: str, leading_space: bool = True) -> list[int]:
    """The token ids of a typed word. With leading_space, "king" is read as " king" (mid-sentence)."""
    text = text.strip()
    if not text:
        return []
    piece = (" " + text) if leading_space else text
    return encode(lm.tokenizer, piece, split_special=True)


def word_vector(lm: LoadedModel, ids: list[int]) -> torch.Tensor:
    """One vector for a word: its token's input embedding, or the mean over its tokens: (d,)."""
    if not ids:
        raise ValueError("The word is empty; type a word.")
    return input_embeddings(lm, ids).mean(dim=0)


def nearest_to_vector(
    lm: LoadedModel, vector: torch.Tensor, k: int = 15, exclude: set[int] | None = None
) -> pd.DataFrame:
    """The k vocabulary tokens whose input embeddings are closest in cosine to `vector`.

    Columns: rank, token_id, token, similarity. Searches all vocab_size (49,152) rows.
    """
    weight = _table(lm)  # (vocab, d)
    with torch.inference_mode():
        q = vector.float()
        scores = (weight @ q) / (_embedding_norms(lm) * q.norm()).clamp_min(1e-12)  # (vocab,)
        if exclude:
            scores[torch.tensor(sorted(exclude), dtype=torch.long)] = -2.0
        top = torch.topk(scores, k)
    ids = top.indices.tolist()
    return pd.DataFrame(
        {
            "rank": range(1, len(ids) + 1),
            "token_id": ids,
            "token": token_labels(lm, ids),
            "similarity": top.values.double().numpy(),
        }
    )


def nearest_tokens(lm: LoadedModel, token_id: int, k: int = 15) -> pd.DataFrame:
    """Nearest neighbours of one token id; the token itself comes first (similarity 1)."""
    return nearest_to_vector(lm, input_embeddings(lm, [token_id])[0], k)


def analogy(lm: LoadedModel, a: str, b: str, c: str, k: int = 10) -> pd.DataFrame:
    """a − b + c over input embeddings ("king" − "man" + "woman"); a, b, c themselves left out."""
    ids = [word_ids(lm, w) for w in (a, b, c)]
    if not all(ids):
        raise ValueError("Type all three words.")
    va, vb, vc = (word_vector(lm, i) for i in ids)
    exclude = {t for group in ids for t in group}
    return nearest_to_vector(lm, va - vb + vc, k, exclude)


# -- message level (sentence embeddings) -----------------------------------------------------
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def split_sentences(text: str) -> list[str]:
    """Split text at ., ! or ? followed by space, and at line breaks. "Hi. Yes!" -> ["Hi.", "Yes!"]."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def sentence_vectors(embedder: Any, texts: list[str]) -> np.ndarray:
    """Unit-length all-MiniLM-L6-v2 vectors: (n, 384). Each text is encoded once, then cached."""

    def encode(batch: list[str]) -> np.ndarray:
        return np.asarray(embedder.encode(batch, normalize_embeddings=True), dtype=np.float32)  # (m, 384)

    missing = [t for t in dict.fromkeys(texts) if ("sentence", t) not in _SENTENCES]
    if missing:  # one batch for everything new: much faster than one call per text
        for text, vec in zip(missing, encode(missing), strict=True):
            _SENTENCES.get_or_compute(("sentence", text), lambda v=vec: v)
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    return np.stack([_SENTENCES.get_or_compute(("sentence", t), lambda t=t: encode([t])[0]) for t in texts])


def conversation_units(messages: list[Message], by: str = "message") -> pd.DataFrame:
    """The pieces of a conversation to compare: whole messages or sentences.

    Columns: unit (0..n-1), message_index, role, text, label ("1.2 user: Why does…"),
    short ("user: Why does…"). Empty messages are skipped.
    """
    if by not in ("message", "sentence"):
        raise ValueError("by must be 'message' or 'sentence'")
    rows = []
    for i, m in enumerate(messages):
        pieces = [m.content.strip()] if by == "message" else split_sentences(m.content)
        for j, piece in enumerate(p for p in pieces if p):
            short = piece.replace("\n", " ")
            short = short[:40] + ("…" if len(short) > 40 else "")
            tag = f"{i}" if by == "message" else f"{i}.{j + 1}"
            label = f"{m.role}: {short}"
            rows.append(
                {"message_index": i, "role": m.role, "text": piece, "label": f"{tag} {label}", "short": label}
            )
    frame = pd.DataFrame(rows, columns=["message_index", "role", "text", "label", "short"])
    frame.insert(0, "unit", range(len(frame)))
    return frame


def message_map(units: pd.DataFrame, vectors: np.ndarray) -> tuple[pd.DataFrame, Projection]:
    """The units projected to 2D (PCA) with their role and label, for a scatter coloured by role."""
    projection = pca_2d(vectors)
    frame = units.assign(x=projection.coords[:, 0], y=projection.coords[:, 1])
    return frame, projection


def reply_about(
    units: pd.DataFrame, vectors: np.ndarray, reply_vector: np.ndarray, before: int
) -> pd.DataFrame:
    """Earlier units (message_index < before) ranked by cosine similarity to a reply's vector.

    Columns: rank, label, role, text, similarity (highest first).
    """
    mask = (units["message_index"] < before).to_numpy()
    earlier = units[mask].copy()
    if earlier.empty:
        return earlier.assign(rank=[], similarity=[])
    sims = cosine_matrix(np.vstack([reply_vector[None, :], vectors[mask]]))[0, 1:]  # (m,)
    earlier["similarity"] = sims
    earlier = earlier.sort_values("similarity", ascending=False, kind="stable").reset_index(drop=True)
    earlier.insert(0, "rank", range(1, len(earlier) + 1))
    return earlier


def text_similarity(embedder: Any, texts: list[str]) -> pd.DataFrame:
    """The similarity matrix of typed sentences, long form (see similarity_frame)."""
    texts = [t.strip() for t in texts if t.strip()]
    matrix = cosine_matrix(sentence_vectors(embedder, texts))
    short = [t[:40] + ("…" if len(t) > 40 else "") for t in texts]
    return similarity_frame(short, matrix, positions=list(range(1, len(texts) + 1)))
