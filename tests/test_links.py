"""Links that open the exact view (pages/links.py), and issue 18: one meaning of "step s".

The helper is driven through a tiny AppTest script; the pages through the real app after a
real greedy reply.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import APP


def _param(at: AppTest, name: str) -> str | None:
    value = at.query_params.get(name)
    return value[-1] if isinstance(value, list) else value


def _link_text(at: AppTest) -> str:
    """The address in the page's "Copy link to this view" box."""
    (code,) = at.get("code")
    return code.proto.code_text


# -- the helper on its own -------------------------------------------------------------------


def _demo() -> None:
    import streamlit as st

    from pages import links

    links.url_value("n", "demo.n", int, range(10).__contains__)
    st.session_state.setdefault("demo.n", 0)
    n = st.selectbox("n", range(10), key="demo.n")
    links.set_url(n=n)
    links.copy_link()


@pytest.fixture()
def demo() -> AppTest:
    return AppTest.from_function(_demo, default_timeout=30)


def test_without_a_parameter_the_default_shows_and_the_url_names_it(demo):
    demo.run()
    assert not demo.exception
    assert demo.selectbox[0].value == 0
    assert _param(demo, "n") == "0"


def test_a_link_wins_once_then_the_widget_is_the_readers(demo):
    demo.query_params["n"] = "4"
    demo.run()
    assert demo.selectbox[0].value == 4
    demo.selectbox[0].set_value(6).run()
    assert demo.selectbox[0].value == 6  # the URL's 4 is not applied again
    assert _param(demo, "n") == "6"
    demo.run()
    assert demo.selectbox[0].value == 6
    demo.query_params["n"] = "2"  # an edited URL: a new value wins, once
    demo.run()
    assert demo.selectbox[0].value == 2


@pytest.mark.parametrize("bad", ["12", "-1", "abc", ""])
def test_values_that_are_not_options_are_ignored(demo, bad):
    demo.run()
    demo.selectbox[0].set_value(3).run()
    demo.query_params["n"] = bad
    demo.run()
    assert not demo.exception
    assert demo.selectbox[0].value == 3
    assert _param(demo, "n") == "3"  # written back over the bad value


def test_unknown_parameters_stay_in_the_url_and_in_the_copy_link(demo):
    demo.query_params["c"] = "AbCdEfGhIjKlMnOpQrStUv"  # the conversation id app.py adds
    demo.query_params["n"] = "5"
    demo.run()
    assert _param(demo, "c") == "AbCdEfGhIjKlMnOpQrStUv"
    assert dict(parse_qsl(_link_text(demo).split("?", 1)[1])) == {"c": "AbCdEfGhIjKlMnOpQrStUv", "n": "5"}
    demo.selectbox[0].set_value(1).run()
    assert dict(parse_qsl(_link_text(demo).split("?", 1)[1])) == {"c": "AbCdEfGhIjKlMnOpQrStUv", "n": "1"}


# -- the app ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chatted(lm) -> AppTest:
    """The app after one real greedy reply."""
    at = AppTest.from_file(APP, default_timeout=240)
    at.session_state["chat.temperature"] = 0.0
    at.session_state["chat.max_new_tokens"] = 12
    at.run()
    at.chat_input[0].set_value("What is the capital of Australia?").run()
    assert not at.exception
    return at


def _trace(at: AppTest):
    return at.session_state["chat.messages"][-1].trace


def _open(at: AppTest, page: str, **params: object) -> AppTest:
    """Open a page with exactly these URL parameters, as a link would (plus the conversation's
    id `c`, when the app keeps one: a link never drops it, and an unknown id starts afresh)."""
    conversation = _param(at, "c")
    at.switch_page(page)
    at.query_params.clear()
    if conversation is not None:
        at.query_params["c"] = conversation
    for name, value in params.items():
        at.query_params[name] = str(value)
    at.run()
    assert not at.exception
    return at


def _page_link(at: AppTest, page: str) -> dict[str, str]:
    """The URL parameters of the page link on this page that leads to `page` (c left out)."""
    (link,) = [p.proto for p in at.get("page_link") if p.proto.page == page]
    params = dict(parse_qsl(link.query_string))
    assert params.pop("c", None) == _param(at, "c")  # the conversation id rides along
    return params


