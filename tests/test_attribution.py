"""core/explain/attribution.py with the real model: completeness, contrast, faithfulness, the page."""

from __future__ import annotations

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from benchmarks.bench_attribution import QUESTIONS  # the same 10 prompts as the deletion curve
from core.conversation import Message
from core.explain import attribution as attr
from core.explain.attention import CATEGORIES
from core.explain.forward import context_ids
from core.settings import DEFAULT_SYSTEM_PROMPT, SamplingSettings
from core.tokens import readable, special_ids
from tests.conftest import APP, make_trace, make_traces

GREEDY = SamplingSettings(temperature=0, max_new_tokens=8)


@pytest.fixture(scope="module")
def paris(lm):
    history = [Message("system", DEFAULT_SYSTEM_PROMPT), Message("user", "What is the capital of France?")]
    trace = make_trace(lm, history, GREEDY)
    step = next(i for i, s in enumerate(trace.steps) if readable(lm.tokenizer, s.token_id) == "·Paris")
    return trace, step


def test_gradient_x_input_explains_the_logit_the_decode_loop_recorded(lm, paris):
    trace, step = paris
    result = attr.gradient_x_input(lm, trace, step)
    assert result.n == len(context_ids(trace, step)) and np.isfinite(result.scores).all()
    assert result.value == pytest.approx(
        trace.steps[step].top_logits[0], abs=1e-3
    )  # the chosen token's logit
    top = attr.top_tokens(lm.tokenizer, trace, result)
    assert len(top) == 15 and top["share"].between(0, 1).all()
    assert {"·capital", "·France"} <= set(top["token"])  # the words a learner expects to matter
    shares = attr.category_shares(lm.tokenizer, trace, result)
    assert list(shares) == CATEGORIES and sum(shares.values()) == pytest.approx(1.0)


@pytest.fixture(scope="module")
def paris_ig(lm, paris) -> tuple[attr.Attribution, list[tuple[int, int]]]:
    """Integrated gradients at 32 points on the Paris step (34 passes: computed once), and the
    progress it reported."""
    trace, step = paris
    seen: list[tuple[int, int]] = []
    result = attr.integrated_gradients(lm, trace, step, steps=32, on_chunk=lambda d, n: seen.append((d, n)))
    return result, seen


def test_integrated_gradients_report_how_far_they_miss_completeness(lm, paris, paris_ig):
    trace, step = paris
    result, seen = paris_ig
    assert seen[-1] == (34, 34) and len(seen) == 9  # 32 path points and both ends, 4 a pass
    ids = context_ids(trace, step)
    special = [i for i, t in enumerate(ids) if t in special_ids(lm.tokenizer)]
    assert special and not result.scores[special].any()  # the baseline keeps the template tokens
    assert result.value == pytest.approx(trace.steps[step].top_logits[0], abs=1e-3)
    change = result.value - result.baseline_value
    assert attr.completeness_gap(result) == pytest.approx(abs(result.scores.sum() - change) / abs(change))
    assert attr.completeness_gap(attr.gradient_x_input(lm, trace, step)) is None


@pytest.mark.xfail(
    strict=True,
    reason="issue 17's target, not met: this model's logit is too rough along the path for 32 points "
    "(on this step it dips from 16.4 to 0.9 and back between alpha 0.1 and 0.3; even 256 points miss "
    "the change 4-fold); bench_attribution measured gaps of 46% to 367x on 10 prompts",
)
def test_integrated_gradients_share_out_the_whole_logit_within_5_percent(paris_ig):
    assert attr.completeness_gap(paris_ig[0]) <= 0.05


def test_why_a_rather_than_a_is_nothing(lm, paris):
    trace, step = paris
    same = attr.gradient_x_input(lm, trace, step, contrast=trace.steps[step].token_id)
    assert same.value == 0.0 and not same.scores.any()
    rival = trace.steps[step].top_ids[1]
    versus = attr.gradient_x_input(lm, trace, step, contrast=rival)
    assert versus.value == pytest.approx(
        trace.steps[step].top_logits[0] - trace.steps[step].top_logits[1], abs=1e-3
    )


def test_rollout_is_a_distribution_over_the_context(lm, paris):
    trace, step = paris
    flow = attr.rollout(lm, trace, step).scores
    assert flow.shape == (len(context_ids(trace, step)),) and (flow >= 0).all()
    assert flow.sum() == pytest.approx(1.0, abs=1e-6)


def test_deleting_the_top_attributed_tokens_hurts_more_than_deleting_random_ones(lm):
    """Faithfulness on 10 real chat prompts: the deletion curve, attribution against random."""
    curves = []
    jobs = [([Message("system", DEFAULT_SYSTEM_PROMPT), Message("user", q)], GREEDY) for q in QUESTIONS]
    for trace in make_traces(lm, jobs):
        step = min(3, len(trace.steps) - 1)
        curves.append(attr.deletion_curve(lm, trace, step, attr.gradient_x_input(lm, trace, step)))
    for k in (1, 3, 5):
        ours, chance = np.mean([c[k][0] for c in curves]), np.mean([c[k][1] for c in curves])
        assert ours > chance, (k, ours, chance)


def test_the_page_shows_the_heat_text_the_top_tokens_and_the_turn_shares(lm, paris):
    trace, step = paris
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state["chat.messages"] = [
        Message("system", DEFAULT_SYSTEM_PROMPT),
        Message("user", "What is the capital of France?"),
        Message("assistant", trace.text, trace=trace),
    ]
    at.run()
    at.switch_page("pages/why.py")
    at.query_params["reply"] = trace.trace_id
    at.query_params["step"] = str(step)
    at.run()
    assert not at.exception
    html = "".join(e.proto.body for e in at.get("html"))
    assert html.count('class="gb-chip') >= len(context_ids(trace, step)) and "pushed towards it" in html
    assert any(
        "By gradient × input:" in m.value and "% from the current question" in m.value for m in at.markdown
    )
    assert len(at.dataframe) == 2
    at.radio(key="why.method").set_value("integrated").run()
    assert not at.exception
    assert any("(completeness)" in e.value for e in [*at.caption, *at.warning])
