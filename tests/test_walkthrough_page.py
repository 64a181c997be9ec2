"""The walkthrough page driven by AppTest: a real reply, walked through stages 1-9."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from core.runner import runner_for
from core.tokens import readable
from tests.conftest import APP

PAGE = "pages/walkthrough.py"
STAGES = [
    "1. Text → tokens",
    "2. Tokens → ids → vectors",
    "3. Position",
    "4. Through the layers",
    "5. Attention at this step",
    "6. Final vector → logits",
    "7. Logits → probabilities",
    "8. Choose",
    "9. Repeat",
]


@pytest.fixture(scope="module")
def chatted(lm) -> AppTest:
    """The app after one real greedy reply on the chat page."""
    at = AppTest.from_file(APP, default_timeout=180)
    at.session_state["chat.temperature"] = 0.0
    at.session_state["chat.max_new_tokens"] = 12
    at.run()
    at.chat_input[0].set_value("What is the capital of France?").run()
    assert not at.exception
    return at


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_walks_all_nine_stages_of_a_real_reply(lm, chatted):
    at = chatted
    trace = at.session_state["chat.messages"][-1].trace
    assert len(trace.steps) >= 3
    at.switch_page(PAGE).run()
    assert not at.exception
    headers = [h.value for h in at.subheader]
    assert headers[:9] == STAGES
    assert "Decoder-only versus encoder-decoder" in headers and "Further reading" in headers

    for step in range(3):
        metrics = _metrics(at)
        context_last = (trace.prompt_ids + trace.output_ids)[len(trace.prompt_ids) + step - 1]
        assert metrics["Its id"] == str(context_last)  # stage 2: the last context token
        assert metrics["Chosen token"] == readable(lm.tokenizer, trace.steps[step].token_id)  # stage 8
        assert metrics["Rank"] == str(trace.steps[step].rank)
        assert at.query_params["step"] in ([str(step)], str(step))
        html = " ".join(h.proto.body for h in at.get("html"))
        assert "gb-chip" in html and 'class="gb-chip marked"' in html  # the current position
        assert len(at.get("image")) == 1  # the architecture diagram (inline SVG)
        at.button(key="walkthrough.next").click().run()
        assert not at.exception

    at.slider(key="walkthrough.temperature").set_value(1.5).run()
    assert not at.exception
    assert any("At temperature 1.5," in c.value for c in at.caption)
    at.selectbox(key="walkthrough.layer").set_value(4).run()
    assert not at.exception


def test_step_query_param_preselects_the_step(lm, chatted):
    at = chatted
    trace = at.session_state["chat.messages"][-1].trace
    at.switch_page(PAGE)
    at.query_params["reply"] = trace.trace_id
    at.query_params["step"] = "2"
    at.run()
    assert not at.exception
    assert at.session_state["walkthrough.step"] == 2
    assert _metrics(at)["Chosen token"] == readable(lm.tokenizer, trace.steps[2].token_id)


def test_without_a_reply_the_page_says_what_to_do(lm):
    at = AppTest.from_file(APP, default_timeout=180).run()
    at.switch_page(PAGE).run()
    assert not at.exception
    assert any("no reply to explain" in i.value for i in at.info)


def test_about_page_names_the_model_and_links_the_pages(lm):
    at = AppTest.from_file(APP, default_timeout=180).run()
    at.switch_page("pages/about.py").run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Model"] == lm.name
    assert metrics["Parameters (millions)"] == f"{lm.n_params / 1e6:.0f}"
    # units in the labels, short values: a long one is cut with "…" in a narrow column ("49,152 to…")
    assert metrics["Vocabulary (tokens)"] == f"{runner_for(lm).facts.vocab_size:,}"
    assert any("locally on this computer's CPU" in m.value for m in at.markdown)
    assert {"chat", "walkthrough"} <= {link.proto.page for link in at.get("page_link")}
