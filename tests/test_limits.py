"""core/limits.py, and the chat page's limits on a public deployment (AppTest, the real model)."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from core.limits import Activity, RateLimiter, limits_from, on_community_cloud, wait_message
from pages import common
from tests.conftest import APP


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_rate_limiter_counts_a_sliding_minute_and_says_how_long_to_wait():
    clock = Clock()
    meter = RateLimiter(clock=clock)
    assert meter.wait_for("a", "written", 100, cap=150) == 0
    meter.charge("a", "written", 100)
    clock.now += 20
    meter.charge("a", "written", 40)
    assert meter.used("a", "written") == 140
    assert meter.wait_for("a", "written", 10, cap=150) == 0  # 150 fits exactly
    assert meter.wait_for("a", "written", 11, cap=150) == 40  # the first 100 leave in 40 s
    assert meter.wait_for("b", "written", 11, cap=150) == 0  # another session is not charged
    assert meter.wait_for("a", "read", 11, cap=150) == 0  # nor another kind
    clock.now += 40
    assert meter.used("a", "written") == 40 and meter.wait_for("a", "written", 110, cap=150) == 0
    assert (
        meter.wait_for("a", "written", 10_000, cap=150) == 20
    )  # more than the cap: once the window is empty
    meter.forget("a")
    assert meter.used("a", "written") == 0


def test_one_of_each_kind_at_a_time_per_session():
    running = Activity()
    assert (
        running.begin("s1", "generation")
        and running.begin("s1", "pass")
        and running.begin("s2", "generation")
    )
    assert not running.begin("s1", "generation")
    running.end("s1", "generation")
    assert running.begin("s1", "generation")


def test_public_mode_is_off_locally_on_on_community_cloud_and_settable():
    none = {}.get
    assert limits_from(none, Path("/work/main")).public is False
    assert (
        on_community_cloud(Path("/mount/src/glassbox-chat"))
        and limits_from(none, Path("/mount/src/x")).public
    )
    assert limits_from({"GLASSBOX_PUBLIC": "0"}.get, Path("/mount/src/x")).public is False
    settings = {
        "GLASSBOX_PUBLIC": "on",
        "GLASSBOX_TOKENS_PER_MINUTE": "300",
        "GLASSBOX_PROMPT_TOKENS_PER_MINUTE": "bad",
    }
    limits = limits_from(settings.get, Path("/home/me/app"))
    assert limits.public and limits.tokens_per_minute == 300 and limits.prompt_tokens_per_minute == 20_000
    assert wait_message("write", 1500, 22.6) == (
        "This app is shared, so each visitor may have the model write 1,500 tokens a minute. Try again in 23 s."
    )


def test_the_chat_refuses_a_reply_over_the_limit_with_the_wait_and_keeps_the_message(lm, monkeypatch):
    monkeypatch.setenv("GLASSBOX_PUBLIC", "1")
    monkeypatch.setenv("GLASSBOX_TOKENS_PER_MINUTE", "20")
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state["chat.temperature"] = 0.0
    at.session_state["chat.max_new_tokens"] = 16
    at.run()
    assert "Shared app: each visitor may have the model write 20 tokens" in " ".join(
        c.value for c in at.caption
    )
    at.chat_input[0].set_value("Name a fruit.").run()
    assert not at.exception and not at.warning
    assert at.session_state["chat.messages"][-1].role == "assistant"
    at.chat_input[0].set_value("Name a colour.").run()
    assert not at.exception
    (said,) = [w.value for w in at.warning]
    assert "may have the model write 20 tokens a minute. Try again in" in said
    assert [m.content for m in at.session_state["chat.messages"]][-1] == "Name a colour."  # kept, not lost
    meter, _ = common._meters()
    meter.forget()  # as if the minute had passed
    at.button(key="chat.retry").click().run()
    assert not at.exception and not at.warning
    assert at.session_state["chat.messages"][-1].role == "assistant"
