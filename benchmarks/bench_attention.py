"""What opening the attention page costs on a 2,000-token conversation: time and peak memory.

Each variant runs in its own subprocess (so peak RSS is its own), on the same trace:

- sdpa:     one plain forward pass, the way generation runs (how fast the machine is right now);
- baseline: one eager forward pass with output_attentions=True, keeping all 30 layers' weights;
- page:     what the page computes on opening without a session cache: the overview pass (the
            runner's rows pass: sdpa for the layers' output, the model's eager function on only
            the rows shown) plus the DataFrames of the model view, head view and turn view;
            then a revisit (cached) and a switch to another layer (a pass that stops early);
- page-kv:  the page opened after chatting: the session's KV cache holds the keys and values
            of every token but the reply's last one, as generation leaves it (filled with
            SessionKV.prepare + forward over the prompt and the reply, OUTSIDE the timed
            region); the page's session pass (core.runner.session_rows) reads it and computes
            only the reply's rows and the thumbnail rows. Its one-time self-check against the
            eager pass (core.runner.session_rows_exact) runs at load in the app, in the
            background (core.runner.prove_in_background): here it is timed on its own, before
            the page open, which the target counts. Then a revisit and a layer switch;
- page-kv-prompt: the same when only the prompt is cached (an older alternative reply, whose
            context the chat has since moved past): all the reply's tokens are read anew.

Wall time on a shared 2-core machine depends on the load, so the CPU time of each variant
(all threads) is printed too: it is the steadier figure.

The conversation is real chat-template text of many turns; the reply (what the 2,000 tokens
leave after the last whole turn, at most 48; 24 today) is a real tokenized passage wrapped in a
Trace (attention reads only token ids, and generating on a shared CPU would only slow the
benchmark down). The exit code is 0 only when the page opened after chatting meets both targets.

Run: PYTHONPATH=. .venv/bin/python benchmarks/bench_attention.py
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from core.conversation import Message, build_prompt
from core.explain import attention as att
from core.generation import THREADS_THREAD, warm_up
from core.kvcache import SessionKV
from core.models import load_chat_model
from core.runner import runner_for, session_rows_exact
from core.settings import SamplingSettings
from core.trace import Step, Trace

TOKENS = 2000
REPLY_TOKENS = 48
OPEN_LAYER = 15  # the page's default layer (n_layers // 2)
OTHER_LAYER = 25
TARGET_S, TARGET_MB = 1.0, 1536
VARIANTS = ("sdpa", "baseline", "page", "page-kv", "page-kv-prompt")
QUESTIONS = [
    "What is the capital of France?",
    "Tell me about the Eiffel Tower.",
    "Why is the sky blue?",
    "How do plants make their food?",
    "What is a prime number? Give examples.",
]
ANSWER = (
    "Here is a short answer. Paris is the capital and largest city of France, on the river Seine. "
    "Light from the sun is scattered by the air, and blue light is scattered the most. Plants use "
    "sunlight, water and carbon dioxide to make sugar in their leaves; this is photosynthesis. "
    "A prime number has exactly two divisors: one and itself, such as 2, 3, 5, 7 and 11."
)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def conversation_trace(lm) -> Trace:
    """A many-turn chat whose prompt plus reply is exactly TOKENS tokens."""
    messages = [Message("system", "You are a helpful assistant.")]
    turn = 0
    while True:
        extra = [Message("user", QUESTIONS[turn % len(QUESTIONS)]), Message("assistant", ANSWER)]
        candidate = build_prompt(lm.tokenizer, [*messages, *extra[:1]], budget=10**6)
        if len(candidate.ids) + REPLY_TOKENS > TOKENS:
            break
        messages += extra
        turn += 1
    messages.append(Message("user", "Summarise our conversation."))
    prompt = build_prompt(lm.tokenizer, messages, budget=10**6)
    reply_ids = lm.tokenizer.encode(ANSWER * 4, add_special_tokens=False)[: TOKENS - len(prompt.ids)]
    steps = [Step(t, lm.tokenizer.decode([t]), 1.0, 1.0, 1, 0.0, [t], [0.0], [1.0], [1.0]) for t in reply_ids]
    return Trace(prompt.ids, prompt.spans, SamplingSettings(), lm.name, steps, finish_reason="length")


def session_kv(lm, trace: Trace, cached: int) -> SessionKV:
    """A SessionKV holding the first `cached` tokens of the trace, filled the way generation fills it."""
    warm_up(lm)  # the lean decode path, as the chat builds it
    lean = lm.lean
    kv = SessionKV()
    ids = trace.full_ids
    with lm.lock, torch.inference_mode():
        kv.prepare(lean, ids[:cached], need=len(ids))
        kv.forward(lean, trace.prompt_ids)  # the prompt, in one batch as generation reads it
        if cached > len(trace.prompt_ids):
            kv.forward(lean, ids[len(trace.prompt_ids) : cached])  # the reply's tokens read back
    return kv


def run_variant(variant: str, trace_path: str) -> dict:
    """Runs in the subprocess: load the model, run one variant, report seconds and peak RSS."""
    lm = load_chat_model()
    trace = Trace.from_json(Path(trace_path).read_text())
    ids = torch.tensor([trace.full_ids])
    with lm.lock, torch.inference_mode():  # warm up, as the app is after a chat: first calls are slow
        lm.model(input_ids=ids[:, :32], use_cache=False, logits_to_keep=1)
    kv = None
    if variant == "page-kv":
        kv = session_kv(lm, trace, len(trace.full_ids) - 1)  # the last token is never read back
    elif variant == "page-kv-prompt":
        kv = session_kv(lm, trace, len(trace.prompt_ids))
    out: dict = {"variant": variant, "tokens": len(trace.full_ids)}
    # Both self-checks run once per model, in the background at load in the app
    # (core.runner.prove_in_background), so a page opened after chatting finds them done.
    # Here they run first too, timed on their own; the decode-thread measurement that warm-up
    # starts is waited for, since it holds the model at load.
    warming = next((t for t in threading.enumerate() if t.name == THREADS_THREAD), None)
    if warming is not None:
        warming.join()
    runner_for(lm).self_check()
    if kv is not None:
        out["kv_tokens"] = len(kv.ids)
        check, cpu = time.perf_counter(), time.process_time()
        out["kv_check_ok"] = session_rows_exact(runner_for(lm))  # once per model
        out["kv_check_s"], out["kv_check_cpu_s"] = time.perf_counter() - check, time.process_time() - cpu
    out["rss_after_load_mb"] = peak_mb()
    start, cpu = time.perf_counter(), time.process_time()
    if variant == "sdpa":
        with lm.lock, torch.inference_mode():
            lm.model(input_ids=ids, use_cache=False, logits_to_keep=1)
    elif variant == "baseline":
        with lm.lock, torch.inference_mode():
            lm.model.set_attn_implementation("eager")
            try:
                res = lm.model(input_ids=ids, use_cache=False, logits_to_keep=1, output_attentions=True)
                out["kept_mb"] = sum(a.numel() * a.element_size() for a in res.attentions) / 2**20
            finally:
                lm.model.set_attn_implementation("sdpa")
    elif variant.startswith("page"):
        ov = att.overview(lm, trace, keep_layer=OPEN_LAYER, kv=kv)  # the page's own call (cached)
        weights = att.reply_weights(lm, trace, OPEN_LAYER, kv=kv)  # (H, R, T)
        cells = len(att.model_view_frame(ov))  # model view
        first = ov.position(0)  # the step rows: P - 1 .. T - 2, each the row that chose a reply token
        rows = range(first, ov.n_tokens - 1)
        cells_head = len(att.head_frame_by_group(weights[0], ov, rows, first))  # head view, turn columns
        att.token_row(ov, 0, weights)  # per-token view
        att.turn_frame(ov)  # turn view
        out.update(model_view_cells=cells, head_view_cells=cells_head, pass_s=ov.seconds, method=ov.method)
        out["seconds"], out["cpu_s"] = time.perf_counter() - start, time.process_time() - cpu
        out["peak_rss_mb"] = peak_mb()
        again = time.perf_counter()
        att.overview(lm, trace)
        att.reply_weights(lm, trace, OPEN_LAYER)
        out["revisit_s"] = time.perf_counter() - again
        switch, cpu = time.perf_counter(), time.process_time()
        att.reply_weights(lm, trace, OTHER_LAYER, kv=kv)
        out["layer_switch_s"], out["layer_switch_cpu_s"] = (
            time.perf_counter() - switch,
            time.process_time() - cpu,
        )
        out["peak_rss_after_switch_mb"] = peak_mb()
        if kv is not None:  # the head view's "whole sequence" rows: a full pass up to the layer
            whole, cpu = time.perf_counter(), time.process_time()
            att.layer_weights(lm, trace, OPEN_LAYER)
            out["whole_s"], out["whole_cpu_s"] = time.perf_counter() - whole, time.process_time() - cpu
            out["peak_rss_after_whole_mb"] = peak_mb()
        return out
    out["seconds"], out["cpu_s"] = time.perf_counter() - start, time.process_time() - cpu
    out["peak_rss_mb"] = peak_mb()
    return out


def main() -> int:
    lm = load_chat_model()
    trace = conversation_trace(lm)
    groups, _ = att.token_groups(lm.tokenizer, trace)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        path.write_text(trace.to_json())
        results = []
        for variant in VARIANTS:
            proc = subprocess.run(
                [sys.executable, __file__, "--variant", variant, "--trace", str(path)],
                capture_output=True,
                text=True,
                check=True,
            )
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    by = {r["variant"]: r for r in results}
    page, kv, kv_prompt = by["page"], by["page-kv"], by["page-kv-prompt"]
    print(
        f"Conversation: {len(trace.full_ids):,} tokens ({len(trace.prompt_ids):,} prompt, "
        f"{len(trace.steps)} reply), {len(groups)} column groups; torch threads {torch.get_num_threads()}\n"
    )
    print(f"| {'variant':<66} | {'wall (s)':>8} | {'CPU (s)':>7} | {'peak RSS (MB)':>13} |")
    print(f"|{'-' * 68}|{'-' * 10}|{'-' * 9}|{'-' * 15}|")
    base = by["baseline"]
    rows = [
        ("plain sdpa forward (no weights; machine speed now)", by["sdpa"], "seconds", "cpu_s", "peak_rss_mb"),
        (
            f"baseline: eager output_attentions=True ({base['kept_mb']:,.0f} MB kept)",
            base,
            "seconds",
            "cpu_s",
            "peak_rss_mb",
        ),
        (
            "page opens, no session KV: runner rows pass, views",
            page,
            "seconds",
            "cpu_s",
            "peak_rss_mb",
        ),
        ("page revisit (cached)", page, "revisit_s", None, "peak_rss_mb"),
        (
            f"switch to layer {OTHER_LAYER}, no session KV (pass stops early)",
            page,
            "layer_switch_s",
            "layer_switch_cpu_s",
            "peak_rss_after_switch_mb",
        ),
        (
            f"page opens after chatting: session KV holds {kv['kv_tokens']:,} tokens",
            kv,
            "seconds",
            "cpu_s",
            "peak_rss_mb",
        ),
        (
            f"page opens, session KV holds only the prompt ({kv_prompt['kv_tokens']:,} tokens)",
            kv_prompt,
            "seconds",
            "cpu_s",
            "peak_rss_mb",
        ),
        (
            f"switch to layer {OTHER_LAYER} with session KV (reply rows up to it)",
            kv,
            "layer_switch_s",
            "layer_switch_cpu_s",
            "peak_rss_after_switch_mb",
        ),
        (
            f"head view 'whole sequence' rows of layer {OPEN_LAYER} (full pass, on demand)",
            kv,
            "whole_s",
            "whole_cpu_s",
            "peak_rss_after_whole_mb",
        ),
    ]
    for name, r, wall, cpu, mb in rows:
        cpu_text = f"{r[cpu]:>7.1f}" if cpu else f"{'':>7}"
        print(f"| {name:<66} | {r[wall]:>8.2f} | {cpu_text} | {r[mb]:>13,.0f} |")
    print(
        f"\nModel loaded: {page['rss_after_load_mb']:,.0f} MB RSS. Cells sent: model view "
        f"{page['model_view_cells']:,}, head view {page['head_view_cells']:,} (turn columns). "
        f"Methods: {page['method']} (no KV), {kv['method']} (session KV; "
        f"filled by SessionKV.prepare + forward outside the timed region; its peak RSS includes that fill)."
    )
    opened = kv["seconds"]
    ok_t, ok_m = opened <= TARGET_S and kv["kv_check_ok"], kv["peak_rss_mb"] <= TARGET_MB
    print(
        f"The session pass's one-time self-check (run at load, in the background): "
        f"{'passed' if kv['kv_check_ok'] else 'FAILED'} "
        f"in {kv['kv_check_s']:.2f} s wall, {kv['kv_check_cpu_s']:.2f} s CPU.\n"
        f"Targets, page opened after chatting (session KV): open <= {TARGET_S:.0f} s "
        f"({'meets' if ok_t else 'MISSES'}: {opened:.2f} s wall, {kv['cpu_s']:.1f} s CPU; "
        f"{kv_prompt['seconds']:.2f} s when only the prompt is cached); peak RSS <= {TARGET_MB / 1024:.1f} GB "
        f"({'meets' if ok_m else 'MISSES'}: {kv['peak_rss_mb'] / 1024:.2f} GB vs "
        f"{base['peak_rss_mb'] / 1024:.2f} GB for the baseline, which took {base['seconds']:.1f} s).\n"
        f"Without a session KV (an imported conversation) the page opens in {page['seconds']:.2f} s wall "
        f"(no target: the whole context is read once; a plain sdpa pass alone takes "
        f"{by['sdpa']['seconds']:.2f} s) at {page['peak_rss_mb'] / 1024:.2f} GB."
    )
    return 0 if ok_t and ok_m else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=VARIANTS)
    parser.add_argument("--trace")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.trace)))
    else:
        sys.exit(main())
