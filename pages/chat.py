"""The chat page: talk to the model; every reply keeps the trace of how it was made."""

from __future__ import annotations

import time
from contextlib import closing

import streamlit as st

from core.conversation import Message, PromptTooLong, build_prompt
from core.generation import new_trace, stream
from core.html import markdown_safe
from core.scheduler import scheduler_for, status_words
from core.settings import SamplingSettings
from core.store import CHUNK
from pages import common, explain_panel, model_picker, persist, transfer

EXAMPLES = [
    "What is the capital of Australia?",
    "List three primary colours.",
    "Write a Python function that reverses a string.",
    "Why is the sky blue? Answer in two sentences.",
]
MAX_SYSTEM_CHARS = 4_000  # about 1,000 tokens: half the default context budget
PENDING = "chat.pending"  # set when the last user message still needs a reply

lm = common.chat_model(full=False)
history = common.messages()
if not history or history[0].role != "system":
    history.insert(0, Message("system", common.system_prompt()))


# -- sidebar: the one place the sampling settings are edited ------------------------------
def sidebar() -> SamplingSettings:
    model_picker.show()  # which model writes the next reply
    sb = st.sidebar
    sb.header("Settings")
    # Starting values live in common.CHAT_WIDGETS, not in value=, so they survive other pages.
    for key, default in common.CHAT_WIDGETS.items():
        common.restore(key, default)
    temperature = sb.slider("Temperature (0 = greedy)", 0.0, 2.0, step=0.05, key="chat.temperature")
    top_k = sb.slider("Top-k (0 = off)", 0, 200, key="chat.top_k")
    top_p = sb.slider("Top-p (1 = off)", 0.05, 1.0, step=0.01, key="chat.top_p")
    max_new = sb.slider("Maximum new tokens", 8, 1024, step=8, key="chat.max_new_tokens")
    seed = sb.number_input("Seed", 0, 2**31 - 1, key="chat.seed")
    penalty = sb.slider(
        "Repetition penalty (1 = off)",
        1.0,
        2.0,
        step=0.05,
        key="chat.repetition_penalty",
        help="Above 1 lowers the score of every token already in the text (the prompt too, as "
        "transformers' generate does); it can keep a small model out of loops.",
    )
    if st.session_state.get(common.BUDGET, 0) > lm.context_length:
        st.session_state[common.BUDGET] = lm.context_length
    sb.number_input(
        "Context budget (tokens)",
        256,
        lm.context_length,
        step=128,
        key=common.BUDGET,
        help="How much of the conversation the model may read. The oldest turns are left out beyond it.",
    )  # read through common.context_budget()
    with sb.expander("System prompt"):
        history[0].content = st.text_area(
            "System prompt",
            key=common.SYSTEM_PROMPT,
            height=120,
            max_chars=MAX_SYSTEM_CHARS,
            help=f"Up to {MAX_SYSTEM_CHARS:,} characters; its tokens count in the context budget.",
        )
    for key in common.CHAT_WIDGETS:
        common.remember(key)
    return SamplingSettings(temperature, top_k, top_p, max_new, int(seed), penalty).validated()


def sidebar_end() -> None:
    """Drawn after the conversation, so the export button knows about a reply streamed in this run."""
    with st.sidebar:
        with st.expander("Save or load the conversation", key="chat.transfer_box"):
            transfer.show()
        common.model_badge(lm)


settings = sidebar()


def show_message(message: Message) -> None:
    """One message as the user sees it, with its notices and (for replies) explain controls."""
    with st.chat_message(message.role):
        st.markdown(markdown_safe(message.content) if message.content.strip() else "*(empty reply)*")
        for note in message.trace.notices if message.trace else []:
            st.caption(f"ℹ️ {note}")
        if message.notice:
            st.caption(f"ℹ️ {message.notice}")
        if message.trace is not None:
            footer(message)
            explain_controls(message)
        if message.alternatives:
            with st.expander(f"Other takes of this reply ({len(message.alternatives)})"):
                for k, take in enumerate(message.alternatives, 1):
                    how = "branch" if take.trace and take.trace.branch_of else "earlier take"
                    st.markdown(f"**Take {k}** ({how})")
                    st.markdown(markdown_safe(take.content) if take.content.strip() else "*(empty)*")
                    if take.trace is not None:
                        explain_controls(take)


def footer(message: Message) -> None:
    trace = message.trace
    bits = [f"{len(trace.steps)} tokens"]
    if trace.decode_tokens_per_s:
        bits.append(f"{trace.decode_tokens_per_s:.1f} tokens/s")
    if trace.ttft_s is not None:
        bits.append(f"first token after {trace.ttft_s:.2f} s")
    if trace.finish_reason == "stopped":  # by the Stop button, or cut off by a restart (its notice)
        bits.append("cut off" if persist.CUT_OFF in trace.notices else "stopped by you")
    elif trace.finish_reason == "length":
        bits.append("hit the token limit")
    if message.alternatives:
        bits.append(f"{len(message.alternatives)} other take(s) kept")
    st.caption(" · ".join(bits))


def explain_controls(message: Message) -> None:
    """The per-message Explain toggle; the panel itself lives in pages/explain_panel.py."""
    key = f"{common.TOGGLES}{message.id}"
    common.restore(key, False)
    on = st.toggle("Explain", key=key, help="Show how the model wrote this reply")
    common.remember(key)
    if on:
        explain_panel.show(message)


def generate_reply(previous: Message | None = None) -> None:
    """Stream a reply to the conversation as it stands. The partial reply survives a stop.

    previous: the take being regenerated; it is kept among the new reply's alternatives.
    On a public deployment a session writes one reply at a time, within its rate limits.
    """
    with common.one_at_a_time("generation", "A reply is already being written in this tab.") as free:
        if free:
            _write_reply(previous)


