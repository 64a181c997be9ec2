"""Branch here: continue a reply from step k with another candidate, as a new alternative.

The branch is a new Trace with the same prompt and settings. Its first k tokens are the
original's, token k is the chosen candidate (both forced, but their steps still record the
model's real distribution), and from there the model writes on by itself. The original
message is never changed: the branch goes into the `alternatives` list of its home message.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from core.conversation import Message
from core.generation import Chunk, stream
from core.models import LoadedModel
from core.settings import SamplingSettings
from core.trace import Trace


class BranchError(ValueError):
    """The branch request does not make sense (message for people)."""


def start_branch(
    source: Message, step: int, token_id: int, home: Message | None = None
) -> tuple[Message, list[int]]:
    """Create the branch message (empty trace) and the forced ids; attach it to home's alternatives.

    source: the reply to branch from; home: the main-line message whose alternatives receive
    the branch (defaults to source). Returns (branch message, forced ids).
    """
    trace = source.trace
    if trace is None:
        raise BranchError("This reply has no trace, so it cannot be branched.")
    if not 0 <= step < len(trace.steps):
        raise BranchError(f"Step {step + 1} is outside this reply's {len(trace.steps)} steps.")
    if token_id == trace.steps[step].token_id:
        raise BranchError("That is the token the model already chose; pick a different one to branch.")
    forced = trace.output_ids[:step] + [int(token_id)]
    branch_trace: Trace = Trace(
        prompt_ids=list(trace.prompt_ids),
        spans=list(trace.spans),
        settings=trace.settings,
        model_name=trace.model_name,
        notices=list(trace.notices),
        branch_of=trace.trace_id,
        branch_step=step,
    )
    message = Message("assistant", "", trace=branch_trace)
    (home or source).alternatives.append(message)
    return message, forced


def stream_branch(
    lm: LoadedModel, message: Message, forced: list[int], stop: threading.Event | None = None
) -> Iterator[Chunk]:
    """Stream the branch's generation, keeping message.content in step with its trace."""
    try:
        for chunk in stream(lm, message.trace, stop=stop, forced=forced):
            message.content += chunk.text
            yield chunk
    finally:
        message.content = message.trace.text


def branch(
    lm: LoadedModel, source: Message, step: int, token_id: int, home: Message | None = None
) -> Message:
    """Generate the whole branch and return its message (already in home's alternatives)."""
    message, forced = start_branch(source, step, token_id, home)
    for _ in stream_branch(lm, message, forced):
        pass
    return message


def divergence(a: Trace, b: Trace) -> int | None:
    """The first step index where two replies' tokens differ (None if one is a prefix of the other)."""
    for i, (x, y) in enumerate(zip(a.output_ids, b.output_ids, strict=False)):
        if x != y:
            return i
    return None


def start_retake(source: Message, temperature: float, home: Message | None = None) -> Message:
    """A "what if" take: the same prompt and settings at another temperature, as a new alternative.

    It keeps the seed, so the two takes differ only by the temperature. Returns the message
    (empty trace), already in home's alternatives; generate it with stream_branch(..., forced=[]).
    """
    trace = source.trace
    if trace is None:
        raise BranchError("This reply has no trace, so it cannot be written again.")
    settings = SamplingSettings(**{**trace.settings.to_dict(), "temperature": float(temperature)}).validated()
    if settings == trace.settings:
        raise BranchError("That is the temperature this reply was written at; pick another to compare.")
    retake_trace = Trace(
        prompt_ids=list(trace.prompt_ids),
        spans=list(trace.spans),
        settings=settings,
        model_name=trace.model_name,
        notices=[
            *trace.notices,
            f"What if: the same prompt at temperature {settings.temperature:g} "
            f"(the take it was compared with used {trace.settings.temperature:g}).",
        ],
    )
    message = Message("assistant", "", trace=retake_trace)
    (home or source).alternatives.append(message)
    return message


def takes_of(home: Message, reply: Message) -> list[Message]:
    """The other takes of the same turn that `reply` can be compared with: the main-line reply
    and its alternatives (earlier takes, branches, what-ifs), same prompt, `reply` left out."""
    trace = reply.trace
    if trace is None:
        return []
    return [
        m
        for m in [home, *home.alternatives]
        if m is not reply and m.trace is not None and m.trace.prompt_ids == trace.prompt_ids
    ]
