"""Why the app batches with its own loop: transformers' continuous batching next to core.scheduler.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_transformers_batching.py

Issue 16 asks to try transformers' own continuous batching first (``model.generate_batch``,
paged attention) and to use it if it runs on CPU and gives each step's full distribution for
the trace. This script runs the same 8 chat prompts (greedy, 64 new tokens) three ways in
one process and prints a table: plain ``model.generate`` one prompt after another (the
baseline), ``generate_batch`` with sdpa, and the app's scheduler (core.generation.stream from
8 threads at once). It also reports what ``generate_batch`` hands back per request.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import GenerationConfig  # noqa: E402
from transformers.generation.configuration_utils import ContinuousBatchingConfig  # noqa: E402

from core.generation import new_trace, stream, warm_up  # noqa: E402
from core.kvcache import SessionKV  # noqa: E402
from core.models import load_chat_model  # noqa: E402
from core.settings import SamplingSettings  # noqa: E402

QUESTIONS = [
    "What is the capital of France? Answer briefly.",
    "Write a haiku about autumn leaves falling on a quiet river.",
    "Explain in two sentences why the sky is blue.",
    "Give me three tips for learning a new programming language quickly.",
    "What is 17 times 23? Show your reasoning step by step.",
    "Translate 'Good morning, how are you today?' into Spanish and French.",
    "Summarize the plot of Romeo and Juliet in a few sentences for a child.",
    "List some healthy breakfast ideas that can be prepared in under ten minutes.",
]
NEW = 64


def main() -> int:
    lm = load_chat_model()
    warm_up(lm)
    model, tok = lm.model, lm.tokenizer
    prompts = [
        list(
            tok.apply_chat_template(
                [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True
            )["input_ids"]
        )
        for q in QUESTIONS
    ]

    def plain() -> tuple[float, list[list[int]]]:
        outs, start = [], time.perf_counter()
        with torch.inference_mode():
            for p in prompts:
                ids = torch.tensor([p])
                out = model.generate(
                    ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=NEW
                )
                outs.append(out[0, len(p) :].tolist())
        return time.perf_counter() - start, outs

    def batched() -> tuple[float, list[list[int]], object]:
        config = ContinuousBatchingConfig(
            page_size=32,
            num_blocks=128,
            max_batch_tokens=1024,
            auto_switch_to_flash=False,
            return_logprobs=True,
        )
        gen = GenerationConfig(
            max_new_tokens=NEW, do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
        )
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate_batch(prompts, generation_config=gen, continuous_batching_config=config)
        took = time.perf_counter() - start
        results = sorted(out.values(), key=lambda r: int(str(r.request_id).split("_")[-1]))
        return took, [list(r.generated_tokens) for r in results], results[0]

    def ours() -> tuple[float, list[list[int]]]:
        traces = [new_trace(lm, p, [], SamplingSettings(temperature=0, max_new_tokens=NEW)) for p in prompts]
        threads = [
            threading.Thread(target=lambda t=t: [None for _ in stream(lm, t, kv=SessionKV())]) for t in traces
        ]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - start, [t.output_ids for t in traces]

    plain()
    ours()  # warm-up: first allocations, the batched weights, the thread trials
    ours()
    try:
        batched()
    except Exception as exc:  # noqa: BLE001 - report it: the point is whether it runs here
        print(f"generate_batch failed on this machine: {type(exc).__name__}: {exc}")
        return 1
    t_plain, reference = plain()
    t_batch, cb_out, sample = batched()
    t_ours, our_out = ours()
    tokens = sum(len(o) for o in reference)
    fields = sorted(k for k in vars(sample) if not k.startswith("_"))
    print(
        f"8 prompts, greedy, up to {NEW} new tokens ({tokens} in all); torch threads {torch.get_num_threads()}"
    )
    print(
        "| way | time | aggregate tok/s | vs plain generate | same tokens as generate | full distribution per step |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| plain `model.generate`, one after another | {t_plain:.2f} s | {tokens / t_plain:.1f} | 1.00x | - | with output_logits=True |"
    )
    print(
        f"| `model.generate_batch` (sdpa, paged cache) | {t_batch:.2f} s | {tokens / t_batch:.1f} | {t_plain / t_batch:.2f}x | "
        f"{'yes' if cb_out == reference else 'NO'} | no: a result holds {', '.join(fields)} |"
    )
    print(
        f"| the app's scheduler (8 threads, core.generation.stream) | {t_ours:.2f} s | {tokens / t_ours:.1f} | "
        f"{t_plain / t_ours:.2f}x | {'yes' if our_out == reference else 'NO'} | yes: every step's top 50, rank, entropy |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
