"""core/fairlock.py and the passes that share the model through it (core/runner.py)."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from core.fairlock import CHAT, PASS, FairLock
from core.generation import generate, new_trace
from core.runner import reporting, runner_for
from core.settings import SamplingSettings


def _start(target) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def _until(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_lock_like_threading_lock():
    lock = FairLock()
    assert lock.acquire() and lock.locked()
    assert not lock.acquire(blocking=False)
    t0 = time.monotonic()
    assert not lock.acquire(timeout=0.05) and time.monotonic() - t0 >= 0.05
    assert lock.waiting() == 0  # a waiter that timed out leaves the queue
    lock.release()
    assert not lock.locked()
    with lock:
        assert lock.locked()
    with pytest.raises(RuntimeError):
        lock.release()


def test_chats_go_before_passes_and_each_kind_in_arrival_order():
    lock, order = FairLock(), []
    lock.acquire()

    def waiter(name: str, kind: int) -> None:
        lock.acquire(kind=kind)
        order.append(name)
        lock.release()

    threads = []
    for name, kind in [("pass 1", PASS), ("chat 1", CHAT), ("pass 2", PASS), ("chat 2", CHAT)]:
        threads.append(_start(lambda n=name, k=kind: waiter(n, k)))
        queued = len(threads)
        _until(lambda n=queued: lock.waiting() == n)
    lock.release()
    for t in threads:
        t.join(5)
    assert order == ["chat 1", "chat 2", "pass 1", "pass 2"]


def test_yield_turn_hands_over_only_to_who_may_go_first():
    lock = FairLock()
    lock.acquire(kind=CHAT)
    assert lock.yield_turn() is False  # nobody waits
    ran = []
    passing = _start(lambda: (lock.acquire(kind=PASS), ran.append("pass"), lock.release()))
    _until(lambda: lock.waiting() == 1)
    assert lock.yield_turn() is False and not ran  # a chat does not stop for a pass
    chatting = _start(lambda: (lock.acquire(kind=CHAT), ran.append("chat"), lock.release()))
    _until(lambda: lock.waiting() == 2)
    assert lock.yield_turn() is True  # the other chat had its turn; the pass still waits for us
    assert ran == ["chat"] and lock.locked()
    lock.release()
    passing.join(5)
    chatting.join(5)
    assert ran == ["chat", "pass"]


def test_a_long_pass_lets_a_waiting_chat_in_between_two_layers_and_reports_progress(lm):
    """A chat reply started while a hidden-states pass runs is written between two of the pass's
    layers, not after its end, and the pass's numbers are exactly those of an undisturbed pass."""
    runner = runner_for(lm)
    ids = lm.tokenizer("The quick brown fox jumps over the lazy dog. " * 60)["input_ids"]
    alone = runner.hidden_states(ids)
    said: list[tuple[float, str]] = []
    steps_at: list[int] = []
    threads: list[threading.Thread] = []
    reply = new_trace(
        lm, lm.tokenizer("Hi")["input_ids"], [], SamplingSettings(temperature=0, max_new_tokens=4)
    )

    def on_layer(done: float, words: str) -> None:
        said.append((done, words))
        steps_at.append(len(reply.steps))
        if len(said) == 4:  # the chat arrives while the pass runs; wait until it queues
            threads.append(_start(lambda: generate(lm, reply)))
            _until(lambda: lm.lock.waiting() == 1)

    with reporting(on_layer):
        shared = runner.hidden_states(ids)
    threads[0].join(30)
    n, T = runner.facts.n_layers, len(ids)
    assert said[0] == (0.0, f"layer 1 of {n}, tokens 1–512 of {T:,}")  # a long input runs in blocks
    assert said[n][1].startswith(f"layer 1 of {n}, tokens 513–")
    assert [d for d, _ in said] == sorted(d for d, _ in said) and said[-1][0] < 1.0
    # the whole reply was written between two layers of the pass, not after its end
    assert steps_at[3] == 0 and steps_at[4] == len(reply.steps) > 0
    assert reply.finish_reason in ("length", "eos")
    assert torch.equal(shared, alone)
    assert not lm.lock.locked()


