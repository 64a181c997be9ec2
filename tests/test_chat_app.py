"""The chat page driven by streamlit's AppTest, with the real model."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import APP


@pytest.fixture()
def app(lm) -> AppTest:  # lm: the model is loaded (and cached) before the first run
    at = AppTest.from_file(APP, default_timeout=180)
    at.session_state["chat.temperature"] = 0.0
    at.session_state["chat.max_new_tokens"] = 24
    return at.run()


def _texts(at: AppTest) -> list[tuple[str, str]]:
    return [(m.name, " ".join(md.value for md in m.markdown)) for m in at.chat_message]


def test_empty_chat_offers_example_prompts(app):
    assert not app.exception
    labels = [b.label for b in app.button]
    assert "What is the capital of Australia?" in labels
    app.button(key="chat.example.What is the capital of Australia?").click().run()
    assert not app.exception
    roles = [name for name, _ in _texts(app)]
    assert roles == ["user", "assistant"] and _texts(app)[1][1].strip()


def test_send_regenerate_and_clear(app):
    app.chat_input[0].set_value("What is the capital of France?").run()
    assert not app.exception
    (user, q), (bot, reply) = _texts(app)
    assert (user, bot) == ("user", "assistant") and "Paris" in reply
    history = app.session_state["chat.messages"]
    first = history[-1]
    assert first.trace is not None and first.trace.steps and first.content == first.trace.text

    app.button(key="chat.regenerate").click().run()
    assert not app.exception
    history = app.session_state["chat.messages"]
    assert len(history) == 3 and history[-1] is not first
    assert history[-1].alternatives[0] is first  # the earlier take is kept, not lost
    assert history[-1].trace.settings.seed == first.trace.settings.seed + 1

    app.button(key="chat.clear").click().run()
    assert not app.exception
    assert _texts(app) == [] and len(app.session_state["chat.messages"]) == 1


def test_whitespace_only_messages_are_ignored(app):
    app.chat_input[0].set_value("   \n\t ").run()
    assert not app.exception
    assert _texts(app) == []
    assert len(app.session_state["chat.messages"]) == 1


def test_sidebar_settings_reach_the_trace(app):
    app.session_state["chat.seed"] = 42
    app.session_state["chat.max_new_tokens"] = 8
    app.chat_input[0].set_value("Count to twenty.").run()
    trace = app.session_state["chat.messages"][-1].trace
    assert (
        trace.settings.seed == 42 and trace.settings.max_new_tokens == 8 and trace.settings.temperature == 0
    )
    assert len(trace.steps) <= 8


def test_export_is_offered_in_the_run_that_wrote_the_first_reply(app):
    (download,) = app.get("download_button")
    assert download.proto.disabled  # nothing to export yet
    app.chat_input[0].set_value("Say hello.").run()
    assert not app.exception
    (download,) = app.get("download_button")
    assert not download.proto.disabled


def test_settings_prompt_and_toggles_survive_a_visit_to_another_page(lm):
    # Every value is set through its widget, as a user does (not through at.session_state).
    app = AppTest.from_file(APP, default_timeout=180).run()
    app.slider(key="chat.max_new_tokens").set_value(16).run()
    app.slider(key="chat.temperature").set_value(1.3).run()
    app.text_area(key="chat.system_prompt").set_value("You are a pirate.").run()
    app.chat_input[0].set_value("Hello!").run()
    reply = app.session_state["chat.messages"][-1]
    app.toggle(key=f"explain.toggle.{reply.id}").set_value(True).run()
    app.switch_page("pages/tokens.py").run()
    assert not app.exception
    app.switch_page("pages/chat.py").run()
    assert not app.exception
    assert app.slider(key="chat.temperature").value == 1.3
    assert app.slider(key="chat.max_new_tokens").value == 16
    assert app.text_area(key="chat.system_prompt").value == "You are a pirate."
    assert app.session_state["chat.messages"][0].content == "You are a pirate."
    assert app.toggle(key=f"explain.toggle.{reply.id}").value


def test_a_failed_background_load_is_a_message_on_explanation_pages_not_a_traceback(lm, monkeypatch):
    from core import models
    from pages import common

    def broken(folder, lean):
        raise OSError("disk went away")

    monkeypatch.setattr(models, "_model_sharing", broken)
    monkeypatch.setattr(models, "_forget_cache_on_failure", lambda done, folder: None)  # keep the user cache
    common._chat_model.clear()
    common._READY.clear()
    try:
        app = AppTest.from_file(APP, default_timeout=180)
        app.session_state["chat.max_new_tokens"] = 8
        app.run()
        app.chat_input[0].set_value("Hi").run()
        assert not app.exception and app.session_state["chat.messages"][-1].trace  # the chat works
        app.switch_page("pages/candidates.py").run()
        assert not app.exception
        assert any("could not be loaded" in e.value and "disk went away" in e.value for e in app.error)
        assert any(b.label == "Load the model again" for b in app.button)
    finally:
        common._chat_model.clear()  # later tests load the model normally again
        common._READY.clear()


def test_a_conversation_imported_on_another_page_keeps_its_system_prompt(lm):
    import dataclasses

    from core.export import conversation_json

    app = AppTest.from_file(APP, default_timeout=180)
    app.session_state["chat.max_new_tokens"] = 8
    app.run()
    app.chat_input[0].set_value("Hello!").run()
    history = app.session_state["chat.messages"]
    saved = [dataclasses.replace(history[0], content="You are a pirate."), *history[1:]]
    data = conversation_json(saved, lm.name).encode()

    app.switch_page("pages/candidates.py").run()
    app.file_uploader(key="transfer.upload").set_value(("chat.json", data, "application/json")).run()
    assert not app.exception
    app.switch_page("pages/chat.py").run()
    assert not app.exception
    assert app.text_area(key="chat.system_prompt").value == "You are a pirate."
    assert app.session_state["chat.messages"][0].content == "You are a pirate."
