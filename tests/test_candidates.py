"""Next-word candidates: step table, what-if against the sampler, readable token text."""

from __future__ import annotations

import pytest
import torch

from core.charts.candidates import candidates_bar, reply_line
from core.conversation import Message
from core.explain.candidates import (
    STEP_COLUMNS,
    find_repetition,
    reply_chips,
    runner_up,
    steps_table,
    tokens_for_90,
    top_candidates,
    uncertain_moments,
    what_if,
)
from core.explain.forward import context_ids
from core.generation import generate, new_trace
from core.sampling import sampling_probs
from core.settings import DEFAULT_SYSTEM_PROMPT, SamplingSettings
from core.tokens import readable
from core.trace import TOP_CANDIDATES, Step, Trace
from tests.conftest import make_trace

WHAT_IFS = [
    SamplingSettings(temperature=t, top_k=k, top_p=p)
    for t, k, p in [
        (1.0, 0, 1.0),
        (0.3, 0, 1.0),
        (1.7, 0, 0.9),
        (0.7, 50, 0.5),
        (1.0, 10, 0.95),
        (0.0, 0, 1.0),
    ]
]


def _step_from_logits(logits: torch.Tensor) -> Step:
    """A step record as the decode loop makes it, from full-vocabulary logits (vocab,)."""
    top_logits, top_ids = torch.topk(logits, TOP_CANDIDATES)
    probs = torch.softmax(logits, -1)
    tid = int(top_ids[0])
    return Step(
        tid,
        "",
        float(probs[tid]),
        float(probs[tid]),
        1,
        1.0,
        top_ids.tolist(),
        top_logits.tolist(),
        probs[top_ids].tolist(),
        probs[top_ids].tolist(),
    )


@pytest.mark.parametrize("settings", WHAT_IFS, ids=str)
def test_what_if_matches_sampler_on_random_logits(lm, settings):
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        logits = torch.randn(lm.vocab_size, generator=gen) * 3  # (vocab,)
        step = _step_from_logits(logits)
        got = torch.tensor(what_if(lm.tokenizer, step, settings, n=TOP_CANDIDATES)["what_if"].tolist())
        # the sampler on the same 50 logits (what the page claims to show)
        want = sampling_probs(torch.tensor(step.top_logits), settings)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
        assert abs(float(got.sum()) - 1.0) < 1e-4


@pytest.mark.parametrize("settings", [WHAT_IFS[1], WHAT_IFS[3], WHAT_IFS[4]], ids=str)
def test_what_if_matches_sampler_on_real_logits(lm, greedy_trace, settings):
    """On real steps the top 50 hold nearly all the mass, so the recomputation over them agrees
    with the sampler run on the full vocabulary (exactly so when top-k <= 50 cuts the tail)."""
    ids = torch.tensor([greedy_trace.prompt_ids + greedy_trace.output_ids[:4]])
    with lm.lock, torch.inference_mode():
        logits = lm.model(input_ids=ids).logits[0, -1].float()  # (vocab,)
    step = greedy_trace.steps[4]
    full = sampling_probs(logits, settings)[torch.tensor(step.top_ids)]
    got = torch.tensor(what_if(lm.tokenizer, step, settings, n=TOP_CANDIDATES)["what_if"].tolist())
    torch.testing.assert_close(got, full / full.sum(), atol=2e-3, rtol=1e-2)


def test_what_if_reproduces_what_the_sampler_recorded(lm, two_turn):
    """A sampled reply: the decode loop recorded each step's sampled distribution; the what-if
    under the trace's own settings must give it back from the recorded logits."""
    settings = SamplingSettings(temperature=0.7, top_k=50, top_p=0.95, max_new_tokens=24, seed=3)
    trace = make_trace(lm, two_turn, settings)
    for step in trace.steps:
        got = what_if(lm.tokenizer, step, trace.settings, n=TOP_CANDIDATES)["what_if"].tolist()
        torch.testing.assert_close(
            torch.tensor(got), torch.tensor(step.top_sample_probs), atol=1e-4, rtol=1e-3
        )


def test_higher_temperature_flattens_the_distribution(lm, greedy_trace):
    step = greedy_trace.steps[0]
    cold = what_if(lm.tokenizer, step, SamplingSettings(temperature=0.3, top_k=0, top_p=1.0))
    hot = what_if(lm.tokenizer, step, SamplingSettings(temperature=2.0, top_k=0, top_p=1.0))
    assert cold["what_if"].iloc[0] > cold["original"].iloc[0] > hot["what_if"].iloc[0]


