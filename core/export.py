"""Export and import: one reply's explanation, or the whole conversation with every trace, as JSON.

Import treats the file as untrusted: it is size-limited, parsed as JSON (never pickle), every
trace is validated with Trace.from_dict(vocab_size=...), and a file made with another model
is refused. On any problem ImportRejected says what is wrong; nothing is half-loaded.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from core.conversation import ROLES, Message
from core.explain.candidates import steps_table, top_candidates, uncertain_moments
from core.explain.summary import hardest_step, summarize
from core.trace import Trace, TraceFormatError

CONVERSATION_FORMAT = "glassbox-conversation/1"
EXPLANATION_FORMAT = "glassbox-explanation/1"
MAX_BYTES = 20 * 1024 * 1024
MAX_MESSAGES = 1000
MAX_CONTENT_CHARS = 200_000
MAX_STEPS = 8192
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ImportRejected(ValueError):
    """The file cannot be loaded. The message says why, for people."""


# -- export ---------------------------------------------------------------------------------
def message_to_dict(message: Message) -> dict[str, Any]:
    return {
        "role": message.role,
        "content": message.content,
        "id": message.id,
        "notice": message.notice,
        "trace": message.trace.to_dict() if message.trace is not None else None,
        "alternatives": [message_to_dict(m) for m in message.alternatives],
    }


def conversation_json(messages: list[Message], model_name: str) -> str:
    """The whole conversation, alternatives and traces included."""
    data = {
        "format": CONVERSATION_FORMAT,
        "model_name": model_name,
        "exported_at": time.time(),
        "messages": [message_to_dict(m) for m in messages],
    }
    return json.dumps(data, ensure_ascii=False)


def explanation_json(tokenizer: Any, message: Message, candidates_per_step: int = 10) -> str:
    """One reply: its trace plus the computed views (summary, uncertain steps, step table, candidates)."""
    trace = message.trace
    if trace is None:
        raise ValueError("This message has no trace to explain.")
    table = steps_table(tokenizer, trace)
    data = {
        "format": EXPLANATION_FORMAT,
        "model_name": trace.model_name,
        "message": {"role": message.role, "content": message.content, "id": message.id},
        "trace": trace.to_dict(),
        "views": {
            "summary": summarize(tokenizer, trace),
            "hardest_step": hardest_step(trace),
            "uncertain_steps": uncertain_moments(trace),
            "steps": table.to_dict(orient="records"),
            "candidates": [
                top_candidates(tokenizer, s, candidates_per_step).to_dict(orient="records")
                for s in trace.steps
            ],
        },
    }
    return json.dumps(data, ensure_ascii=False)


# -- import ---------------------------------------------------------------------------------
def load_conversation(
    raw: bytes | str, model_name: str, vocab_size: int, context_length: int | None = None
) -> list[Message]:
    """Parse and validate an exported conversation. Raises ImportRejected; never returns half a file.

    context_length: the most tokens the model reads; a trace whose prompt and reply together
    are longer is refused before any of its steps is validated (an inflated file would
    otherwise make every explanation pass on it arbitrarily long).
    """
    size = len(raw.encode("utf-8") if isinstance(raw, str) else raw)
    if size > MAX_BYTES:
        raise ImportRejected(
            f"The file is {size / 1e6:.1f} MB; conversations up to {MAX_BYTES / 1e6:.0f} MB can be loaded."
        )
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ImportRejected(f"The file is not valid JSON ({exc}).") from exc
    if not isinstance(data, dict):
        raise ImportRejected("The file does not hold a Glassbox conversation (expected a JSON object).")
    if data.get("format") == EXPLANATION_FORMAT:
        raise ImportRejected(
            "This is a single reply's explanation; load a whole exported conversation instead."
        )
    if data.get("format") != CONVERSATION_FORMAT:
        raise ImportRejected(f"Not a Glassbox conversation (expected format '{CONVERSATION_FORMAT}').")
    if data.get("model_name") != model_name:
        raise ImportRejected(
            f"This conversation was made with '{_short(data.get('model_name'))}', but this app runs "
            f"'{model_name}'. Its traces would not match this model, so it was not loaded."
        )
    items = data.get("messages")
    if not isinstance(items, list) or not items:
        raise ImportRejected("The file has no messages.")
    seen_ids: set[str] = set()
    seen_traces: set[str] = set()
    count = [0]
    limits = _Limits(model_name, vocab_size, context_length)
    messages = [
        _message(item, f"message {i + 1}", limits, seen_ids, seen_traces, count, depth=0)
        for i, item in enumerate(items)
    ]
    return messages


@dataclass(frozen=True)
class _Limits:
    """What an imported trace must fit: this model, its vocabulary and its context window."""

    model_name: str
    vocab_size: int
    context_length: int | None


def _message(
    item: Any,
    where: str,
    limits: _Limits,
    seen_ids: set[str],
    seen_traces: set[str],
    count: list[int],
    depth: int,
) -> Message:
    count[0] += 1
    if count[0] > MAX_MESSAGES:
        raise ImportRejected(f"The file holds more than {MAX_MESSAGES} messages.")
    if not isinstance(item, dict):
        raise ImportRejected(f"{where.capitalize()} is not a JSON object.")
    role, content, mid = item.get("role"), item.get("content"), item.get("id")
    if role not in ROLES:
        raise ImportRejected(f"{where.capitalize()} has an unknown role ({_short(role)}).")
    if not isinstance(content, str) or len(content) > MAX_CONTENT_CHARS:
        raise ImportRejected(
            f"{where.capitalize()} has no text, or text over {MAX_CONTENT_CHARS:,} characters."
        )
    if not isinstance(mid, str) or not _ID.match(mid) or mid in seen_ids:
        raise ImportRejected(f"{where.capitalize()} has a missing, malformed or repeated id.")
    seen_ids.add(mid)
    notice = item.get("notice")
    if notice is not None and not isinstance(notice, str):
        raise ImportRejected(f"{where.capitalize()} has a malformed notice.")
    trace = None
    if item.get("trace") is not None:
        if role != "assistant":
            raise ImportRejected(f"{where.capitalize()} is not a reply but carries a trace.")
        raw_trace = item["trace"]
        if isinstance(raw_trace, dict):
            n_steps, n_prompt = _length(raw_trace.get("steps")), _length(raw_trace.get("prompt_ids"))
            if n_steps > MAX_STEPS:
                raise ImportRejected(f"{where.capitalize()}: the trace has more than {MAX_STEPS:,} steps.")
            if limits.context_length is not None and n_prompt + n_steps > limits.context_length:
                raise ImportRejected(
                    f"{where.capitalize()}: its prompt ({n_prompt:,} tokens) and reply ({n_steps:,} tokens) "
                    f"add up to {n_prompt + n_steps:,} tokens, more than the {limits.context_length:,} "
                    f"this model can read. It cannot have been made by this model, so it was not loaded."
                )
        try:
            trace = Trace.from_dict(raw_trace, vocab_size=limits.vocab_size)
        except TraceFormatError as exc:
            raise ImportRejected(f"{where.capitalize()}: {exc}") from exc
        if trace.model_name != limits.model_name:
            raise ImportRejected(
                f"{where.capitalize()} was made with another model ({_short(trace.model_name)})."
            )
        if trace.trace_id in seen_traces or not _ID.match(trace.trace_id):
            raise ImportRejected(f"{where.capitalize()} has a malformed or repeated trace id.")
        seen_traces.add(trace.trace_id)
    alternatives = item.get("alternatives") or []
    if not isinstance(alternatives, list) or (alternatives and (role != "assistant" or depth > 0)):
        raise ImportRejected(f"{where.capitalize()} has malformed alternatives.")
    alts = [
        _message(
            a,
            f"{where}, alternative {k + 1}",
            limits,
            seen_ids,
            seen_traces,
            count,
            depth + 1,
        )
        for k, a in enumerate(alternatives)
    ]
    return Message(role, content, id=mid, trace=trace, alternatives=alts, notice=notice)


def _length(value: Any) -> int:
    return len(value) if isinstance(value, list) else 0


def _short(value: Any) -> str:
    text = str(value)
    return text[:60] + ("…" if len(text) > 60 else "")
