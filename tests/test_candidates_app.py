"""Explain mode and the candidates page driven by AppTest, with the real model."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import APP


@pytest.fixture()
def app(lm) -> AppTest:  # lm: the model is loaded (and cached) before the first run
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state["chat.temperature"] = 0.0
    at.session_state["chat.max_new_tokens"] = 16
    return at.run()


def _html(at: AppTest) -> str:
    return "".join(e.proto.body for e in at.get("html"))


def test_explain_then_candidates_then_branch(app):
    app.chat_input[0].set_value("What is the capital of France?").run()
    assert not app.exception
    reply = app.session_state["chat.messages"][-1]
    trace_id, before = reply.trace.trace_id, reply.trace.to_json()

    # Explain on: chips, summary and the uncertain-moment links appear
    assert not _html(app)
    app.toggle(key=f"explain.toggle.{reply.id}").set_value(True).run()
    assert not app.exception
    markup = _html(app)
    assert markup.count('class="gb-chip') >= len(reply.trace.steps)
    assert "over 90% sure of" in markup and "hardest choice" in markup
    links = [e.proto for e in app.get("page_link")]
    uncertain = [p for p in links if p.label.startswith("Step ")]
    assert len(uncertain) == 3 and all("candidates" in p.page for p in uncertain)

    # the candidates page for that reply at step 2
    app.switch_page("pages/candidates.py")
    app.query_params["reply"] = trace_id
    app.query_params["step"] = "2"
    app.run()
    assert not app.exception
    assert app.select_slider(key="candidates.step").value == 2  # ?step= is the 0-based index
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Rank"] == "1" and metrics["Probability"].endswith("%")
    assert len(app.get("vega_lite_chart")) >= 3

    # branch at step 2 with the first other candidate
    app.button(key="candidates.branch").click().run()
    assert not app.exception
    history = app.session_state["chat.messages"]
    original = history[-1]
    assert original.trace.trace_id == trace_id and original.trace.to_json() == before
    assert len(original.alternatives) == 1
    branch = original.alternatives[0].trace
    assert branch.branch_of == trace_id and branch.branch_step == 2
    assert branch.output_ids[:2] == original.trace.output_ids[:2]
    assert branch.output_ids[2] != original.trace.output_ids[2]
    assert "diverge at step 3" in " ".join(m.value for m in app.markdown)


def test_after_a_branch_the_picker_shows_the_reply_it_names(app):
    for question in ("What is the capital of France?", "Name a colour."):
        app.chat_input[0].set_value(question).run()
    first, second = (m for m in app.session_state["chat.messages"] if m.role == "assistant")
    app.switch_page("pages/candidates.py")
    app.query_params["reply"] = first.trace.trace_id
    app.query_params["step"] = "1"
    app.run()
    app.button(key="candidates.branch").click().run()  # adds "Reply 1 (alternative 1)" mid-list
    assert not app.exception and len(first.alternatives) == 1
    picker = app.selectbox(key="candidates.reply")
    assert picker.value == first.trace.trace_id
    picker.set_value(second.trace.trace_id).run()
    assert not app.exception
    assert app.selectbox(key="candidates.reply").value == second.trace.trace_id
    steps = app.select_slider(key="candidates.step").options
    assert len(steps) == len(second.trace.steps)  # the page shows the reply the picker names
    assert not any("is a branch" in e.value for e in app.info)


def test_what_if_repetition_penalty_starts_at_the_reply_setting_and_recomputes(app):
    app.session_state["chat.repetition_penalty"] = 1.3
    app.chat_input[0].set_value("Say hello hello hello.").run()
    reply = app.session_state["chat.messages"][-1]
    assert reply.trace.settings.repetition_penalty == pytest.approx(1.3)
    app.switch_page("pages/candidates.py")
    app.query_params["reply"] = reply.trace.trace_id
    app.query_params["step"] = "1"
    app.run()
    assert not app.exception
    slider = app.slider(key="candidates.whatif_rp")
    assert slider.value == pytest.approx(1.3)  # what the sampler really used
    slider.set_value(2.0).run()
    assert not app.exception
    specs = " ".join(e.proto.spec for e in app.get("vega_lite_chart"))
    assert "penalty=2" in specs


def test_a_what_if_take_at_another_temperature_is_compared_side_by_side(app):
    app.chat_input[0].set_value("Write a sentence about the sea.").run()
    reply = app.session_state["chat.messages"][-1]
    app.switch_page("pages/candidates.py")
    app.query_params["reply"] = reply.trace.trace_id
    app.run()
    assert not app.exception
    app.slider(key="candidates.retake_temperature").set_value(1.8).run()
    app.button(key="candidates.retake").click().run()
    assert not app.exception
    take = reply.alternatives[-1].trace
    assert take.settings.temperature == 1.8 and reply.trace.settings.temperature == 0.0
    assert take.settings.seed == reply.trace.settings.seed and take.prompt_ids == reply.trace.prompt_ids
    assert any("temperature 1.8" in n for n in take.notices)
    assert app.selectbox(key="candidates.compare").value == take.trace_id
    at = next(i for i, (a, b) in enumerate(zip(reply.trace.output_ids, take.output_ids)) if a != b)
    text = " ".join(m.value for m in app.markdown)
    assert f"they diverge at step {at + 1}" in text
    markup = _html(app)
    # aligned at the divergence: each column starts at that step, the first chip outlined, with its probability
    assert markup.count('class="gb-chip marked') >= 2
    assert f"step {at + 1}:" in markup and "%</span>" in markup
    why = [e.proto for e in app.get("page_link") if "why" in e.proto.page and "rather than" in e.proto.label]
    rival = take.output_ids[at]
    offered = rival in reply.trace.steps[at].top_ids[:10]  # the why page offers the top 10 as rivals
    assert len(why) == int(offered)
    if offered:
        assert f"step={at}" in why[0].query_string and f"rival={rival}" in why[0].query_string


def test_an_earlier_take_of_a_regenerated_reply_can_be_compared(app):
    app.chat_input[0].set_value("Name a fruit.").run()
    app.session_state["chat.temperature"] = 1.0
    app.run()
    app.button(key="chat.regenerate").click().run()
    latest = app.session_state["chat.messages"][-1]
    assert len(latest.alternatives) == 1
    app.switch_page("pages/candidates.py")
    app.query_params["reply"] = latest.trace.trace_id
    app.run()
    assert not app.exception
    compare = app.selectbox(key="candidates.compare")
    assert compare.value == latest.alternatives[0].trace.trace_id
    assert "Take at temperature 0" in compare.options[0] or "Take with seed" in compare.options[0]
