"""The plain-language summary: every sentence true to the trace it describes (issue 18, items 2-4)."""

from __future__ import annotations

import copy

import pytest

from core.conversation import Message
from core.explain.candidates import find_repetition, runner_up, uncertain_moments
from core.explain.summary import (
    answers_earlier_turn,
    chance,
    hardest_step,
    loop_story,
    percent,
    pick_story,
    summarize,
)
from core.settings import DEFAULT_SYSTEM_PROMPT, SamplingSettings
from core.tokens import readable
from core.trace import Trace
from tests.conftest import make_trace, make_traces

POEM = [Message("system", DEFAULT_SYSTEM_PROMPT), Message("user", "Write a short poem about the ocean.")]
GREEDY = SamplingSettings(temperature=0, max_new_tokens=32)
OLD_WORDING = "let a less likely token through"


def test_summary_names_the_hardest_step(lm, greedy_trace):
    text = summarize(lm.tokenizer, greedy_trace)
    steps = greedy_trace.steps
    i = min(range(len(steps)), key=lambda k: steps[k].prob)  # independent of hardest_step
    assert hardest_step(greedy_trace) == i
    step = steps[i]
    runner = next(t for t in step.top_ids if t != step.token_id)
    sure = sum(s.prob > 0.9 for s in steps)
    assert f"over 90% sure of {sure} of {len(steps)} tokens" in text
    assert f"(step {i + 1})" in text
    assert f"picked '{readable(lm.tokenizer, step.token_id)}' ({percent(step.prob)})" in text
    assert f"over '{readable(lm.tokenizer, runner)}'" in text


def test_summary_follows_a_changed_trace(lm, greedy_trace):
    """Make a different step the least sure one: the summary must move with it."""
    trace = copy.deepcopy(greedy_trace)
    target = len(trace.steps) - 2
    trace.steps[target].prob = 0.01
    assert f"(step {target + 1})" in summarize(lm.tokenizer, trace)


# -- item 2: a long shot is narrated as what happened ------------------------------------------
CASES = {  # sampled poems (40 tokens each, three seeds) under each kind of setting
    "temperature below 1": SamplingSettings(temperature=0.7, top_k=50, top_p=0.95),
    "temperature above 1": SamplingSettings(temperature=1.5, top_k=0, top_p=1.0),
    "top-k": SamplingSettings(temperature=1.0, top_k=40, top_p=1.0),
    "top-p": SamplingSettings(temperature=1.0, top_k=0, top_p=0.9),
}


@pytest.fixture(scope="module")
def _sampled_poems(lm) -> dict[str, list[Trace]]:
    """The three poems of every case, written in one batch (12 replies at once: 4 batches of 3
    took 22 s)."""
    jobs = [
        (POEM, SamplingSettings(**{**base.to_dict(), "seed": seed, "max_new_tokens": 40}))
        for base in CASES.values()
        for seed in range(3)
    ]
    traces = make_traces(lm, jobs)
    return {case: traces[3 * k : 3 * k + 3] for k, case in enumerate(CASES)}


@pytest.fixture(scope="module", params=list(CASES))
def long_shots(request, _sampled_poems) -> tuple[str, list[tuple[Trace, int]]]:
    """(case, every (trace, step) whose token was not the model's first choice)."""
    poems = _sampled_poems[request.param]
    found = [(trace, i) for trace in poems for i, s in enumerate(trace.steps) if s.rank > 1]
    assert found, "a sampled poem always has some long shots"
    return request.param, found


def _kept(step) -> int:
    return sum(1 for p in step.top_sample_probs if p > 0)


