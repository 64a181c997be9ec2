"""A whole class at once: N sessions send a chat turn at the same moment (issue 16).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_classroom.py [--rounds 2] [--skip-memory]

Each simulated session is one thread with its own KV cache, as a Streamlit session is, and
sends a realistic chat turn (the app's system prompt, a question that asks for a longer
answer, sampled at temperature 0.7 with its own seed, up to 128 new tokens) through the
app's core, core.generation.stream, at the same moment as the others. Measured against
baselines from the same run:

| case | goal | baseline (same run) |
|---|---|---|
| 8 sessions: aggregate tokens/s | >= 3x | one session alone |
| 16 sessions: aggregate tokens/s | >= 4x | one session alone |
| 8 sessions: p95 time to first token | <= 2 s | the serialised loop (one reply at a time) |
| 8 sessions: slowest reply's total time | <= 0.5x serialised | the serialised loop |
| one session: decode tokens/s through the scheduler | >= 0.95x | the bare lean loop |
| peak RSS, 16 sessions with 1,000-token histories | <= 2.5 GB | - (a fresh process) |

"Serialised" is the same scheduler with a batch of one: replies wait in line and are written
one after another, as they were behind one lock. Exits 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.report import cpu_model, print_rows  # noqa: E402
from core.conversation import Message, build_prompt  # noqa: E402
from core.generation import decode_threads, generate, measure_decode_threads, new_trace, stream, warm_up  # noqa: E402
from core.kvcache import SessionKV  # noqa: E402
from core.memory import give_back_freed_memory  # noqa: E402
from core.models import LoadedModel, load_chat_model  # noqa: E402
from core.scheduler import Scheduler  # noqa: E402
from core.settings import DEFAULT_SYSTEM_PROMPT, SamplingSettings  # noqa: E402

QUESTIONS = [
    "Tell me about the history of the bicycle.",
    "Explain how a rainbow forms.",
    "Write a short story about a lost cat finding its way home.",
    "Describe a day in the life of a medieval baker.",
    "Why do leaves change colour in autumn?",
    "Explain what a computer program is to a ten-year-old.",
    "Tell me about the planets of the solar system.",
    "Write a poem about the sea at night.",
    "How do bees make honey?",
    "Describe the water cycle.",
    "What should I pack for a week of hiking?",
    "Explain how a train works.",
    "Tell me a story about a dragon who is afraid of the dark.",
    "What makes a good friend?",
    "Describe how bread is made, step by step.",
    "Why is exercise good for you?",
]
NEW_TOKENS = 128


def turn(lm: LoadedModel, k: int, history_tokens: int = 0):
    """Session k's chat turn; with history_tokens, after earlier turns that bring its prompt to about that length."""
    history = [Message("system", DEFAULT_SYSTEM_PROMPT)]
    question = Message("user", QUESTIONS[k % len(QUESTIONS)])
    j = 0
    while (
        history_tokens and len(build_prompt(lm.tokenizer, [*history, question], 10**6).ids) < history_tokens
    ):
        earlier = QUESTIONS[(k + j + 1) % len(QUESTIONS)]
        history += [Message("user", earlier), Message("assistant", f"Here is what I know. {earlier} " * 4)]
        j += 1
    prompt = build_prompt(lm.tokenizer, [*history, question], lm.context_length, reserve=NEW_TOKENS)
    settings = SamplingSettings(
        temperature=0.7, top_k=50, top_p=0.95, max_new_tokens=NEW_TOKENS, seed=100 + k
    )
    return new_trace(lm, prompt.ids, prompt.spans, settings)


