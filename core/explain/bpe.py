"""Byte-pair merges, step by step, with the tokenizer's own merges list.

Why is "unbelievable" 3 tokens? Byte-level BPE starts from the word's bytes (shown as
printable stand-ins: a space is "Ġ") and repeatedly joins the adjacent pair that was
learned earliest (lowest rank in the merges list), until no learned pair is left.
The final pieces are checked against the tokenizer's real output.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from core.explain.tokenization import encode_text
from core.tokens import readable

_RANKS: weakref.WeakKeyDictionary[Any, dict[tuple[str, str], int]] = weakref.WeakKeyDictionary()


class NotBytePairEncoding(ValueError):
    """The tokenizer is not a BPE tokenizer with a merges list."""


def merge_ranks(tokenizer: Any) -> dict[tuple[str, str], int]:
    """{(left, right): rank} from the fast tokenizer's backend JSON; rank 0 was learned first.

    [["Ġ", "t"], ["Ġ", "a"], ...] -> {("Ġ", "t"): 0, ("Ġ", "a"): 1, ...}
    """
    try:
        return _RANKS[tokenizer]
    except (KeyError, TypeError):
        pass
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise NotBytePairEncoding("This tokenizer has no fast backend, so its merges cannot be read.")
    model = json.loads(backend.to_str())["model"]
    if model.get("type") != "BPE":
        raise NotBytePairEncoding(f"This tokenizer is {model.get('type')}, not byte-pair encoding.")
    ranks: dict[tuple[str, str], int] = {}
    for rank, merge in enumerate(model["merges"]):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge  # older JSON: "a b"
        ranks.setdefault((left, right), rank)
    try:
        _RANKS[tokenizer] = ranks
    except TypeError:  # not weak-referenceable: just do not cache
        pass
    return ranks


@dataclass
class MergeStep:
    """The pieces after one merge. step 0 is the starting bytes (pair and rank are None)."""

    step: int
    pieces: list[str]  # byte-level spellings, e.g. ["Ġun", "believ", "able"]
    pair: tuple[str, str] | None
    rank: int | None


@dataclass
class WordMerges:
    """The merge history of one pre-token (the tokenizer first splits text into words)."""

    word: str  # the pre-token in byte-level spelling, e.g. "Ġunbelievable"
    steps: list[MergeStep] = field(default_factory=list)

    @property
    def pieces(self) -> list[str]:
        return self.steps[-1].pieces


@dataclass
class MergeResult:
    text: str
    words: list[WordMerges]
    ids: list[int]  # the ids the final pieces stand for
    real_ids: list[int]  # the tokenizer's own output for the same text

    @property
    def matches(self) -> bool:
        return self.ids == self.real_ids


def merge_word(word: str, ranks: dict[tuple[str, str], int]) -> WordMerges:
    """Apply merges to one pre-token: always the adjacent pair with the lowest rank.

    Every occurrence of that pair is joined in the same step, left to right, as in GPT-2.
    "Ġaaa" with ("a","a") learned -> ["Ġ","a","a","a"] -> ["Ġ","aa","a"] -> ...
    """
    pieces = list(word)
    result = WordMerges(word, [MergeStep(0, pieces[:], None, None)])
    while len(pieces) > 1:
        ranked = [(ranks[p], p) for p in zip(pieces, pieces[1:], strict=False) if p in ranks]
        if not ranked:
            break
        rank, pair = min(ranked)
        merged: list[str] = []
        i = 0
        while i < len(pieces):
            if i + 1 < len(pieces) and (pieces[i], pieces[i + 1]) == pair:
                merged.append(pieces[i] + pieces[i + 1])
                i += 2
            else:
                merged.append(pieces[i])
                i += 1
        pieces = merged
        result.steps.append(MergeStep(len(result.steps), pieces[:], pair, rank))
    return result


def bpe_merges(tokenizer: Any, text: str) -> MergeResult:
    """Merge history for each pre-token of text, and whether it reproduces the real ids."""
    ranks = merge_ranks(tokenizer)
    pre = tokenizer.backend_tokenizer.pre_tokenizer
    words = [w for w, _ in pre.pre_tokenize_str(text)] if pre is not None else [text]
    merged = [merge_word(w, ranks) for w in words]
    vocab = tokenizer.get_vocab()
    ids = [vocab.get(p, -1) for w in merged for p in w.pieces]
    return MergeResult(text, merged, ids, encode_text(tokenizer, text))


def steps_table(tokenizer: Any, result: MergeResult) -> pd.DataFrame:
    """One row per merge: word, step, the pair joined (readably), its rank, pieces after it."""
    vocab = tokenizer.get_vocab()

    def show(piece: str) -> str:
        token_id = vocab.get(piece)
        return readable(tokenizer, token_id) if token_id is not None else piece

    rows = []
    for w, word in enumerate(result.words):
        for step in word.steps:
            rows.append(
                {
                    "word": w + 1,
                    "step": step.step,
                    "merged": "start: one piece per byte"
                    if step.pair is None
                    else f"{show(step.pair[0])} + {show(step.pair[1])}",
                    "rank": step.rank,
                    "pieces": " | ".join(show(p) for p in step.pieces),
                    "count": len(step.pieces),
                }
            )
    return pd.DataFrame(rows).astype({"rank": "Int64"})
