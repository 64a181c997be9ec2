"""Attribution speed, against a plain forward pass over the same context in the same run.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_attribution.py [--tokens 1000]

Issue 17's targets, for one step of a reply at the end of a chat of about 1,000 tokens:
| case | target |
|---|---|
| gradient x input | <= 1 s |
| integrated gradients, 32 steps | <= 8 s |
A forward pass (no gradient) over the same tokens is the machine's speed now. Exits 1 on a miss.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.conversation import Message, build_prompt  # noqa: E402
from core.explain import attribution as attr
from core.explain.commitment import commitment  # noqa: E402
from core.explain.forward import context_ids  # noqa: E402
from core.generation import generate, new_trace  # noqa: E402
from core.models import load_chat_model  # noqa: E402
from core.settings import DEFAULT_SYSTEM_PROMPT, SamplingSettings  # noqa: E402

QUESTIONS = [
    "What is the capital of France?",
    "What is the capital of Japan?",
    "Name a fruit that is yellow.",
    "What colour is the sky?",
    "How many legs does a spider have?",
    "What is the largest ocean?",
    "Who wrote Romeo and Juliet?",
    "What do bees make?",
    "What is frozen water called?",
    "Which planet is closest to the sun?",
]
TEXT = "The river valley was farmed for centuries, and its towns traded wool and grain upstream. "


def chat_of(lm, tokens: int):
    unit = lm.tokenizer(TEXT)["input_ids"]
    body = lm.tokenizer.decode((unit * (tokens // len(unit) + 1))[: tokens - 60])
    history = [Message("system", DEFAULT_SYSTEM_PROMPT), Message("user", body + "\nWhat was traded?")]
    prompt = build_prompt(lm.tokenizer, history, lm.context_length, reserve=8)
    return generate(
        lm, new_trace(lm, prompt.ids, prompt.spans, SamplingSettings(temperature=0, max_new_tokens=8))
    )


def long_reply(lm, tokens: int):
    """A greedy story reply of up to `tokens` tokens (it may end sooner at the end of its turn)."""
    history = [
        Message("system", DEFAULT_SYSTEM_PROMPT),
        Message("user", "Write a long story about a lighthouse keeper."),
    ]
    prompt = build_prompt(lm.tokenizer, history, 2048, reserve=tokens)
    settings = SamplingSettings(temperature=0, max_new_tokens=tokens)
    return generate(lm, new_trace(lm, prompt.ids, prompt.spans, settings))


def timed(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-ig", action="store_true", help="leave out integrated gradients (95 s here)")
    args = parser.parse_args()
    lm = load_chat_model()
    trace = chat_of(lm, args.tokens)
    step = len(trace.steps) - 1
    ids = context_ids(trace, step)

    def forward(context: list[int]) -> None:
        with lm.lock, torch.inference_mode():
            lm.model(input_ids=torch.tensor([context]), use_cache=False, logits_to_keep=1)

    forward(ids)  # warm-up
    attr.gradient_x_input(lm, trace, step)
    base = timed(lambda: forward(ids), args.runs)
    rows = [
        (
            "gradient x input, one step",
            timed(lambda: attr.gradient_x_input(lm, trace, step), args.runs),
            base,
            1.0,
        )
    ]
    gaps: list[str] = []
    if not args.skip_ig:
        ig: list[attr.Attribution] = []
        rows.append(
            (
                "integrated gradients, 32 steps",
                timed(lambda: ig.append(attr.integrated_gradients(lm, trace, step, steps=32)), 1),
                base,
                8.0,
            )
        )
        gaps.append(f"{len(ids):,}-token chat: {attr.completeness_gap(ig[0]):.0%}")
    story = long_reply(lm, 200)
    story_base = timed(lambda: forward(story.full_ids), args.runs)
    strip = timed(lambda: commitment(lm, story), args.runs)
    rows.append(
        (
            f"commitment strip, {len(story.steps)}-token reply ({len(story.full_ids)} tokens in all)",
            strip,
            story_base,
            1.0,
        )
    )
    print(f"context: {len(ids):,} tokens; torch threads {torch.get_num_threads()}")
    print("| case | measured | baseline: one forward pass over the same tokens (same run) | goal | met |")
    print("|---|---|---|---|---|")
    for name, took, baseline, goal in rows:
        print(
            f"| {name} | {took:.2f} s = {took / baseline:.1f}x a forward | {baseline:.2f} s | <= {goal:g} s | {'yes' if took <= goal else 'NO'} |"
        )
    print()
    print("Deletion curve (faithfulness), gradient x input, 10 chat prompts, step 4 of each reply:")
    print("mean drop of the chosen token's probability when k tokens' input vectors are set to 0")
    curves = []
    for question in QUESTIONS:
        history = [Message("system", DEFAULT_SYSTEM_PROMPT), Message("user", question)]
        prompt = build_prompt(lm.tokenizer, history, 2048, reserve=8)
        reply = generate(
            lm, new_trace(lm, prompt.ids, prompt.spans, SamplingSettings(temperature=0, max_new_tokens=8))
        )
        s = min(3, len(reply.steps) - 1)
        curves.append(attr.deletion_curve(lm, reply, s, attr.gradient_x_input(lm, reply, s)))
        if not args.skip_ig:
            gap = attr.completeness_gap(attr.integrated_gradients(lm, reply, s, steps=32))
            gaps.append(f"{question!r}: {gap:.0%}")
    print("| k | top-k attributed | k random (mean of 5 draws) |")
    print("|---|---|---|")
    for k in (1, 3, 5):
        ours = statistics.mean(c[k][0] for c in curves)
        chance = statistics.mean(c[k][1] for c in curves)
        print(f"| {k} | {ours:.3f} | {chance:.3f} |")
    if gaps:
        print()
        print("Integrated gradients, 32 points: how far the scores miss the logit's change (goal <= 5%):")
        print("; ".join(gaps))
    return 0 if all(took <= goal for _, took, _, goal in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
