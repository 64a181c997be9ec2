"""Memory: a 30-turn conversation with every explanation view computed for every reply.

The process's resident memory (RSS) must stay under 2 GB, the Streamlit Community Cloud
limit with margin. Each reply runs the core computation behind every page (explain panel,
candidates with the logit lens, tokens, attention, embeddings, walkthrough) and keeps the
results in bounded caches sized like the pages' own, as a long-lived server process would.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_memory.py [--turns 30] [--max-new-tokens 24]

Prints one line per turn and a summary; exits 1 if the peak RSS reaches the limit.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import warnings

import psutil

from core.cache import BoundedCache
from core.conversation import Message, build_prompt
from core.explain import attention as att
from core.explain import embeddings as emb
from core.explain import tokenization, walkthrough
from core.explain.candidates import reply_chips, steps_table, top_candidates, what_if
from core.explain.lens import lens_table
from core.explain.summary import hardest_step, summarize
from core.export import conversation_json, explanation_json
from core.generation import generate, new_trace
from core.memory import give_back_freed_memory
from core.models import load_chat_model, load_embedder
from core.settings import DEFAULT_CONTEXT_BUDGET, DEFAULT_SYSTEM_PROMPT, SamplingSettings

LIMIT_MB = 2048
QUESTIONS = [
    "What is the capital of France?",
    "Name a fruit that is yellow.",
    "Why is the sky blue?",
    "Write a haiku about the sea.",
    "What does a CPU do?",
    "Give me a word that rhymes with cat.",
]


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def explain_everything(lm, embedder, history: list[Message], reply: Message, caches: dict) -> None:
    """What visiting every explanation page for this reply computes."""
    trace = reply.trace
    tok = lm.tokenizer
    key = trace.trace_id
    last = len(trace.steps) - 1
    hard = hardest_step(trace) or 0
    # explain panel and export
    caches["panel"].get_or_compute(key, lambda: (reply_chips(tok, trace), summarize(tok, trace)))
    explanation_json(tok, reply)
    # candidates: table, top-10, what-if, logit lens at the hardest step
    steps_table(tok, trace)
    top_candidates(tok, trace.steps[hard])
    what_if(tok, trace.steps[hard], SamplingSettings(temperature=1.5))
    caches["lens"].get_or_compute((key, hard), lambda: lens_table(lm, trace, hard, k=5))
    # tokens
    caches["tokens"].get_or_compute(key, lambda: tokenization.trace_table(tok, trace))
    tokenization.budget_usage(tok, history, DEFAULT_CONTEXT_BUDGET)
    # attention: the overview (every layer reduced) and one full layer, cached inside the module
    att.overview(lm, trace, keep_layer=0)
    att.layer_weights(lm, trace, 0)
    # embeddings: token vectors at the last layer, map, similarities, nearest words, sentences
    parts = emb.message_parts(trace, history)
    vectors = emb.token_vectors(lm, trace, parts[-1], lm.n_layers)  # (n, d)
    emb.cosine_matrix(vectors)
    if len(vectors) > 2:
        emb.pca_2d(vectors)
    emb.nearest_tokens(lm, trace.steps[0].token_id, 10)
    units = emb.conversation_units(history)
    emb.message_map(units, emb.sentence_vectors(embedder, units["text"].tolist()))
    # walkthrough at the last step
    walk = caches["walk"].get_or_compute((key, last), lambda: walkthrough.walk_step(lm, trace, last))
    walkthrough.context_tokens(lm, trace, last)
    walkthrough.attention_table(lm, walk)
    walkthrough.top_logits(lm, walk.logits)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=30)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' cache-argument rename

    start_rss = rss_mb()
    lm = load_chat_model()
    embedder = load_embedder()
    lm.model  # noqa: B018 - the background load of the explanation model, as the pages wait for it
    gc.collect()
    baseline = rss_mb()
    print(f"RSS at start {start_rss:.0f} MB; after loading both models {baseline:.0f} MB")
    caches = {  # the bounds the pages use
        "panel": BoundedCache(32),
        "lens": BoundedCache(16),
        "tokens": BoundedCache(16),
        "walk": BoundedCache(8),
    }
    settings = SamplingSettings(temperature=0.7, max_new_tokens=args.max_new_tokens)
    history = [Message("system", DEFAULT_SYSTEM_PROMPT)]
    peak = baseline
    t0 = time.perf_counter()
    for turn in range(args.turns):
        history.append(Message("user", QUESTIONS[turn % len(QUESTIONS)]))
        prompt = build_prompt(lm.tokenizer, history, DEFAULT_CONTEXT_BUDGET, reserve=settings.max_new_tokens)
        trace = new_trace(lm, prompt.ids, prompt.spans, settings)
        generate(lm, trace)
        reply = Message("assistant", trace.text, trace=trace)
        history.append(reply)
        explain_everything(lm, embedder, history, reply, caches)
        give_back_freed_memory()  # as app.py does after each page run
        now = rss_mb()
        peak = max(peak, now)
        print(
            f"turn {turn + 1:2d}: prompt {len(trace.prompt_ids):4d} tokens, reply {len(trace.steps):3d}, "
            f"RSS {now:6.0f} MB (peak {peak:.0f})",
            flush=True,
        )
    size = len(conversation_json(history, lm.name)) / 1e6
    gc.collect()
    final = rss_mb()
    print(
        f"\n{args.turns} turns in {time.perf_counter() - t0:.0f} s. RSS after model load {baseline:.0f} MB, "
        f"peak {peak:.0f} MB, final {final:.0f} MB (limit {LIMIT_MB} MB). Export {size:.1f} MB."
    )
    return 0 if peak < LIMIT_MB else 1


if __name__ == "__main__":
    sys.exit(main())
