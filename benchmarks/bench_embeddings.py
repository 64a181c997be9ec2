"""How long the embeddings page takes to open for a 300-token reply, after the first model load.

Baseline, measured in the same run: one bare forward pass (hidden_states) over the same tokens.
The page is run in-process with streamlit's AppTest, with the reply already in the conversation.

The reply's 300 tokens are a real tokenized passage wrapped in a Trace (the page reads only the
token ids, so the decode loop's probabilities do not matter here and generating 300 tokens on a
shared CPU would only slow the benchmark down).

Run: PYTHONPATH=. .venv/bin/python benchmarks/bench_embeddings.py
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import threading
import time
import uuid
from pathlib import Path

from streamlit.testing.v1 import AppTest

from core.conversation import Message, build_prompt
from core.explain import embeddings as emb
from core.explain.forward import hidden_states
from core.models import load_chat_model
from core.settings import SamplingSettings
from core.trace import Step, Trace

APP = str(Path(__file__).resolve().parent.parent / "app.py")
PAGE = "pages/embeddings.py"
REPLY_TOKENS = 300
ROUNDS = 3
PASSAGE = (
    "Paris is the capital and largest city of France. It sits on the river Seine, in the north of "
    "the country, and has been a centre of finance, diplomacy, commerce, fashion and science for "
    "centuries. The city is known for its museums and monuments: the Louvre holds the Mona Lisa, "
    "the Eiffel Tower was built for the 1889 World's Fair, and the cathedral of Notre-Dame stands "
    "on an island in the middle of the river. "
)


def reply_trace(lm) -> tuple[list[Message], Trace]:
    messages = [
        Message("system", "You are a helpful assistant."),
        Message("user", "Tell me about Paris in detail."),
    ]
    prompt = build_prompt(lm.tokenizer, messages, budget=2048)
    ids = lm.tokenizer.encode(PASSAGE * 8, add_special_tokens=False)[:REPLY_TOKENS]
    steps = [Step(t, lm.tokenizer.decode([t]), 1.0, 1.0, 1, 0.0, [t], [0.0], [1.0], [1.0]) for t in ids]
    trace = Trace(prompt.ids, prompt.spans, SamplingSettings(), lm.name, steps, finish_reason="length")
    reply = Message("assistant", trace.text, trace=trace)
    return [*messages, reply], trace


def fresh(messages: list[Message]) -> list[Message]:
    """The same conversation with a new trace id, so the page's per-reply cache misses."""
    trace = dataclasses.replace(messages[-1].trace, trace_id=uuid.uuid4().hex[:12])
    return [*messages[:-1], dataclasses.replace(messages[-1], trace=trace)]


def open_page(messages: list[Message], layer: int | None = None, view: str | None = None) -> float:
    """Seconds for one run of the embeddings page (a full script run, as on opening it)."""
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state["chat.messages"] = messages
    if layer is not None:
        at.session_state["embeddings.layer"] = layer
    if view is not None:
        at.session_state["embeddings.view"] = view
    at.run()
    start = time.perf_counter()
    at.switch_page(PAGE).run()
    elapsed = time.perf_counter() - start
    if at.exception:
        raise RuntimeError(at.exception[0].message)
    if len(at.get("vega_lite_chart")) < 2:  # heatmap + map (or heatmap + map + ranking)
        raise RuntimeError("the page did not draw its charts")
    return elapsed


def cold_conversation(messages: list[Message]) -> float:
    """The Conversation view with the sentence cache emptied: every message is encoded again."""
    emb._SENTENCES.clear()
    return open_page(fresh(messages), view="Conversation")


def main() -> None:
    lm = load_chat_model()
    messages, trace = reply_trace(lm)
    total = len(trace.full_ids)
    open_page(fresh(messages))  # warm-up: first model load, imports, the embedder's cache_resource

    def bare() -> float:
        start = time.perf_counter()
        hidden_states(lm, trace.full_ids)
        return time.perf_counter() - start

    def bare_in_thread() -> float:
        # Streamlit runs the page in a script thread, so the baseline runs in one too.
        out: list[float] = []
        worker = threading.Thread(target=lambda: out.append(bare()))
        worker.start()
        worker.join()
        return out[0]

    same = fresh(messages)
    open_page(same, 12)  # fills the per-reply cache for the "already cached" row
    measures = {
        "baseline: bare forward pass, all layers, in a thread (as Streamlit)": bare_in_thread,
        "open page, input embeddings (the default), new reply": lambda: open_page(fresh(messages)),
        "open page at layer 12, new reply (includes the forward pass)": lambda: open_page(
            fresh(messages), 12
        ),
        "open page at layer 20, reply already cached": lambda: open_page(same, 20),
        "open the Conversation view, sentence cache empty": lambda: cold_conversation(messages),
    }
    # Interleaved rounds: on a shared machine the load drifts, so each round measures all rows.
    times: dict[str, list[float]] = {label: [] for label in measures}
    for _ in range(ROUNDS):
        for label, fn in measures.items():
            times[label].append(fn())
    spread = {label: (min(v), max(v)) for label, v in times.items()}
    rows = [(label, statistics.median(values)) for label, values in times.items()]
    print(f"{REPLY_TOKENS}-token reply, {total} tokens with the prompt, {lm.n_layers} layers, CPU")
    for label, seconds in rows:
        low, high = spread[label]
        print(f"{seconds:7.2f} s  (range {low:.2f}-{high:.2f})  {label}")
    page = rows[1][1]
    print(f"budget: opening the page < 2 s -> {'PASS' if page < 2 else 'FAIL'} ({page:.2f} s)")
    print(f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