def _positions(at: AppTest, css: str) -> list[int]:
    """The positions (from the hover titles) of every chip with this class."""
    markup = "".join(h.proto.body for h in at.get("html"))
    return [int(p) for p in re.findall(rf'class="gb-chip {css}"[^>]*title="position (\d+)', markup)]


@pytest.mark.parametrize("step", [0, 3])
def test_the_walkthroughs_attention_link_opens_the_row_it_used(lm, chatted, step):
    """Issue 18, finding 1: the row the walkthrough uses for step s is the row the attention
    page shows when opened by the walkthrough's link: position P + s - 1, which chose token s."""
    at = chatted
    trace = _trace(at)
    P = len(trace.prompt_ids)
    _open(at, "pages/walkthrough.py", reply=trace.trace_id, step=step)
    used = set(_positions(at, "marked"))  # the current position, outlined in stages 1 and 5
    assert used == {P + step - 1}
    walked = at.dataframe[1].value  # stage 5: the 8 most attended positions (all layers, averaged)
    params = _page_link(at, "attention")
    assert params["step"] == str(step) and params["reply"] == trace.trace_id

    _open(at, "pages/attention.py", **params)
    assert at.segmented_control(key="attention.view").value == "Per-token view"
    assert at.select_slider(key="attention.step").value == step
    assert _positions(at, "chosen") == [P + step - 1]  # the outlined, looking token
    shown = at.dataframe[0].value.set_index("position")["weight"]  # the page's top 10
    for position, weight in walked.set_index("position")["weight"].items():
        if position in shown.index:
            assert shown[position] == pytest.approx(weight, abs=1e-4)
    assert walked["position"].iloc[0] in shown.index  # and the walkthrough's favourite is among them
    page_text = " ".join(h.proto.body for h in at.get("html"))
    labels = [lm.tokenizer.decode([i]) for i in trace.full_ids[P + step - 1 : P + step + 1]]
    assert "the attention of" in page_text and "→ chose" in page_text
    assert all(label.strip() == "" or label.strip() in page_text for label in labels)


def test_a_link_back_to_a_page_opens_what_it_names_after_a_visit_elsewhere(chatted):
    """A page switch drops the widgets' state; a link to the same step as before still opens it."""
    at = chatted
    trace = _trace(at)
    _open(at, "pages/candidates.py", reply=trace.trace_id, step=3)
    assert at.select_slider(key="candidates.step").value == 3
    _open(at, "pages/chat.py")
    _open(at, "pages/candidates.py", reply=trace.trace_id, step=3)
    assert at.select_slider(key="candidates.step").value == 3
    assert _page_link(at, "walkthrough") == {"reply": trace.trace_id, "step": "3"}
    assert _page_link(at, "attention") == {"reply": trace.trace_id, "step": "3", "view": "token"}


@pytest.mark.parametrize(
    ("page", "params"),
    [
        ("pages/candidates.py", {"step": "2"}),
        ("pages/walkthrough.py", {"step": "2"}),
        ("pages/attention.py", {"layer": "4", "head": "1", "view": "head"}),
        ("pages/tokens.py", {"source": "reply", "view": "counts"}),
        ("pages/embeddings.py", {"view": "tokens"}),
    ],
)
def test_every_explanation_page_has_a_copy_link_to_exactly_this_view(chatted, page, params):
    at = chatted
    trace = _trace(at)
    _open(at, page, reply=trace.trace_id, keep="me", **params)
    assert any(p.proto.popover.label == "Copy link to this view" for p in at.get("popover"))
    link = dict(parse_qsl(_link_text(at).split("?", 1)[1]))
    assert link["keep"] == "me"  # a parameter no page knows is kept ...
    assert link.get("c") == _param(at, "c")  # ... and so is the conversation id
    assert link["reply"] == trace.trace_id
    assert params.items() <= link.items()  # the page took the URL's view and names it back
    assert not at.warning  # no "value set via Session State and a default" warning
