"""Messages, the chat template, which prompt token belongs to which message, and trimming.

The prompt is built from the model's own chat template, but message *text* is tokenized
separately with special-token parsing switched off. subtle: the template renders to a string
that is then tokenized, so a user who types "<|im_end|>" would otherwise end their own turn
and could forge an assistant turn. Here it is read as the plain characters it is.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from core.tokens import encode
from core.trace import Span, Trace

ROLES = ("system", "user", "assistant")
_SENTINEL = "\ue000{}\ue001"  # private-use characters: never in real text, never merged by BPE


@dataclass
class Message:
    role: str
    content: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    trace: Trace | None = field(default=None, repr=False)  # assistant replies made here carry their trace
    alternatives: list[Message] = field(default_factory=list)  # earlier takes and branches
    notice: str | None = None  # shown with the message, e.g. "your message was cut"


@dataclass
class Prompt:
    """The token ids the model reads, and which message each id came from."""

    ids: list[int]
    spans: list[Span]
    dropped_messages: int = 0  # how many of the oldest messages were left out
    dropped_turns: int = 0
    notices: list[str] = field(default_factory=list)


class PromptTooLong(ValueError):
    """Even the system prompt and the newest message do not fit the budget."""


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _encode(tokenizer: Any, text: str, parse_special: bool) -> list[int]:
    if not text:
        return []
    return encode(tokenizer, text, split_special=not parse_special)


def encode_messages(
    tokenizer: Any, messages: list[Message], message_indices: list[int] | None = None
) -> Prompt:
    """Token ids and spans for messages + the assistant generation prompt. No trimming.

    message_indices gives each message's index in the full conversation (for spans).
    """
    indices = message_indices if message_indices is not None else list(range(len(messages)))
    plain = [{"role": m.role, "content": _SENTINEL.format(i)} for i, m in enumerate(messages)]
    ids: list[int] = []
    spans: list[Span] = []
    rendered_so_far = ""

    def add(text: str, role: str, index: int, kind: str, parse_special: bool) -> None:
        piece = _encode(tokenizer, text, parse_special)
        if piece:
            spans.append(Span(len(ids), len(ids) + len(piece), role, index, kind))
            ids.extend(piece)

    for i, message in enumerate(messages):
        rendered = _render(tokenizer, plain[: i + 1], generation_prompt=False)
        if not rendered.startswith(rendered_so_far):
            raise ValueError("This model's chat template is not prefix-stable; spans cannot be computed.")
        segment = rendered[len(rendered_so_far) :]
        marker = _SENTINEL.format(i)
        if segment.count(marker) != 1:
            raise ValueError("This model's chat template changes message text; spans cannot be computed.")
        header, footer = segment.split(marker)
        add(header, message.role, indices[i], "header", parse_special=True)
        add(message.content, message.role, indices[i], "content", parse_special=False)
        add(footer, message.role, indices[i], "footer", parse_special=True)
        rendered_so_far = rendered
    full = _render(tokenizer, plain, generation_prompt=True)
    reply_index = (indices[-1] + 1) if indices else 0
    add(full[len(rendered_so_far) :], "assistant", reply_index, "header", parse_special=True)
    return Prompt(ids=ids, spans=spans)


def reply_number(messages: list[Message], position: int) -> int:
    """ "Reply N" for the message at `position`: how many assistant messages lead up to it."""
    return sum(1 for m in messages[: position + 1] if m.role == "assistant")


def turns(messages: list[Message]) -> list[list[int]]:
    """Group message indices (after the system prompt) into turns: a user message and its replies."""
    groups: list[list[int]] = []
    for i, m in enumerate(messages):
        if m.role == "system":
            continue
        if m.role == "user" or not groups:
            groups.append([i])
        else:
            groups[-1].append(i)
    return groups


def build_prompt(tokenizer: Any, messages: list[Message], budget: int, reserve: int = 0) -> Prompt:
    """The prompt for the next reply, within budget - reserve tokens.

    The system prompt is always kept. Whole turns are left out, oldest first, and the
    result says so. If the newest user message alone is too long, its text is cut (its
    start is kept) and a notice says by how much.
    """
    limit = budget - reserve
    system = [i for i, m in enumerate(messages) if m.role == "system"][:1]
    groups = turns(messages)
    if not groups:
        raise ValueError("There is no user message to reply to.")
    for first in range(len(groups)):
        keep = system + [i for g in groups[first:] for i in g]
        prompt = encode_messages(tokenizer, [messages[i] for i in keep], keep)
        if len(prompt.ids) <= limit:
            prompt.dropped_turns = first
            prompt.dropped_messages = len(messages) - len(keep)
            if first:
                prompt.notices.append(
                    f"The conversation is longer than the {budget:,}-token budget; the oldest "
                    f"{first} turn{' was' if first == 1 else 's were'} left out of what the model read."
                )
            return prompt
    # Only the newest turn is left and it is still too long: cut its last message's text.
    keep = system + groups[-1][-1:]
    last = messages[keep[-1]]
    overhead = len(
        encode_messages(tokenizer, [messages[i] for i in system] + [Message(last.role, "")], keep).ids
    )
    room = limit - overhead
    if room < 1:
        raise PromptTooLong(
            f"The system prompt alone uses {overhead:,} tokens, more than the budget of {limit:,} "
            "tokens left for the prompt. Shorten the system prompt or raise the context budget."
        )
    content_ids = _encode(tokenizer, last.content, parse_special=False)
    cut_text = tokenizer.decode(content_ids[:room])
    cut = Message(last.role, cut_text, id=last.id)
    prompt = encode_messages(tokenizer, [messages[i] for i in system] + [cut], keep)
    while len(prompt.ids) > limit and cut.content:  # re-tokenizing a cut can shift by a token
        cut.content = cut.content[:-1]
        prompt = encode_messages(tokenizer, [messages[i] for i in system] + [cut], keep)
    prompt.dropped_turns = len(groups) - 1
    prompt.dropped_messages = len(messages) - len(keep)
    prompt.notices.append(
        f"The message is {len(content_ids):,} tokens long, more than fits the {budget:,}-token budget; "
        f"the model read only its first {room:,} tokens"
        + (f", and the {len(groups) - 1} earlier turns were left out." if len(groups) > 1 else ".")
    )
    return prompt