def test_blocks_give_the_numbers_of_one_whole_pass(lm):
    runner = runner_for(lm)
    ids = lm.tokenizer("Paris is the capital of France, and Rome is the capital of Italy. " * 50)["input_ids"]
    assert len(ids) > 600
    with lm.lock, torch.inference_mode():
        whole = lm.model(input_ids=torch.tensor([ids]), output_hidden_states=True, use_cache=False)
    reference = torch.stack([h[0] for h in whole.hidden_states]).float()
    assert torch.allclose(runner.hidden_states(ids), reference, atol=1e-4, rtol=1e-4)
    rows = torch.tensor([0, 300, 511, 512, len(ids) - 1])
    eager = runner.eager_attention(ids)[5][:, rows]
    assert torch.allclose(runner.attention_rows(ids, 5, rows), eager, atol=1e-5)
    assert runner.attention_exact is True  # the self-check ran the blocks too


class MovedOn(BaseException):
    """Like Streamlit's StopException: a BaseException raised when the visitor moved on."""


def test_a_pass_stopped_by_its_progress_callback_releases_the_model(lm):
    runner = runner_for(lm)

    def stop(done: float, words: str) -> None:
        if words.startswith("layer 3 "):
            raise MovedOn

    with pytest.raises(MovedOn), reporting(stop):
        runner.attention_rows(lm.tokenizer("one two three four")["input_ids"], runner.facts.n_layers - 1, [1])
    assert not lm.lock.locked()
    assert lm.model.config._attn_implementation != "glassbox_rows"  # put back
    assert runner.attention_rows(lm.tokenizer("one two")["input_ids"], 0, [1]).shape[1] == 1  # still works


def test_a_pass_that_waited_too_long_goes_in_turn_with_the_chats():
    lock = FairLock(patience_s=0.2)
    lock.acquire(kind=CHAT)
    ran = []
    passing = _start(lambda: (lock.acquire(kind=PASS), ran.append("pass"), lock.release()))
    _until(lambda: lock.waiting() == 1)
    assert lock.yield_turn() is False  # a chat does not stop for a pass that just came
    time.sleep(0.25)
    assert lock.waiting(before=CHAT) == 1  # now it counts as a chat
    assert lock.yield_turn() is True and ran == ["pass"]
    lock.release()
    passing.join(5)


def test_a_chat_gets_the_model_during_an_attributions_backward_pass(lm):
    """Once the forward pass of a gradient is over, the next turn a waiting chat can get is
    between two layers of the backward pass, not after it."""
    runner = runner_for(lm)
    ids = lm.tokenizer("The quick brown fox jumps over the lazy dog. " * 60)["input_ids"]
    reply = new_trace(
        lm, lm.tokenizer("Hi")["input_ids"], [], SamplingSettings(temperature=0, max_new_tokens=4)
    )
    events: list[str] = []
    threads: list[threading.Thread] = []

    def after_the_forward(_module, _args, _out) -> None:  # the final norm: no forward layer is left
        threads.append(_start(lambda: (generate(lm, reply), events.append("chat"))))
        _until(lambda: lm.lock.waiting() == 1)

    handle = runner.final_norm().register_forward_hook(after_the_forward)
    try:
        runner.input_gradients(ids, ids[-1])
    finally:
        handle.remove()
    events.append("gradient")
    threads[0].join(30)
    assert events == ["chat", "gradient"] and reply.steps
    assert not lm.lock.locked()


def test_a_waiter_can_give_up_without_losing_its_place_before():
    lock = FairLock()
    lock.acquire()
    stop = threading.Event()
    got: list[bool] = []
    waiter = _start(lambda: got.append(lock.acquire(kind=CHAT, cancel=stop.is_set)))
    _until(lambda: lock.waiting() == 1)
    time.sleep(0.2)
    assert lock.waiting() == 1  # still in line after several ticks
    stop.set()
    waiter.join(5)
    assert got == [False] and lock.waiting() == 0
    lock.release()