def test_steps_table_follows_the_trace(lm, greedy_trace):
    table = steps_table(lm.tokenizer, greedy_trace)
    assert len(table) == len(greedy_trace.steps)
    assert table["token_id"].tolist() == greedy_trace.output_ids
    assert (table["rank"] == 1).all()  # greedy always picks the top token
    assert ((table["top50_mass"] > 0) & (table["top50_mass"] <= 1.0 + 1e-5)).all()
    assert "Rome" in "".join(table["token"])
    cands = top_candidates(lm.tokenizer, greedy_trace.steps[0], 10)
    assert len(cands) == 10 and cands["chosen"].iloc[0] and cands["prob"].is_monotonic_decreasing


def test_uncertain_moments_are_the_closest_calls(greedy_trace):
    """Ranked by the runner-up's probability (how likely the road not taken was), not by the
    chosen token's: a confident-looking pick can hide the fork that decided the reply."""
    picked = uncertain_moments(greedy_trace, 3)
    runner_ups = sorted((sorted(s.top_probs, reverse=True)[1] for s in greedy_trace.steps), reverse=True)
    got = sorted((greedy_trace.steps[i].top_probs[1] for i in picked), reverse=True)  # greedy: rank 1 chosen
    assert got == runner_ups[:3]
    assert picked == sorted(picked)


def test_the_issue_fork_capital_over_population_is_listed(lm):
    """The follow-up "What is its population?" answered about the capital: step 2 chose
    "capital" (68%) over "population" (27%). Ranked by the chosen token it was not listed."""
    history = [Message("system", DEFAULT_SYSTEM_PROMPT), Message("user", "What is the capital of Australia?")]
    first = make_trace(lm, history, SamplingSettings(temperature=0, max_new_tokens=24))
    history += [Message("assistant", first.text), Message("user", "What is its population?")]
    trace = make_trace(lm, history, SamplingSettings(temperature=0, max_new_tokens=24))
    fork = trace.output_ids.index(lm.tokenizer.encode(" capital", add_special_tokens=False)[0])
    assert readable(lm.tokenizer, runner_up(trace.steps[fork])[0]) == "·population"
    assert fork in uncertain_moments(trace, 3)
    assert fork not in sorted(range(len(trace.steps)), key=lambda i: trace.steps[i].prob)[:3]


@pytest.fixture(scope="module")
def long_shot(lm, two_turn) -> tuple[Step, int]:
    """A real sampled step whose token ranks below the 10 candidates a chart shows by default
    (hot sampling gives one in the first 40 tokens; 256 tokens took 14 s)."""
    for seed in range(20):
        settings = SamplingSettings(temperature=1.5, top_k=0, top_p=1.0, seed=seed, max_new_tokens=40)
        trace = make_trace(lm, two_turn, settings)
        for step in trace.steps:
            if 10 < step.rank <= TOP_CANDIDATES:
                return step, seed
    raise AssertionError("no sampled step ranked 11-50 in 20 seeds")


def test_the_chosen_token_is_always_in_the_candidates_chart(lm, long_shot):
    step, _ = long_shot
    table = top_candidates(lm.tokenizer, step, 10)
    assert table["rank"].tolist()[:10] == list(range(1, 11))
    chosen = table[table["chosen"]]
    assert len(chosen) == 1 and int(chosen["rank"].iloc[0]) == step.rank
    assert chosen["token"].iloc[0] == readable(lm.tokenizer, step.token_id)
    assert chosen["prob"].iloc[0] == step.prob
    rows = candidates_bar(table).to_dict()["datasets"]
    (data,) = rows.values()
    labels = [r["label"] for r in data if r["chosen"]]
    assert labels == [f"… {step.rank}. {readable(lm.tokenizer, step.token_id)} ◀ chosen"]
    # the what-if chart too, from the recorded top 50
    wi = what_if(lm.tokenizer, step, SamplingSettings(temperature=0.5), n=10)
    assert wi["chosen"].sum() == 1 and int(wi[wi["chosen"]]["rank"].iloc[0]) == step.rank


def test_a_chosen_token_among_the_shown_is_not_repeated(lm, greedy_trace, long_shot):
    table = top_candidates(lm.tokenizer, greedy_trace.steps[0], 10)
    assert len(table) == 10 and table["chosen"].sum() == 1
    step, _ = long_shot
    assert len(top_candidates(lm.tokenizer, step, step.rank)) == step.rank
    assert len(top_candidates(lm.tokenizer, step, step.rank - 1)) == step.rank  # the pick, once