def _write_reply(previous: Message | None) -> None:
    run_settings = settings
    seed_offset = 1 + len(previous.alternatives) if previous else 0
    if seed_offset:
        run_settings = SamplingSettings(**{**settings.to_dict(), "seed": settings.seed + seed_offset})
    try:
        prompt = build_prompt(
            lm.tokenizer, history, common.context_budget(), reserve=run_settings.max_new_tokens
        )
    except PromptTooLong as exc:
        st.error(str(exc))
        return
    refused = common.admit_reply(len(prompt.ids), run_settings.max_new_tokens)
    if refused:
        st.warning(refused, icon="⏳")
        return
    trace = new_trace(lm, prompt.ids, prompt.spans, run_settings)
    trace.notices.extend(prompt.notices)
    reply = Message("assistant", "", trace=trace)
    if previous is not None:
        reply.alternatives = [previous, *previous.alternatives]
        previous.alternatives = []
    history.append(reply)  # before streaming: a stop or a reload keeps what was made
    persist.save_if_changed()  # the reply's row exists before its first token (and the URL names it)
    with st.chat_message("assistant"):
        for note in prompt.notices:
            st.caption(f"ℹ️ {note}")
        stop_slot = st.empty()
        stop_slot.button("⏹ Stop", key="chat.stop", help="Stop the reply here and keep what was written.")
        waiting = st.empty()
        from core.kvcache import SessionKV  # this session's KV cache: a follow-up reads only new tokens

        chunks = stream(
            lm,
            trace,
            on_wait=lambda words: waiting.info(words, icon="⏳"),
            kv=st.session_state.setdefault("chat.kv", SessionKV()),
        )
        shared = scheduler_for(lm)

        def pieces():
            for chunk in chunks:
                if len(trace.steps) == 1 or len(trace.steps) % CHUNK == 0:
                    batch = shared.status()
                    if batch.active > 1:  # the line under the reply: it is written alongside others
                        waiting.caption(f"✍️ {status_words(batch)}", help=common.BATCH_HELP)
                    else:
                        waiting.empty()
                reply.content += chunk.text
                if len(trace.steps) % CHUNK == 0:  # a restart or a closed tab loses at most this much
                    persist.save_streaming(reply)
                yield chunk.text

        with closing(chunks):  # always release the model, even when the run is interrupted
            try:
                shown = st.empty()  # not st.write_stream: the text must pass markdown_safe as it grows
                for _ in pieces():
                    shown.markdown(markdown_safe(reply.content))
            finally:
                reply.content = trace.text
                common.charge_reply(len(prompt.ids), len(trace.steps))
        stop_slot.empty()
        waiting.empty()
        footer(reply)
        explain_controls(reply)


def settle_interrupted(message: Message, timeout: float = 3.0) -> None:
    """Wait for a reply whose run was just interrupted (Stop, or any click) to finish closing.

    subtle: with fast reruns Streamlit starts the new run on a new thread while the old one is
    still unwinding, so the old decode loop may not have recorded its ending yet.
    """
    deadline = time.monotonic() + timeout
    while message.trace.finish_reason == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    message.content = message.trace.text


# -- the conversation ------------------------------------------------------------------------
st.title("💬 Glassbox Chat")
readonly = persist.readonly()
if history[-1].trace is not None and history[-1].trace.finish_reason == "running":
    settle_interrupted(history[-1])
for message in history[1:]:
    show_message(message)

if len(history) == 1 and not readonly:
    st.markdown("Ask anything, then switch on **Explain** under a reply to see how the model wrote it.")
    cols = st.columns(len(EXAMPLES))
    for col, example in zip(cols, EXAMPLES, strict=True):
        if col.button(example, key=f"chat.example.{example}", width="stretch"):
            history.append(Message("user", example))
            st.session_state[PENDING] = True
            st.rerun()

if readonly:
    st.info(
        "This is a read-only shared conversation: every reply can be explained, but not changed. "
        "**Continue from here** in the sidebar copies it into your own conversations.",
        icon="👀",
    )
text = None if readonly else st.chat_input("Ask the model something…", key="chat.input")
if text is not None:
    if text.strip():
        history.append(Message("user", text))
        st.session_state[PENDING] = True
        show_message(history[-1])
    else:
        st.toast("Empty messages are ignored.")

if st.session_state.get(PENDING) and history[-1].role == "user":
    st.session_state[PENDING] = False
    unsaved = persist.conversation_id() is None
    generate_reply(st.session_state.pop("chat.previous_take", None))
    if unsaved and persist.conversation_id() is not None:
        st.rerun()  # this reply created the conversation: the sidebar, drawn before, now lists it

if history[-1].role == "user" and not readonly and not st.session_state.get(PENDING):
    # the reply was refused (a rate limit, a prompt too long) or cut before it began: ask again
    if st.button("▶ Write the reply now", key="chat.retry"):
        st.session_state[PENDING] = True
        st.rerun()

controls = st.columns(3)
can_regenerate = len(history) > 1 and history[-1].role == "assistant" and not readonly
if controls[0].button("🔄 Regenerate last reply", disabled=not can_regenerate, key="chat.regenerate"):
    old = history.pop()
    st.session_state["chat.previous_take"] = old
    st.session_state[PENDING] = True
    st.rerun()
if controls[1].button("🗑 Clear conversation", disabled=len(history) == 1 or readonly, key="chat.clear"):
    del history[1:]
    st.session_state.pop(PENDING, None)
    st.session_state.pop(common.SELECTED, None)
    st.rerun()
sidebar_end()
