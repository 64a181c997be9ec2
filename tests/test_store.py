"""The store against real databases: SQLite and PostgreSQL (db_url runs each test on both).

The traces are real replies of the real model, so what is saved is what the app saves.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from core.conversation import Message
from core.settings import SamplingSettings
from core.store import CHUNK, Store, StoreError, looks_like_id, owner_key
from core.trace import Trace
from core.tracepack import pack_steps, unpack_steps
from tests.conftest import make_trace

SETTINGS = {**SamplingSettings(temperature=0).to_dict(), "context_budget": 2048}


@pytest.fixture(scope="module")
def chat(lm) -> list[Message]:
    """A real two-turn chat; the second reply has an earlier take among its alternatives."""
    history = [
        Message("system", "You are a helpful assistant."),
        Message("user", "What is the capital of France?"),
    ]
    first = make_trace(lm, history, SamplingSettings(temperature=0, max_new_tokens=40))
    history.append(Message("assistant", first.text, trace=first))
    history.append(Message("user", "And of Italy?"))
    second = make_trace(lm, history, SamplingSettings(temperature=0.7, max_new_tokens=40, seed=3))
    earlier = make_trace(lm, history, SamplingSettings(temperature=0.7, max_new_tokens=20, seed=4))
    earlier.finish_reason = "stopped"
    reply = Message("assistant", second.text, trace=second)
    reply.alternatives = [Message("assistant", earlier.text, trace=earlier)]
    history.append(reply)
    return history


def same(a: list[Message], b: list[Message]) -> None:
    """Messages, takes and traces equal field by field (traces through their JSON form)."""
    assert [(m.id, m.role, m.content, m.notice) for m in a] == [
        (m.id, m.role, m.content, m.notice) for m in b
    ]
    for x, y in zip(a, b, strict=True):
        assert (x.trace is None) == (y.trace is None)
        if x.trace is not None:
            assert x.trace.to_dict() == y.trace.to_dict()
        same(x.alternatives, y.alternatives)


@pytest.fixture()
def store(db_url):
    s = Store(db_url)
    yield s
    s.dispose()


def test_a_conversation_round_trips_exactly(store, chat, lm):
    cid = store.create("alice", chat, SETTINGS, lm.name)
    assert looks_like_id(cid)
    loaded = store.load(cid, "alice")
    assert loaded is not None and loaded.mine and loaded.kind == "chat"
    same(loaded.messages, chat)
    assert loaded.settings == SETTINGS
    assert loaded.title == "What is the capital of France?"
    assert loaded.model_name == lm.name


def test_steps_pack_losslessly(chat):
    steps = chat[-1].trace.steps
    assert unpack_steps(pack_steps(steps)) == steps
    # an imported trace may hold any float64: kept exactly too
    odd = Trace.from_dict(chat[-1].trace.to_dict()).steps[:3]
    odd[0].top_probs = [p / 3 for p in odd[0].top_probs]
    odd[1].top_ids = []
    odd[1].top_logits, odd[1].top_probs, odd[1].top_sample_probs = [], [], []
    assert unpack_steps(pack_steps(odd)) == odd
    assert unpack_steps(pack_steps([])) == []


def test_only_the_owner_sees_lists_and_changes_it(store, chat, lm):
    cid = store.create("alice", chat, SETTINGS, lm.name)
    assert store.load(cid, "mallory") is None
    assert store.load(cid, None) is None
    assert store.list("mallory") == []
    assert [s.id for s in store.list("alice")] == [cid]
    for attempt in (
        lambda: store.save(cid, "mallory", chat[:2], SETTINGS),
        lambda: store.rename(cid, "mallory", "mine now"),
        lambda: store.delete(cid, "mallory"),
        lambda: store.share(cid, "mallory"),
    ):
        with pytest.raises(StoreError):
            attempt()
    same(store.load(cid, "alice").messages, chat)


def test_owner_tokens_are_not_stored(store, chat, lm, db_url):
    store.create("alice-secret-token", chat, SETTINGS, lm.name)
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        owners = [r[0] for r in conn.execute(sa.text("SELECT owner FROM conversations"))]
    engine.dispose()
    assert owners == [owner_key("alice-secret-token")]
    assert "alice-secret-token" not in owners[0]


def test_save_writes_only_what_changed_and_follows_edits(store, chat, lm):
    cid = store.create("alice", chat[:2], SETTINGS, lm.name)
    v1 = store.version(cid)
    v2 = store.save(cid, "alice", chat, SETTINGS)
    assert v2 > v1
    same(store.load(cid, "alice").messages, chat)
    # regenerate (as the chat does it): the last reply and its takes become the new one's takes
    last = chat[-1]
    previous = Message(last.role, last.content, id=last.id, trace=last.trace)
    again = [*chat[:-1], Message("assistant", "Rome.", alternatives=[previous, *last.alternatives])]
    store.save(cid, "alice", again, SETTINGS)
    same(store.load(cid, "alice").messages, again)
    store.save(cid, "alice", chat[:1], {**SETTINGS, "temperature": 1.2})
    loaded = store.load(cid, "alice")
    same(loaded.messages, chat[:1])
    assert loaded.settings["temperature"] == 1.2


def test_a_streaming_reply_is_saved_in_chunks_and_resumes(store, chat, lm, db_url):
    """save_reply appends: after a cut, the stored reply is a prefix of the real one."""
    real = chat[-1].trace
    partial = Trace.from_dict(real.to_dict())
    partial.steps = []
    partial.finish_reason = "running"
    reply = Message("assistant", "", id="reply1", trace=partial)
    cid = store.create("alice", [*chat[:-1], reply], SETTINGS, lm.name)
    for n in range(1, len(real.steps) + 1):
        partial.steps.append(real.steps[n - 1])
        reply.content = "".join(s.text for s in partial.steps)
        if n % CHUNK == 0:
            store.save_reply(cid, "alice", reply)
            loaded = store.load(cid, "alice").messages[-1]
            assert loaded.trace.steps == real.steps[:n]
            assert loaded.content == reply.content
            assert loaded.trace.finish_reason == "running"
    partial.finish_reason = real.finish_reason
    store.save_reply(cid, "alice", reply)
    assert store.load(cid, "alice").messages[-1].trace.to_dict() == {
        **real.to_dict(),
        "steps": real.to_dict()["steps"],
    }
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        chunks = conn.execute(
            sa.text("SELECT count(*) FROM trace_steps WHERE trace_id = :t"), {"t": real.trace_id}
        ).scalar()
    engine.dispose()
    assert chunks == -(-len(real.steps) // CHUNK)  # each chunk once: never written twice


def test_share_is_a_frozen_read_only_snapshot(store, chat, lm):
    cid = store.create("alice", chat, SETTINGS, lm.name)
    sid = store.share(cid, "alice")
    assert looks_like_id(sid) and sid != cid
    store.save(cid, "alice", chat[:2], SETTINGS)  # the original moves on
    seen = store.load(sid, "bob")
    assert seen is not None and seen.kind == "share" and not seen.mine
    same(seen.messages, chat)  # the snapshot does not
    with pytest.raises(StoreError):
        store.save(sid, "bob", chat[:1], SETTINGS)
    with pytest.raises(StoreError):
        store.save(sid, "alice", chat[:1], SETTINGS)  # not even its owner edits a snapshot
    assert [s.id for s in store.shares(cid, "alice")] == [sid]
    assert store.list("bob") == []


def test_continue_from_a_share_forks_into_the_visitors_history(store, chat, lm):
    cid = store.create("alice", chat, SETTINGS, lm.name)
    sid = store.share(cid, "alice")
    fork = store.fork(sid, "bob")
    assert [s.id for s in store.list("bob")] == [fork]
    mine = store.load(fork, "bob")
    assert mine.mine and mine.kind == "chat"
    same(mine.messages, chat)
    store.save(fork, "bob", chat[:2], SETTINGS)
    same(store.load(sid, "carol").messages, chat)  # the share is unchanged
    same(store.load(cid, "alice").messages, chat)


def test_revoke_and_delete_really_delete(store, chat, lm, db_url):
    cid = store.create("alice", chat, SETTINGS, lm.name)
    sid = store.share(cid, "alice")
    with pytest.raises(StoreError):
        store.revoke(sid, "bob")
    store.revoke(sid, "alice")
    assert store.load(sid, "bob") is None
    sid2 = store.share(cid, "alice")
    store.delete(cid, "alice")
    assert store.load(cid, "alice") is None
    assert store.load(sid2, "bob") is None  # deleting a conversation deletes its share links
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        for table in ("conversations", "messages", "traces", "trace_steps"):
            assert conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar() == 0, table
    engine.dispose()


def test_rename_and_list_order(store, chat, lm):
    first = store.create("alice", chat, SETTINGS, lm.name)
    second = store.create("alice", chat[:2], SETTINGS, lm.name, title="Second")
    assert [s.id for s in store.list("alice")] == [second, first]
    store.save(first, "alice", chat, {**SETTINGS, "seed": 5})
    assert [s.id for s in store.list("alice")] == [first, second]  # newest change first
    store.rename(second, "alice", "  A   new\nname ")
    assert store.load(second, "alice").title == "A new name"


def test_cleanup_removes_old_conversations_only(store, chat, lm, db_url):
    old = store.create("alice", chat, SETTINGS, lm.name)
    new = store.create("alice", chat, SETTINGS, lm.name)
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE conversations SET updated_at = 0 WHERE id = :i"), {"i": old})
    engine.dispose()
    assert store.cleanup(older_than_days=30) == 1
    assert store.load(old, "alice") is None
    assert store.load(new, "alice") is not None


def test_two_stores_on_one_database_see_the_same_conversations(db_url, chat, lm):
    """Two app processes (replicas) share one database: what one writes the other reads."""
    a, b = Store(db_url), Store(db_url)
    cid = a.create("alice", chat[:2], SETTINGS, lm.name)
    assert [s.id for s in b.list("alice")] == [cid]
    b.save(cid, "alice", chat, SETTINGS)
    assert a.version(cid) == b.version(cid)
    same(a.load(cid, "alice").messages, chat)
    a.dispose()
    b.dispose()


def test_size_per_100_token_reply_is_compact(store, lm):
    history = [Message("system", "You are a helpful assistant."), Message("user", "Tell me about the sea.")]
    trace = make_trace(lm, history, SamplingSettings(temperature=0.7, max_new_tokens=100, seed=1))
    trace.finish_reason = "length"
    history.append(Message("assistant", trace.text, trace=trace))
    cid = store.create("alice", history, SETTINGS, lm.name)
    with store._prepare().connect() as conn:
        size = conn.execute(
            sa.text("SELECT size_bytes FROM conversations WHERE id = :i"), {"i": cid}
        ).scalar()
    assert len(trace.steps) == 100
    assert size < 200_000, size


def test_an_older_copy_never_shrinks_a_stored_trace(store, chat, lm):
    """A tab holding a stale copy of a reply another tab is still writing saves without harm."""
    real = chat[-1].trace
    cid = store.create("alice", chat, SETTINGS, lm.name)
    stale = Trace.from_dict(real.to_dict())
    stale.steps = stale.steps[: len(stale.steps) // 2]
    stale.finish_reason = "running"
    old = Message(chat[-1].role, "".join(s.text for s in stale.steps), id=chat[-1].id, trace=stale)
    old.alternatives = chat[-1].alternatives
    store.save(cid, "alice", [*chat[:-1], old], SETTINGS)
    kept = store.load(cid, "alice").messages[-1]
    assert kept.trace.to_dict() == real.to_dict()
    assert kept.content == chat[-1].content
    stale.steps = list(real.steps)  # same length, but still "running": the finished one stays
    store.save(cid, "alice", [*chat[:-1], old], SETTINGS)
    assert store.load(cid, "alice").messages[-1].trace.finish_reason == real.finish_reason