def classroom(lm: LoadedModel, n: int, history_tokens: int = 0) -> dict:
    """n sessions send their turn at the same moment; returns their times and token counts."""
    traces = [turn(lm, k, history_tokens) for k in range(n)]
    kvs = [SessionKV() for _ in range(n)]
    ttft: list[float] = [0.0] * n
    total: list[float] = [0.0] * n
    go = threading.Barrier(n + 1)

    def session(k: int) -> None:
        go.wait()
        sent = time.perf_counter()
        for _ in stream(lm, traces[k], kv=kvs[k]):
            if not ttft[k]:
                ttft[k] = time.perf_counter() - sent
        total[k] = time.perf_counter() - sent

    threads = [threading.Thread(target=session, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    go.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    tokens = sum(len(t.steps) for t in traces)
    return {
        "wall": wall,
        "tokens": tokens,
        "tok_s": tokens / wall,
        "ttft": ttft,
        "total": total,
        "traces": traces,
    }


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def bare_decode(lm: LoadedModel, trace) -> float:
    """Decode tokens/s of the lean loop with no scheduler: kv.forward and sampling, one thread."""
    from core.sampling import sampling_probs
    from core.scheduler import _record

    kv = SessionKV()
    settings = trace.settings
    generator = torch.Generator().manual_seed(settings.seed)
    saved = torch.get_num_threads()
    with lm.lock, torch.inference_mode():
        kv.prepare(lm.lean, trace.prompt_ids, len(trace.prompt_ids) + NEW_TOKENS)
        logits = kv.forward(lm.lean, trace.prompt_ids)
        torch.set_num_threads(min(decode_threads(lm), saved))
        start = time.perf_counter()
        for _ in range(NEW_TOKENS - 1):
            probs = sampling_probs(logits, settings)
            chosen = torch.multinomial(probs, 1, generator=generator)[0]
            _record(logits[None], chosen[None], probs[None]).tolist()
            logits = kv.forward(lm.lean, [int(chosen)])
        took = time.perf_counter() - start
        torch.set_num_threads(saved)
    return (NEW_TOKENS - 1) / took


def prefill_stall(lm: LoadedModel, tokens: int) -> tuple[float, float, int]:
    """The longest gap between two tokens of a reply being written, while another session's
    prompt of about `tokens` tokens is read, and the same reply's longest gap alone."""
    story = " ".join(
        f"Sentence {i} of the report tells of the river, the farms and the towns."
        for i in range(tokens // 16)
    )
    long = new_trace(
        lm,
        build_prompt(
            lm.tokenizer, [Message("user", "Summarise: " + story)], lm.context_length, reserve=4
        ).ids,
        [],
        SamplingSettings(temperature=0, max_new_tokens=4),
    )

    def gaps(with_long: bool) -> float:
        writer = turn(lm, 1)
        times: list[float] = []
        started = threading.Event()

        def write() -> None:
            for _ in stream(lm, writer, kv=SessionKV()):
                times.append(time.perf_counter())
                started.set()

        thread = threading.Thread(target=write)
        thread.start()
        started.wait()
        time.sleep(0.5)
        if with_long:
            generate(lm, new_trace(lm, long.prompt_ids, [], long.settings), kv=SessionKV())
        thread.join()
        return max(b - a for a, b in zip(times[1:], times[2:], strict=False))

    return gaps(True), gaps(False), len(long.prompt_ids)


def memory_case() -> dict:
    """In this (fresh) process: 16 sessions with 1,000-token histories chat at once; peak RSS."""
    lm = load_chat_model()
    warm_up(lm)
    lm.model  # noqa: B018 - the transformers model too, as the app holds it
    give_back_freed_memory()  # as the app does after each page run (core/memory.py)
    got = classroom(lm, 16, history_tokens=1000)
    prompt = statistics.median(len(t.prompt_ids) for t in got["traces"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KB
    return {"peak_gb": peak / 1e9, "prompt_tokens": prompt, "tokens": got["tokens"], "tok_s": got["tok_s"]}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_only:
        print(json.dumps(memory_case()))
        return 0

    lm = load_chat_model()
    warm_up(lm)
    measure_decode_threads(lm)  # what warm-up starts in the background, done before timing anything
    shared = lm.scheduler = Scheduler(lm)
    serial = Scheduler(lm, max_batch=1)
    for n in (1, 2, 4, 8, 16):  # warm-up: first allocations, the oneDNN weights, the batched thread counts
        classroom(lm, n)

    alone, eight, sixteen, serialised, bare, single = [], [], [], [], [], []
    for r in range(args.rounds):
        got = classroom(lm, 1)
        alone.append(got["tok_s"])
        single.append(got["traces"][0].decode_tokens_per_s)
        bare.append(bare_decode(lm, turn(lm, 0)))
        eight.append(classroom(lm, 8))
        sixteen.append(classroom(lm, 16))
        lm.scheduler = serial
        serialised.append(classroom(lm, 8))
        lm.scheduler = shared
        print(
            f"round {r + 1}: alone {alone[-1]:.1f} tok/s; 8 at once {eight[-1]['tok_s']:.1f}; "
            f"16 at once {sixteen[-1]['tok_s']:.1f}; 8 serialised {serialised[-1]['tok_s']:.1f} tok/s",
            flush=True,
        )

    prefill_stall(lm, 4000)  # warm-up: the first long prompt also grows the rotary tables and allocates
    runs = [prefill_stall(lm, 4000) for _ in range(2)]
    stall, calm, long_tokens = max(r[0] for r in runs), max(r[1] for r in runs), runs[0][2]
    med = statistics.median
    one = med(alone)
    agg8, agg16 = med(g["tok_s"] for g in eight), med(g["tok_s"] for g in sixteen)
    ttft8 = med(p95(g["ttft"]) for g in eight)
    ttft_serial = med(p95(g["ttft"]) for g in serialised)
    slow8, slow_serial = med(max(g["total"]) for g in eight), med(max(g["total"]) for g in serialised)
    through, direct = med(single), med(bare)
    rows = [
        (
            "8 sessions: aggregate tokens/s",
            f"{agg8:.1f} = {agg8 / one:.2f}x",
            f"{one:.1f}, one session alone",
            ">= 3x",
            agg8 >= 3 * one,
        ),
        (
            "16 sessions: aggregate tokens/s",
            f"{agg16:.1f} = {agg16 / one:.2f}x",
            f"{one:.1f}, one session alone",
            ">= 4x",
            agg16 >= 4 * one,
        ),
        (
            "8 sessions: p95 time to first token",
            f"{ttft8:.2f} s",
            f"{ttft_serial:.2f} s serialised",
            "<= 2 s",
            ttft8 <= 2.0,
        ),
        (
            "8 sessions: slowest reply's total time",
            f"{slow8:.2f} s = {slow8 / slow_serial:.2f}x",
            f"{slow_serial:.2f} s serialised",
            "<= 0.5x",
            slow8 <= 0.5 * slow_serial,
        ),
        (
            "one session: decode tokens/s through the scheduler",
            f"{through:.1f} = {through / direct:.2f}x",
            f"{direct:.1f}, the bare lean loop",
            ">= 0.95x",
            through >= 0.95 * direct,
        ),
    ]
    rows.append(
        (
            f"longest gap between a reply's tokens while a {long_tokens:,}-token prompt is read (worse of 2)",
            f"{stall:.2f} s",
            f"{calm:.2f} s, the same reply with nothing else",
            "<= about 0.3 s",
            stall <= 0.35,
        )
    )
    if not args.skip_memory:
        out = subprocess.run(
            [sys.executable, __file__, "--memory-only"],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )
        memory = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(
            (
                f"peak RSS, 16 sessions with {memory['prompt_tokens']:,}-token histories",
                f"{memory['peak_gb']:.2f} GB",
                f"- ({memory['tokens']:,} tokens at {memory['tok_s']:.0f} tok/s)",
                "<= 2.5 GB",
                memory["peak_gb"] <= 2.5,
            )
        )
    tokens8 = med(g["tokens"] for g in eight)
    print()
    print(
        f"CPU: {cpu_model()}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}; single steps on {lm.decode_threads} thread(s), batched steps on "
        f"(batch size class: threads) {shared.batch_threads}, measured ms per step {shared.thread_timings}. Replies: up to "
        f"{NEW_TOKENS} tokens at temperature 0.7 (8 sessions wrote {tokens8:.0f} tokens a round); "
        f"{args.rounds} rounds, medians. Largest batch: {shared.largest_batch}."
    )
    return print_rows(rows)


if __name__ == "__main__":
    sys.exit(main())
