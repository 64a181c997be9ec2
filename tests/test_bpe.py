"""core.explain.bpe: merge steps from the tokenizer's own merges list, checked against its output."""

from __future__ import annotations

import pytest

from core.explain import bpe
from core.explain.tokenization import encode_text, load_wordpiece_tokenizer
from tests.hostile_text import HOSTILE

WORDS = [
    "unbelievable",
    " unbelievable",
    "Hello",
    " world",
    "tokenization",
    "Pneumonoultramicroscopic",
    "東京",
    "😀",
    "1234567",
    "   ",
]


@pytest.fixture(scope="module")
def tok(lm):
    return lm.tokenizer


def test_unbelievable_is_three_tokens(tok):
    result = bpe.bpe_merges(tok, "unbelievable")
    (word,) = result.words
    assert word.steps[0].pieces == list("unbelievable") and word.steps[0].pair is None
    assert word.pieces == ["un", "belie", "vable"]
    assert result.matches and result.ids == encode_text(tok, "unbelievable")
    # every step joins one learned pair, so each step has fewer pieces than the one before
    counts = [len(s.pieces) for s in word.steps]
    assert all(a > b for a, b in zip(counts, counts[1:], strict=False))
    ranks = bpe.merge_ranks(tok)
    assert all(ranks[s.pair] == s.rank for s in word.steps[1:])


@pytest.mark.parametrize("text", WORDS + list(HOSTILE.values()))
def test_merges_reproduce_the_tokenizer(tok, text):
    result = bpe.bpe_merges(tok, text)
    assert result.ids == result.real_ids == encode_text(tok, text)


def test_start_is_one_piece_per_byte(tok):
    (word,) = bpe.bpe_merges(tok, "😀").words
    assert len(word.steps[0].pieces) == len("😀".encode())


def test_merge_word_joins_the_lowest_rank_first():
    ranks = {("a", "b"): 1, ("b", "c"): 0, ("a", "bc"): 2}
    steps = bpe.merge_word("abc", ranks).steps
    assert [s.pieces for s in steps] == [["a", "b", "c"], ["a", "bc"], ["abc"]]
    assert [s.rank for s in steps] == [None, 0, 2]
    repeated = bpe.merge_word("aaa", {("a", "a"): 0}).steps
    assert repeated[-1].pieces == ["aa", "a"]  # left to right, no overlap


def test_steps_table_is_readable(tok):
    table = bpe.steps_table(tok, bpe.bpe_merges(tok, " unbelievable"))
    assert table["pieces"].iloc[0].startswith("· | u | n")  # the space byte is shown as ·
    assert table["pieces"].iloc[-1] == "·unbelie | vable"
    assert table["count"].iloc[-1] == 2


def test_wordpiece_has_no_merges_list():
    with pytest.raises(bpe.NotBytePairEncoding):
        bpe.merge_ranks(load_wordpiece_tokenizer())
