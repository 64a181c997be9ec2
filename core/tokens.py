"""What a token *is*, as bytes, and how to show it to a person.

subtle: a byte-level BPE token can be half a UTF-8 character (an emoji is often 3-4 tokens),
so a token's text on its own may not be valid UTF-8. We therefore work in bytes and only
turn them into text for display, marking the pieces that are not whole characters.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

SPACE_MARK = "·"  # shown for a space, so leading spaces are visible
NEWLINE_MARK = "↵"
TAB_MARK = "⇥"
_ENCODE_LOCK = threading.Lock()


def encode(
    tokenizer: Any, text: str, split_special: bool | None, add_special_tokens: bool = False, **kwargs: Any
) -> list[int]:
    """The token ids of text, one encoding at a time in the whole process.

    split_special: True reads "<|im_end|>" typed in text as plain characters, False as the
    special token, None as the tokenizer's own default.
    subtle: transformers' fast tokenizer keeps split_special_tokens as a flag on its one Rust
    tokenizer, set at each call and read while encoding. Two threads (two Streamlit sessions,
    six replies started at once) encoding at the same moment can each read the other's flag,
    and a chat header "<|im_start|>" is then split into plain text: 15 of 1,200 prompts built
    by six threads at once came out wrong, and the reply made from one (CI, 2026-12-01).
    """
    with _ENCODE_LOCK:
        encoded = tokenizer(
            text, add_special_tokens=add_special_tokens, split_special_tokens=split_special, **kwargs
        )
    return list(encoded["input_ids"])


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode(): the printable stand-in char -> the raw byte."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def special_ids(tokenizer: Any) -> frozenset[int]:
    """Every id the tokenizer treats as special: the named ones and added tokens flagged special.

    subtle: SmolLM2 adds <repo_name>, <file_sep>, ... as special tokens that are not in
    all_special_ids, yet tokenizer.decode(skip_special_tokens=True) drops them too.
    """
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    flagged = {int(i) for i, t in added.items() if getattr(t, "special", False)}
    return frozenset(flagged | set(tokenizer.all_special_ids))


def is_special(tokenizer: Any, token_id: int) -> bool:
    return int(token_id) in special_ids(tokenizer)


def token_bytes(tokenizer: Any, token_id: int) -> bytes:
    """The exact bytes a token stands for. [198] -> b"\\n"; a special token -> its literal name."""
    piece = tokenizer.convert_ids_to_tokens(int(token_id))
    if piece is None:
        return b""
    if is_special(tokenizer, token_id):
        return piece.encode("utf-8")
    decoder = _byte_decoder()
    if all(ch in decoder for ch in piece):
        return bytes(decoder[ch] for ch in piece)
    # Not a byte-level vocabulary (e.g. WordPiece): fall back to the tokenizer's own decoding.
    return tokenizer.decode([int(token_id)]).encode("utf-8")


def split_utf8(data: bytes) -> list[tuple[str, bool]]:
    """Split bytes into displayable parts.

    Whole characters come back as text; each byte that is only part of a character comes
    back as "<0xF0>" with is_whole_chars False.
    b"hi\\xf0\\x9f" -> [("hi", True), ("<0xF0>", False), ("<0x9F>", False)].
    """
    parts: list[tuple[str, bool]] = []
    i = 0
    text_start = 0
    while i < len(data):
        need = _utf8_len(data[i])
        chunk = data[i : i + need]
        if need and len(chunk) == need and _valid(chunk):
            i += need
            continue
        if text_start < i:
            parts.append((data[text_start:i].decode("utf-8"), True))
        parts.append((f"<0x{data[i]:02X}>", False))
        i += 1
        text_start = i
    if text_start < len(data):
        parts.append((data[text_start:].decode("utf-8"), True))
    return parts


def _utf8_len(first: int) -> int:
    if first < 0x80:
        return 1
    if 0xC2 <= first <= 0xDF:
        return 2
    if 0xE0 <= first <= 0xEF:
        return 3
    if 0xF0 <= first <= 0xF4:
        return 4
    return 0


def _valid(chunk: bytes) -> bool:
    try:
        chunk.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def make_visible(text: str) -> str:
    """Spaces, tabs and newlines as visible marks; other control chars as <0x..> escapes."""
    out = []
    for ch in text:
        if ch == " ":
            out.append(SPACE_MARK)
        elif ch == "\n":
            out.append(NEWLINE_MARK)
        elif ch == "\t":
            out.append(TAB_MARK)
        elif ch == "\r":
            out.append("␍")
        elif (ord(ch) < 0x20 or ord(ch) == 0x7F) or ch in "\u200b\u200c\u200d\u2060\ufeff":
            out.append(f"<U+{ord(ch):04X}>")
        else:
            out.append(ch)
    return "".join(out)


def readable(tokenizer: Any, token_id: int) -> str:
    """A token as a person should see it: never empty, never garbled.

    " Paris" -> "·Paris"; "\\n\\n" -> "↵↵"; the first third of an emoji -> "<0xF0><0x9F>".
    The result is plain text; escape it before it becomes HTML (core.html does).
    """
    data = token_bytes(tokenizer, token_id)
    if is_special(tokenizer, token_id):
        return data.decode("utf-8")
    parts = split_utf8(data)
    shown = "".join(make_visible(text) if whole else text for text, whole in parts)
    return shown or "<empty>"


_SUBSCRIPT = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")


def step_label(tokenizer: Any, token_id: int, step: int) -> str:
    """A reply token tagged with its step number, "·flew₇" for step index 6: unique even when a
    token repeats. Numbered from 1, as every page shows a step to the reader.

    Streamlit's option widgets identify a choice by its label (the last of equal labels wins),
    so a list of plain token labels would jump to the wrong "·the" when one is clicked.
    """
    return f"{readable(tokenizer, token_id)}{str(step + 1).translate(_SUBSCRIPT)}"


class IncrementalDecoder:
    """Turn a stream of token ids into a stream of text, never emitting half a character.

    decode_all() is the reference: "".join(pieces) == tokenizer.decode(ids) once flushed.
    """

    def __init__(self, tokenizer: Any, skip_special: bool = True) -> None:
        self._tok = tokenizer
        self._skip = skip_special
        self._buffer = b""
        self._special = special_ids(tokenizer)

    def push(self, token_id: int) -> str:
        if self._skip and token_id in self._special:
            return ""
        self._buffer += token_bytes(self._tok, token_id)
        # Emit the longest prefix that is whole characters; keep a trailing partial char.
        cut = len(self._buffer)
        for back in range(1, min(4, len(self._buffer)) + 1):
            b = self._buffer[-back]
            if b & 0xC0 == 0x80:  # continuation byte: keep looking for the lead
                continue
            if b >= 0xC0 and _utf8_len(b) > back:
                cut = len(self._buffer) - back
            break
        text = self._buffer[:cut].decode("utf-8", errors="replace")
        self._buffer = self._buffer[cut:]
        return text

    def flush(self) -> str:
        text = self._buffer.decode("utf-8", errors="replace")
        self._buffer = b""
        return text


def tokenizer_kind(tokenizer: Any) -> str:
    """The tokenizer's algorithm in words, read from the tokenizer itself, never assumed:
    "byte-level BPE" (SmolLM2, GPT-2, Qwen), "BPE with byte fallback" (Llama 2, Gemma),
    "SentencePiece Unigram", "WordPiece", ...; "a tokenizer" when it does not say.
    """
    import json

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return "a tokenizer"
    spec = json.loads(backend.to_str())
    model = (spec.get("model") or {}).get("type") or "a tokenizer"

    def types(part: dict | None) -> set[str]:
        if not part:
            return set()
        inner = part.get("pretokenizers") or part.get("decoders") or []
        return {part.get("type", "")} | {t for p in inner for t in types(p)}

    parts = types(spec.get("pre_tokenizer")) | types(spec.get("decoder"))
    if model == "BPE" and "ByteLevel" in parts:
        return "byte-level BPE"
    if model == "BPE" and ((spec.get("model") or {}).get("byte_fallback") or "ByteFallback" in parts):
        return "BPE with byte fallback"
    if model == "Unigram":
        return "SentencePiece Unigram"
    return model


KIND_NOTES = {
    "byte-level BPE": "spaces belong to the next token (·) and any text can be spelled in bytes",
    "BPE with byte fallback": "a space is joined to the next word (·), and a character missing from the "
    "vocabulary is spelled as its UTF-8 bytes",
    "SentencePiece Unigram": "a space is joined to the next word (·), and pieces are chosen to make the "
    "text most likely under a word-piece model",
}
