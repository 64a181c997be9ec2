"""Fair sharing: a long explanation pass must not freeze the other visitors' chats.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_fairness.py [--tokens 8000] [--rounds 3]

Issue 19. The app serves every session from one process and one model, as here: one thread
per session. One session runs the longest explanation pass the app allows, the Attention
page's first pass on an imported conversation of about 8,000 tokens (no session KV cache:
the whole context is read), while 3 other sessions each chat a 64-token reply,
asked at 15%, 40% and 65% of the pass's time alone (3 rounds). Measured, each against a baseline from the same run:

| case | goal | baseline |
|---|---|---|
| the chats' p95 time to first token | <= 2 s and <= 3x the baseline | the same chats, no long pass |
| the long pass's own time | <= 1.5x the baseline | the pass alone |

Exits 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import print_rows  # noqa: E402
from core.conversation import Message, build_prompt  # noqa: E402
from core.explain import attention as att  # noqa: E402
from core.generation import generate, new_trace, stream  # noqa: E402
from core.kvcache import SessionKV  # noqa: E402
from core.models import load_chat_model  # noqa: E402
from core.settings import DEFAULT_SYSTEM_PROMPT, SamplingSettings  # noqa: E402

QUESTIONS = ["Tell me about cats.", "What is a river?", "Describe the moon.", "Why do birds sing?"]
CHAT = SamplingSettings(temperature=0, max_new_tokens=64)
TEXT = (
    "The history of the river valley begins with small farms along the banks, where families "
    "grew wheat and barley and traded wool with the towns upstream. "
)


def long_trace(lm, tokens: int):
    """An 'imported' reply: a prompt of about `tokens` tokens and an 8-token reply."""
    unit = lm.tokenizer(TEXT)["input_ids"]
    body = (unit * (tokens // len(unit) + 1))[: tokens - 40]
    history = [Message("system", DEFAULT_SYSTEM_PROMPT), Message("user", lm.tokenizer.decode(body))]
    prompt = build_prompt(lm.tokenizer, history, lm.context_length, reserve=8)
    trace = new_trace(lm, prompt.ids, prompt.spans, SamplingSettings(temperature=0, max_new_tokens=8))
    return generate(lm, trace)


def long_pass(lm, trace, layer: int) -> float:
    att.clear_caches()
    start = time.perf_counter()
    att.overview(lm, trace, keep_layer=layer)
    att.reply_weights(lm, trace, layer)
    return time.perf_counter() - start


def one_reply(lm, k: int, at: float, t0: float, ttfts: list[float]) -> None:
    """One visitor sends one question at t0 + `at` seconds and waits for its 64-token reply."""
    history = [Message("system", DEFAULT_SYSTEM_PROMPT), Message("user", QUESTIONS[k % len(QUESTIONS)])]
    prompt = build_prompt(lm.tokenizer, history, 2048, reserve=CHAT.max_new_tokens)
    trace = new_trace(lm, prompt.ids, prompt.spans, CHAT)
    time.sleep(max(0.0, t0 + at - time.perf_counter()))
    sent = time.perf_counter()
    first = None
    for _ in stream(lm, trace, kv=SessionKV()):
        if first is None:
            first = time.perf_counter() - sent
    ttfts.append(first)


def chats(lm, offsets: list[float]) -> tuple[list[float], list[threading.Thread]]:
    """One session per offset, each sending one reply that many seconds from now."""
    ttfts: list[float] = []
    t0 = time.perf_counter()
    threads = [
        threading.Thread(target=one_reply, args=(lm, k, at, t0, ttfts), daemon=True)
        for k, at in enumerate(offsets)
    ]
    for t in threads:
        t.start()
    return ttfts, threads


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=8000)
    parser.add_argument("--rounds", type=int, default=3, help="long passes run with the chats (3 chats each)")
    args = parser.parse_args()

    lm = load_chat_model()
    print(f"building an imported reply of about {args.tokens:,} tokens ...", flush=True)
    trace = long_trace(lm, args.tokens)
    layer = lm.n_layers // 2
    n = len(trace.full_ids)

    # warm-up: the runner's self-check and the first calls' allocations stay out of the figures
    att.overview(lm, long_trace(lm, 300), keep_layer=layer)
    for t in chats(lm, [0.0])[1]:
        t.join()

    alone = long_pass(lm, trace, layer)
    print(f"long pass alone: {alone:.2f} s over {n:,} tokens", flush=True)
    # each round: 3 sessions ask at 15%, 40% and 65% of the pass's time alone
    offsets = [f * alone for f in (0.15, 0.40, 0.65)]

    base_ttfts: list[float] = []
    shared_ttfts: list[float] = []
    passes: list[float] = []
    for _ in range(args.rounds):
        got, threads = chats(lm, offsets)  # the baseline: the same chats, nothing else running
        for t in threads:
            t.join()
        base_ttfts += got
        got, threads = chats(lm, offsets)
        passes.append(long_pass(lm, trace, layer))
        for t in threads:
            t.join()
        shared_ttfts += got
        print(
            f"round: chats alone {max(base_ttfts[-3:]):.3f} s, during the pass {max(got):.3f} s; pass {passes[-1]:.2f} s",
            flush=True,
        )
    shared = statistics.median(passes)

    base, during = p95(base_ttfts), p95(shared_ttfts)
    rows = [
        (
            "chats' p95 time to first token",
            f"{during:.2f} s = {during / base:.1f}x",
            f"{base:.2f} s, no long pass",
            "<= 2 s and <= 3x",
            during <= 2.0 and during <= 3 * base,
        ),
        (
            "long pass's own time",
            f"{shared:.2f} s = {shared / alone:.2f}x",
            f"{alone:.2f} s alone",
            "<= 1.5x",
            shared <= 1.5 * alone,
        ),
    ]
    print()
    print(
        f"Long pass: attention overview + layer {layer + 1} reply rows over {n:,} tokens (no session KV). "
        f"Chats: 3 sessions a round, one 64-token greedy reply each, asked at 15/40/65% of the pass; "
        f"{len(shared_ttfts)} replies in {args.rounds} rounds. "
        f"Median TTFT {statistics.median(base_ttfts):.3f} s alone, {statistics.median(shared_ttfts):.3f} s with the pass."
    )
    return print_rows(rows)


if __name__ == "__main__":
    sys.exit(main())