def test_a_long_shot_is_narrated_as_filters_then_a_draw(long_shots):
    case, found = long_shots
    for trace, i in found:
        step, s = trace.steps[i], trace.settings
        story = pick_story(trace, i)
        assert OLD_WORDING not in story
        assert f"the random draw (seed {s.seed}) picked it, with a {chance(step.sample_prob)} chance" in story
        assert f"{chance(step.prob)} in the model's own distribution" in story
        # the direction it states is the direction of the numbers
        if "less likely" in story:
            assert step.sample_prob < step.prob
        if "more likely" in story:
            assert step.sample_prob > step.prob and s.top_k == 0 and s.top_p == 1.0
        if case == "temperature below 1":
            assert "Temperature 0.7 (below 1) sharpens the distribution" in story
            assert f"Top-k 50 and top-p 0.95 left the {_kept(step)} most likely tokens" in story
            if step.sample_prob < step.prob:  # the case: 0.91% -> 0.62% is not "let through"
                assert "made this token less likely, not more" in story
        elif case == "temperature above 1":
            assert "Temperature 1.5 (above 1) flattens the distribution" in story
            assert "no token is filtered out" in story
            assert ("less likely" in story) == (step.sample_prob < step.prob)
            assert ("more likely" in story) == (step.sample_prob > step.prob)
        elif case == "top-k":
            assert step.rank <= 40 and _kept(step) == 40
            assert "Top-k 40 left the 40 most likely tokens in the draw" in story
            assert "choice, so it stayed in" in story
            assert "Temperature" not in story and "At temperature 1 the odds are the model's own" in story
        else:  # top-p keeps the smallest top set holding 90%: check the count it names
            n = _kept(step)
            assert sum(step.top_probs[: n - 1]) < 0.9 + 1e-3
            if n < len(step.top_ids):
                assert f"Top-p 0.9 left the {n} most likely tokens in the draw" in story
                assert sum(step.top_probs[:n]) >= 0.9 - 1e-3 and step.rank <= n
            else:  # all 50 recorded candidates kept: how many more is not known, and not claimed
                assert f"Top-p 0.9 left at least the {n} most likely tokens in the draw" in story


def test_the_hardest_long_shot_is_explained_in_the_summary(lm, long_shots):
    _, found = long_shots
    trace = found[0][0]
    i = hardest_step(trace)
    text = summarize(lm.tokenizer, trace)
    assert OLD_WORDING not in text
    if trace.steps[i].rank > 1:
        assert f"choice number {trace.steps[i].rank}. {pick_story(trace, i)}" in text


def test_a_greedy_pick_below_the_top_is_put_down_to_the_repetition_penalty(lm):
    trace = make_trace(lm, POEM, SamplingSettings(temperature=0, max_new_tokens=80, repetition_penalty=1.3))
    lower = [i for i, s in enumerate(trace.steps) if s.rank > 1]
    assert lower, "a penalty of 1.3 makes greedy decoding skip tokens already in the text"
    for i in lower:
        step = trace.steps[i]
        read = set(trace.prompt_ids) | set(trace.output_ids[:i])
        assert set(step.top_ids[: step.rank - 1]) <= read  # what the story will claim
        assert pick_story(trace, i).startswith("The repetition penalty (1.3) lowered the")


# -- item 3: a loop is named, not presented as confidence --------------------------------------
@pytest.fixture()
def looping(ocean_poem) -> Trace:
    """The greedy ocean poem goes round in a loop well before 200 tokens."""
    return ocean_poem


def test_the_summary_names_the_loop_and_where_copying_starts(lm, looping):
    loop = find_repetition(looping)
    assert loop is not None
    ids = looping.output_ids
    # every token from the start of the copying on repeats the one a period earlier
    assert all(ids[k] == ids[k - loop.period] for k in range(max(loop.start, loop.period), loop.end))
    assert ids[loop.source : loop.source + loop.period] == list(loop.unit_ids)
    assert loop.source < loop.start and loop.copies >= 2
    text = summarize(lm.tokenizer, looping)
    assert f"From step {loop.start + 1} the reply goes round in a loop" in text
    assert f"(first written at step {loop.source + 1}) {loop.copies} times in a row" in text
    inside = sum(1 for s in looping.steps[loop.start : loop.end] if s.prob > 0.9)
    assert f"{inside} of the tokens it was over 90% sure of are in that loop" in text
    assert "comes from repeating, not from knowing" in text


def test_a_loop_is_named_only_where_there_is_one(lm, looping, greedy_trace):
    assert "goes round in a loop" in summarize(lm.tokenizer, looping)
    assert find_repetition(greedy_trace) is None  # "The capital of Italy is Rome." repeats nothing
    assert loop_story(lm.tokenizer, greedy_trace) == ""
    assert "loop" not in summarize(lm.tokenizer, greedy_trace)