def test_what_if_honours_the_repetition_penalty(lm, two_turn):
    """A reply sampled with a penalty: the what-if under its own settings, given the text the
    model had read, gives back what the sampler recorded, renormalised over the recorded 50
    (without filters that is exact; without the text the penalty cannot be applied at all)."""
    settings = SamplingSettings(
        temperature=0.8, top_k=0, top_p=1.0, max_new_tokens=24, seed=3, repetition_penalty=1.5
    )
    trace = make_trace(lm, two_turn, settings)
    plain = SamplingSettings(temperature=0.8, top_k=0, top_p=1.0)
    changed = 0
    for i, step in enumerate(trace.steps):
        got = what_if(lm.tokenizer, step, trace.settings, n=TOP_CANDIDATES, context_ids=context_ids(trace, i))
        recorded = torch.tensor(step.top_sample_probs)
        torch.testing.assert_close(
            torch.tensor(got["what_if"].tolist()), recorded / recorded.sum(), atol=1e-4, rtol=1e-3
        )
        unpenalised = what_if(lm.tokenizer, step, plain, n=TOP_CANDIDATES)["what_if"]
        changed += not torch.allclose(
            torch.tensor(got["what_if"].tolist()), torch.tensor(unpenalised.tolist())
        )
    assert changed > len(trace.steps) / 2  # the penalty really moved the distributions
    with pytest.raises(ValueError):
        what_if(lm.tokenizer, trace.steps[0], trace.settings)


def test_find_repetition_on_known_ids():
    def trace_of(ids: list[int]) -> Trace:
        steps = [Step(t, "x", 0.5, 0.5, 1, 1.0, [], [], [], []) for t in ids]
        return Trace([], [], SamplingSettings(), "m", steps)

    loop = find_repetition(trace_of([9, 8] + [1, 2, 3] * 8))
    assert (loop.start, loop.end, loop.source, loop.period, loop.copies) == (5, 26, 2, 3, 7)
    assert find_repetition(trace_of(list(range(40)))) is None
    assert find_repetition(trace_of([1, 2, 3, 4] * 3)) is None  # 8 copied tokens: too short to call a loop


def test_the_loop_is_marked_in_the_steps_table_and_the_whole_reply_chart(lm, ocean_poem):
    trace = ocean_poem
    loop = find_repetition(trace)
    table = steps_table(lm.tokenizer, trace)
    assert table.index[table["repeats"]].tolist() == list(range(loop.start, loop.end))
    spec = reply_line(table, 3).to_dict()
    bands = [layer for layer in spec["layer"] if layer.get("mark", {}).get("type") == "rect"]
    assert len(bands) == 1
    (band,) = [d for d in spec["datasets"].values() if d and "from" in d[0]]
    assert band == [{"from": loop.start + 1, "to": loop.end, "what": "repeats earlier text (a loop)"}]
    plain = reply_line(
        steps_table(
            lm.tokenizer, make_trace(lm, [Message("system", DEFAULT_SYSTEM_PROMPT), Message("user", "Hi")])
        ),
        0,
    )
    assert not [la for la in plain.to_dict()["layer"] if la.get("mark", {}).get("type") == "rect"]


def test_every_steps_column_has_a_readable_header_and_help(lm, greedy_trace):
    table = steps_table(lm.tokenizer, greedy_trace)
    assert list(table.columns) == list(STEP_COLUMNS)
    for column, (header, tip, _) in STEP_COLUMNS.items():
        assert "_" not in header and tip.endswith((".", ")")) and len(tip) > 20, column
    assert STEP_COLUMNS["sample_prob"][0] == "chance in the draw"
    assert STEP_COLUMNS["top50_mass"][0] == "top-50 share"
    assert STEP_COLUMNS["runner_up_prob"][0] == "runner-up probability"


def test_tokens_for_90(greedy_trace):
    for step in greedy_trace.steps:
        n = tokens_for_90(step)
        if n is not None:
            assert sum(step.top_probs[:n]) >= 0.9 - 1e-6
            assert n == 1 or sum(step.top_probs[: n - 1]) < 0.9


@pytest.mark.parametrize("text", ["I love 🍕 and 🎉!", "東京は日本の首都です。"])
def test_utf8_fragments_display_for_emoji_and_cjk(lm, text):
    """A reply made of byte-level pieces: every chip is non-empty, partial characters show as bytes,
    and the chips' bytes put together give back the text exactly."""
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    msgs = [Message("system", "Repeat."), Message("user", text)]
    trace = make_trace(lm, msgs, SamplingSettings(temperature=0, max_new_tokens=1))
    forced = new_trace(
        lm, trace.prompt_ids, trace.spans, SamplingSettings(temperature=0, max_new_tokens=len(ids))
    )
    generate(lm, forced, forced=ids)
    assert forced.text == text  # the incremental decoder joins the fragments
    items = reply_chips(lm.tokenizer, forced)
    assert all(c.text.strip() for c in items)
    assert "�" not in "".join(c.text for c in items)
    assert any("bytes" in c.css for c in items)  # at least one token is part of a character
    rebuilt = b""
    for c in items:
        for part in c.text.split("<0x"):
            if part.startswith(tuple("0123456789ABCDEF")) and len(part) >= 3 and part[2] == ">":
                rebuilt += bytes([int(part[:2], 16)]) + part[3:].replace("·", " ").encode()
            else:
                rebuilt += part.replace("·", " ").encode()
    assert rebuilt.decode("utf-8") == text
