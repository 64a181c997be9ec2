"""Shared fixtures. Tests use the real model; the converted cache makes it load in about a second."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.conversation import Message, build_prompt
from core.generation import generate, new_trace
from core.models import LoadedModel, load_chat_model
from core.settings import SamplingSettings
from core.trace import Trace

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")


@pytest.fixture(scope="session")
def lm() -> LoadedModel:
    """The real SmolLM2-135M-Instruct, from the user cache (converted on first use)."""
    return load_chat_model()


def make_trace(lm: LoadedModel, messages: list[Message], settings: SamplingSettings | None = None) -> Trace:
    prompt = build_prompt(lm.tokenizer, messages, budget=2048, reserve=0)
    return generate(
        lm,
        new_trace(
            lm, prompt.ids, prompt.spans, settings or SamplingSettings(temperature=0, max_new_tokens=32)
        ),
    )


@pytest.fixture(scope="session")
def two_turn() -> list[Message]:
    return [
        Message("system", "You are a helpful assistant."),
        Message("user", "What is the capital of France?"),
        Message("assistant", "The capital of France is Paris."),
        Message("user", "And of Italy?"),
    ]


@pytest.fixture(scope="session")
def greedy_trace(lm: LoadedModel, two_turn: list[Message]) -> Trace:
    """A real greedy reply to a two-turn conversation (deterministic)."""
    return make_trace(lm, two_turn)