# -- item 4: the decisive fork, and a reply that answers an earlier question -----------------
@pytest.fixture(scope="module")
def follow_up(lm) -> Trace:
    """The issue's chat: the capital of Australia, then "What is its population?"."""
    history = [Message("system", DEFAULT_SYSTEM_PROMPT), Message("user", "What is the capital of Australia?")]
    first = make_trace(lm, history, GREEDY)
    history += [Message("assistant", first.text), Message("user", "What is its population?")]
    return make_trace(lm, history, GREEDY)


def test_the_decisive_fork_is_among_the_closest_calls(lm, follow_up):
    tok = lm.tokenizer
    fork = next(i for i, s in enumerate(follow_up.steps) if readable(tok, s.token_id) == "·capital")
    other = runner_up(follow_up.steps[fork])
    assert readable(tok, other[0]) == "·population" and other[1] > 0.2
    assert fork in uncertain_moments(follow_up, 3)  # it was missing when ranked by the chosen token


def test_a_reply_that_answers_the_earlier_question_is_called_so(lm, follow_up, greedy_trace):
    tok = lm.tokenizer
    found = answers_earlier_turn(tok, follow_up)
    assert found is not None
    assert found.current == "What is its population?" and "capital of Australia" in found.earlier
    assert found.current_words == ("population",)
    assert readable(tok, follow_up.steps[found.fork].token_id) == "·capital"
    text = summarize(tok, follow_up)
    assert "The reply uses none of the current question's words ('population')" in text
    assert f"at step {found.fork + 1} it chose '·capital'" in text
    assert "So it follows the earlier question ('What is the capital of Australia?')" in text
    # "And of Italy?" answered with Rome repeats "capital" from the first question, rightly
    assert "Italy" in greedy_trace.text
    assert answers_earlier_turn(tok, greedy_trace) is None
    assert "earlier question" not in summarize(tok, greedy_trace)


def test_empty_reply(lm, greedy_trace):
    trace = copy.deepcopy(greedy_trace)
    trace.steps = []
    assert "nothing" in summarize(lm.tokenizer, trace)


def test_percent_never_reads_zero():
    assert (percent(0.38), percent(0.004), percent(0.00001)) == ("38%", "0.4%", "<0.1%")
    assert (chance(0.38), chance(0.0002), chance(0.0000123)) == ("38%", "0.020%", "0.0012%")


def test_the_turn_view_says_how_much_attention_went_to_the_current_question(lm, follow_up):
    from streamlit.testing.v1 import AppTest

    from core.explain import attention as att
    from tests.conftest import APP

    history = [
        Message("system", DEFAULT_SYSTEM_PROMPT),
        Message("user", "What is the capital of Australia?"),
        Message("assistant", "(the first reply)"),
        Message("user", "What is its population?"),
        Message("assistant", follow_up.text, trace=follow_up),
    ]
    shares = att.turn_shares(att.overview(lm, follow_up))
    assert list(shares) == att.CATEGORIES and sum(shares.values()) == pytest.approx(1.0, abs=1e-5)
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state["chat.messages"] = history
    at.run()
    at.switch_page("pages/attention.py")
    at.query_params["reply"] = follow_up.trace_id
    at.query_params["view"] = "turns"
    at.run()
    assert not at.exception
    (said,) = [w.value for w in at.warning if "current question" in w.value]
    assert "So it follows the earlier question" in said
    assert f"put {shares['Current question']:.0%} on the current question" in said
    assert f"{shares['Earlier turns']:.0%} on earlier turns" in said


def test_the_explain_panel_links_an_earlier_turn_reply_to_the_turn_view(lm, follow_up):
    from streamlit.testing.v1 import AppTest

    from tests.conftest import APP

    reply = Message("assistant", follow_up.text, trace=follow_up)
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state["chat.messages"] = [
        Message("system", DEFAULT_SYSTEM_PROMPT),
        Message("user", "What is the capital of Australia?"),
        Message("assistant", "(the first reply)"),
        Message("user", "What is its population?"),
        reply,
    ]
    at.run()
    at.toggle(key=f"explain.toggle.{reply.id}").set_value(True).run()
    assert not at.exception
    (turns,) = [e.proto for e in at.get("page_link") if "Turn view" in e.proto.label]
    assert "attention" in turns.page and "view=turns" in turns.query_string
