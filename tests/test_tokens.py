"""core.tokens with the real tokenizer: bytes, readable display and incremental decoding."""

from __future__ import annotations

import pytest

from core.explain.tokenization import encode_text
from core.tokens import (
    IncrementalDecoder,
    is_special,
    make_visible,
    readable,
    special_ids,
    split_utf8,
    step_label,
    token_bytes,
)
from tests.hostile_text import HOSTILE


@pytest.fixture(scope="module")
def tok(lm):
    return lm.tokenizer


def test_readable_marks_spaces_newlines_and_specials(tok):
    (paris,) = encode_text(tok, " Paris")
    assert readable(tok, paris) == "·Paris"
    (newlines,) = encode_text(tok, "\n\n")
    assert readable(tok, newlines) == "↵↵"
    assert readable(tok, tok.convert_tokens_to_ids("<|im_end|>")) == "<|im_end|>"
    assert make_visible("a\tb\u200bc") == "a⇥b<U+200B>c"


def test_readable_shows_utf8_fragments_as_bytes(tok):
    ids = encode_text(tok, "😀")  # F0 9F 98 80, split over several byte-level tokens
    assert len(ids) > 1
    shown = [readable(tok, i) for i in ids]
    assert shown[0].startswith("<0xF0>")
    assert "".join(shown) == "<0xF0><0x9F><0x98><0x80>"
    assert b"".join(token_bytes(tok, i) for i in ids) == "😀".encode()


def test_split_utf8_keeps_whole_characters_as_text():
    assert split_utf8(b"hi\xf0\x9f") == [("hi", True), ("<0xF0>", False), ("<0x9F>", False)]
    assert split_utf8("é東".encode()) == [("é東", True)]
    assert split_utf8(b"\x98\x80!") == [("<0x98>", False), ("<0x80>", False), ("!", True)]


def test_readable_is_never_empty_across_the_vocabulary(tok):
    for token_id in range(0, len(tok), 5):
        assert readable(tok, token_id), token_id


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_bytes_round_trip_on_hostile_text(tok, name):
    text = HOSTILE[name]
    ids = encode_text(tok, text)
    assert b"".join(token_bytes(tok, i) for i in ids) == text.encode("utf-8")
    assert not any(is_special(tok, i) for i in ids)  # typed special tokens are plain text


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_incremental_decoder_never_emits_half_a_character(tok, name):
    text = HOSTILE[name]
    decoder = IncrementalDecoder(tok)
    pieces = [decoder.push(i) for i in encode_text(tok, text)] + [decoder.flush()]
    assert "".join(pieces) == text == tok.decode(encode_text(tok, text))
    assert not any("\ufffd" in p for p in pieces)


def test_incremental_decoder_skips_every_special_token_like_decode(tok):
    ids = [tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<repo_name>", "<|im_end|>")]
    ids[1:1] = encode_text(tok, "hi")
    decoder = IncrementalDecoder(tok)
    text = "".join(decoder.push(i) for i in ids) + decoder.flush()
    assert text == tok.decode(ids, skip_special_tokens=True) == "hi"


def test_special_ids_include_added_special_tokens(tok):
    repo = tok.convert_tokens_to_ids("<repo_name>")
    assert repo not in tok.all_special_ids  # the reason special_ids exists
    assert repo in special_ids(tok) and is_special(tok, repo)
    assert not is_special(tok, encode_text(tok, "Hello")[0])


def test_step_labels_are_unique_when_a_token_repeats(tok):
    ids = tok(" the cat and the dog and the end", add_special_tokens=False)["input_ids"]
    labels = [step_label(tok, t, i) for i, t in enumerate(ids)]
    assert len({readable(tok, t) for t in ids}) < len(ids)  # " the" and " and" repeat
    assert len(set(labels)) == len(labels)
    assert labels[0] == "·the₁" and labels[3] == "·the₄"  # numbered from 1, as the pages show steps
    assert step_label(tok, ids[1], 1233).endswith("₁₂₃₄")


def test_tokenizer_kind_is_read_from_the_tokenizer(tok):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from core.explain.tokenization import load_wordpiece_tokenizer
    from core.tokens import tokenizer_kind

    assert tokenizer_kind(tok) == "byte-level BPE"  # SmolLM2
    assert tokenizer_kind(load_wordpiece_tokenizer()) == "WordPiece"  # all-MiniLM-L6-v2

    vocab = {"<unk>": 0, "▁a": 1, "b": 2}
    fallback = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    fallback.pre_tokenizer = pre_tokenizers.Metaspace()
    fallback.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace()])
    assert tokenizer_kind(PreTrainedTokenizerFast(tokenizer_object=fallback)) == "BPE with byte fallback"
    unigram = Tokenizer(models.Unigram([("<unk>", 0.0), ("▁a", -1.0), ("b", -2.0)], unk_id=0))
    assert tokenizer_kind(PreTrainedTokenizerFast(tokenizer_object=unigram)) == "SentencePiece Unigram"
