"""Faults of the conversation store, on real databases (issue 14, section 7).

No mocks: a read-only SQLite file, a folder that cannot be made, a file that cannot grow
(a full disk), garbage bytes and damaged pages, an older and a newer schema, a real PostgreSQL
server stopped and started again, hostile ids, another owner, and the size limits.

The tests run as root in CI, where file permissions stop nothing. So every fault here is one
that binds root too: SQLite's own read-only mode (`file:...?mode=ro&uri=true`, what a
read-only mount gives), a regular file where the data folder should be, and RLIMIT_FSIZE
(the kernel refuses to let the file grow, as on a full disk), set in a child process.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from core.conversation import Message
from core.store import (
    RETRIES,
    LimitReached,
    Store,
    StoreError,
    StoreUnavailable,
    new_id,
    owner_key,
)
from tests import postgres as pg
from tests.conftest import ROOT

SETTINGS = {"temperature": 0.0, "seed": 7}


def owner() -> str:
    return secrets.token_urlsafe(32)


def chat(*turns: str) -> list[Message]:
    """A system prompt and alternating user / assistant messages."""
    out = [Message("system", "You are a helpful assistant.")]
    for k, text in enumerate(turns):
        out.append(Message("user" if k % 2 == 0 else "assistant", text))
    return out


def assert_plain(reason: str, *secrets_: str) -> None:
    """A reason a visitor may read: short words, no path, no SQL, no driver or exception names."""
    assert reason and len(reason) < 200, reason
    for bad in (
        "/",
        "\\",
        "SELECT",
        "INSERT",
        "UPDATE",
        "PRAGMA",
        "[SQL",
        "sqlite3",
        "psycopg",
        "Error",
        *secrets_,
    ):
        assert bad not in reason, f"{bad!r} in {reason!r}"


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def read_only_url(path: Path) -> str:
    """SQLite's read-only mode: every write fails as it does on a read-only mount, even for root."""
    return f"sqlite:///file:{path}?mode=ro&uri=true"


def rows(url: str, table: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar()
    finally:
        engine.dispose()


def same_messages(a: list[Message], b: list[Message]) -> bool:
    return [(m.id, m.role, m.content) for m in a] == [(m.id, m.role, m.content) for m in b]


# -- a database that cannot be written --------------------------------------------------------


@pytest.fixture()
def saved(tmp_path: Path) -> tuple[Path, str, str, list[Message]]:
    """A SQLite file holding one conversation: (file, owner, id, messages)."""
    path = tmp_path / "data" / "glassbox.db"
    who = owner()
    msgs = chat("What is the capital of France?", "Paris.")
    store = Store(sqlite_url(path))
    cid = store.create(who, msgs, SETTINGS, "test-model")
    store.dispose()
    return path, who, cid, msgs


def test_a_read_only_database_refuses_writes_plainly_and_still_reads(saved, tmp_path, monkeypatch, caplog):
    path, who, cid, msgs = saved
    monkeypatch.chdir(tmp_path)  # a URI file name must not leave folders named "file:" behind
    before = path.read_bytes()
    store = Store(read_only_url(path))
    loaded = store.load(cid, who)
    assert loaded is not None and same_messages(loaded.messages, msgs)  # reading still works

    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        store.create(who, chat("A visitor's private words"), SETTINGS, "test-model")
    assert "readonly database" in caplog.text and "private words" not in caplog.text  # the log: no chat text
    assert time.monotonic() - started < sum(RETRIES), "a read-only file is not worth waiting for"
    reason = str(caught.value)
    assert "cannot be written" in reason
    assert_plain(reason, str(path), path.name)
    assert store.last_error == reason
    with pytest.raises(StoreUnavailable, match="cannot be written"):
        store.save(cid, who, [*msgs, Message("user", "And Italy?")], SETTINGS)
    with pytest.raises(StoreUnavailable):
        store.rename(cid, who, "A new title")
    with pytest.raises(StoreUnavailable):
        store.delete(cid, who)
    store.dispose()

    assert path.read_bytes() == before  # nothing changed, nothing half-written
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("file")] == []
    again = Store(sqlite_url(path)).load(cid, who)
    assert again is not None and same_messages(again.messages, msgs)


def test_a_read_only_database_that_does_not_exist_yet_fails_plainly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "glassbox.db"
    store = Store(read_only_url(path))
    with pytest.raises(StoreUnavailable) as caught:
        store.list(owner())
    assert_plain(str(caught.value), str(path))
    assert not path.exists()


def test_a_data_folder_that_cannot_be_made_fails_plainly(tmp_path):
    blocker = tmp_path / "data"
    blocker.write_text("a file where the data folder should be")
    store = Store(sqlite_url(blocker / "glassbox.db"))
    with pytest.raises(StoreUnavailable) as caught:
        store.list(owner())
    reason = str(caught.value)
    assert "folder" in reason
    assert_plain(reason, str(tmp_path))
    assert store.last_error == reason
    assert blocker.read_text() == "a file where the data folder should be"


def test_a_database_path_that_is_a_folder_fails_plainly(tmp_path):
    (tmp_path / "glassbox.db").mkdir()
    store = Store(sqlite_url(tmp_path / "glassbox.db"))
    with pytest.raises(StoreUnavailable) as caught:
        store.create(owner(), chat("Hello"), SETTINGS, "test-model")
    assert_plain(str(caught.value), str(tmp_path))
    assert (tmp_path / "glassbox.db").is_dir() and not list((tmp_path / "glassbox.db").iterdir())


# The kernel refuses to let any file of this process grow past its current size: what a full
# disk does to SQLite's next write. Run in a child process (the limit binds the whole process).
FULL_DISK = """
    import json, resource, signal, sys
    from pathlib import Path
    from core.conversation import Message
    from core.store import Store, StoreUnavailable

    path, who, cid = sys.argv[1:4]
    folder = Path(path).parent
    store = Store("sqlite:///" + path)
    loaded = store.load(cid, who)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    limit = max(p.stat().st_size for p in folder.iterdir())
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    out = {}
    try:
        store.save(cid, who, loaded.messages + [Message("user", "x" * 500_000)], {})
        out["saved"] = True
    except StoreUnavailable as exc:
        out["reason"] = str(exc)
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    again = store.load(cid, who)
    out["after"] = [m.content for m in again.messages]
    print(json.dumps(out))
"""


def test_a_full_disk_fails_the_save_plainly_and_keeps_what_was_saved(saved):
    path, who, cid, msgs = saved
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FULL_DISK), str(path), who, cid],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert "saved" not in out, "the save should have hit the file size limit"
    assert "full" in out["reason"]
    assert_plain(out["reason"], str(path))
    assert out["after"] == [m.content for m in msgs]  # the failed save left no part of itself


# -- a damaged database file ------------------------------------------------------------------


GARBAGE = b"This is not a SQLite database, just bytes a crash left behind.\n" * 200


def test_a_corrupt_file_is_set_aside_with_a_timestamp_and_a_new_one_works(tmp_path):
    path = tmp_path / "glassbox.db"
    path.write_bytes(GARBAGE)
    store = Store(sqlite_url(path))
    who = owner()
    assert store.list(who) == []  # the first call finds the damage and starts a new file

    (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith("glassbox.db.corrupt-")]
    assert aside.read_bytes() == GARBAGE  # renamed, never deleted or changed
    stamp = aside.name.removeprefix("glassbox.db.corrupt-")
    assert time.strptime(stamp, "%Y%m%d-%H%M%S")
    (notice,) = store.notices
    assert aside.name in notice and "set aside" in notice and "new" in notice
    assert str(tmp_path) not in notice  # the file's name, not where it lives

    cid = store.create(who, chat("Hello again"), SETTINGS, "test-model")
    assert store.load(cid, who).messages[1].content == "Hello again"
    store.dispose()
    assert Store(sqlite_url(path)).list(who)[0].id == cid  # the new file is a sound database


def test_a_second_corrupt_file_never_replaces_the_first_one_set_aside(tmp_path):
    path = tmp_path / "glassbox.db"
    kept = []
    for k in range(3):  # within the same second: the timestamps alone would collide
        path.unlink(missing_ok=True)
        for extra in tmp_path.glob("glassbox.db-*"):
            extra.unlink()
        body = GARBAGE + bytes([k]) * 100
        path.write_bytes(body)
        kept.append(body)
        store = Store(sqlite_url(path))
        store.list(owner())
        store.dispose()
    asides = sorted(
        p for p in tmp_path.iterdir() if ".corrupt-" in p.name and not p.name.endswith(("-wal", "-shm"))
    )
    assert sorted(p.read_bytes() for p in asides) == sorted(kept)


def test_a_file_with_damaged_pages_is_set_aside_too(tmp_path):
    path = tmp_path / "glassbox.db"
    who = owner()
    store = Store(sqlite_url(path))
    for k in range(30):
        store.create(who, chat(f"Question {k}: " + "words " * 400), SETTINGS, "test-model")
    store.dispose()
    size = path.stat().st_size
    with open(path, "r+b") as f:  # a header that reads fine, then pages of noise
        f.seek(size // 2)
        f.write(os.urandom(8192))
    damaged = path.read_bytes()

    store = Store(sqlite_url(path))
    assert store.list(who) == []  # not the damaged file, a new one
    (aside,) = [
        p for p in tmp_path.iterdir() if p.name.startswith("glassbox.db.corrupt-") and "-wal" not in p.name
    ]
    assert aside.read_bytes() == damaged
    assert len(store.notices) == 1
    store.create(who, chat("Works"), SETTINGS, "test-model")


# -- schema versions --------------------------------------------------------------------------


def _alembic_upgrade(url: str, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    from core.store import MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    finally:
        engine.dispose()


def _head() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from core.store import MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(cfg).get_current_head()


def _revision(url: str) -> str:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()


def test_an_older_database_is_upgraded_and_keeps_its_conversations(db_url):
    _alembic_upgrade(db_url, "0001")
    who = owner()
    cid = new_id()
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:  # rows as the first release wrote them
        conn.execute(
            sa.text(
                "INSERT INTO conversations (id, owner, title, model_name, settings, created_at, "
                "updated_at, version, size_bytes) VALUES (:id, :owner, 'Old chat', 'old-model', :s, 1, 2, 3, 10)"
            ),
            {"id": cid, "owner": owner_key(who), "s": json.dumps(SETTINGS)},
        )
        for pos, (mid, role, text) in enumerate(
            [("m0", "system", "Be brief."), ("m1", "user", "Hi from 0001")]
        ):
            conn.execute(
                sa.text(
                    "INSERT INTO messages (conversation_id, id, parent, position, role, content) "
                    "VALUES (:c, :id, '', :p, :r, :t)"
                ),
                {"c": cid, "id": mid, "p": pos, "r": role, "t": text},
            )
    engine.dispose()
    assert _revision(db_url) == "0001"

    store = Store(db_url)
    loaded = store.load(cid, who)
    assert _revision(db_url) == _head() != "0001"
    assert loaded is not None and loaded.kind == "chat" and loaded.title == "Old chat"
    assert [(m.id, m.content) for m in loaded.messages] == [("m0", "Be brief."), ("m1", "Hi from 0001")]
    assert [s.id for s in store.list(who)] == [cid]
    store.save(cid, who, [*loaded.messages, Message("assistant", "Hello.")], SETTINGS)
    assert store.load(cid, who).messages[-1].content == "Hello."
    assert store.share(cid, who)  # what 0002 added works on the old rows
    store.dispose()


def test_a_database_from_a_newer_app_is_left_alone_with_a_plain_reason(db_url):
    store = Store(db_url)
    who = owner()
    cid = store.create(who, chat("Kept"), SETTINGS, "test-model")
    store.dispose()
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()

    newer = Store(db_url)
    with pytest.raises(StoreUnavailable) as caught:
        newer.load(cid, who)
    assert "newer version" in str(caught.value)
    assert_plain(str(caught.value))
    newer.dispose()
    assert _revision(db_url) == "9999" and rows(db_url, "conversations") == 1


# -- PostgreSQL down --------------------------------------------------------------------------


@pytest.fixture()
def pg_url(postgres_server: pg.PostgresServer):
    """A fresh database on the shared server; the server is running again afterwards, whatever happens."""
    postgres_server.start()
    url = postgres_server.create_database()
    try:
        yield url
    finally:
        postgres_server.start()
        postgres_server.drop_database(url.rsplit("/", 1)[1])


def test_postgres_down_at_start_is_retried_then_reported_and_the_same_store_recovers(postgres_server, pg_url):
    store = Store(pg_url)  # construction never connects
    postgres_server.stop()
    who = owner()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        store.list(who)
    assert time.monotonic() - started >= sum(RETRIES) * 0.9  # it retried before giving up
    reason = str(caught.value)
    assert reason == "the database server does not answer" == store.last_error
    assert_plain(reason, str(postgres_server.port), "127.0.0.1")

    started = time.monotonic()
    with pytest.raises(StoreUnavailable):  # while it stays down, later calls do not wait again
        store.create(who, chat("Lost?"), SETTINGS, "test-model")
    assert time.monotonic() - started < sum(RETRIES) / 2

    postgres_server.start()
    assert store.list(who) == []  # the same store: schema made now, no restart of the app needed
    assert store.last_error is None
    cid = store.create(who, chat("Now it works"), SETTINGS, "test-model")
    assert store.load(cid, who).messages[1].content == "Now it works"
    store.dispose()


def test_postgres_down_mid_conversation_loses_nothing_once_it_is_back(postgres_server, pg_url, greedy_trace):
    store = Store(pg_url)
    who = owner()
    msgs = chat("What is the capital of France?")
    cid = store.create(who, msgs, SETTINGS, "test-model")
    msgs.append(Message("assistant", greedy_trace.text, trace=greedy_trace))
    store.save(cid, who, msgs, SETTINGS)

    postgres_server.stop()
    msgs += [Message("user", "And of Italy?"), Message("assistant", "Rome.")]
    with pytest.raises(StoreUnavailable, match="does not answer"):
        store.save(cid, who, msgs, SETTINGS)
    with pytest.raises(StoreUnavailable):
        store.save_reply(cid, who, msgs[-1])
    with pytest.raises(StoreUnavailable):
        store.load(cid, who)

    postgres_server.start()
    msgs += [Message("user", "And of Spain?"), Message("assistant", "Madrid.")]
    store.save(cid, who, msgs, SETTINGS)  # everything the outage held back, in one save
    store.dispose()

    loaded = Store(pg_url).load(cid, who)  # a new process's view
    assert loaded is not None and same_messages(loaded.messages, msgs)
    trace = loaded.messages[2].trace
    assert trace is not None and trace.trace_id == greedy_trace.trace_id
    assert [s.token_id for s in trace.steps] == [s.token_id for s in greedy_trace.steps]


# -- hostile ids and other owners -------------------------------------------------------------


def _hostile_ids(theirs: str) -> list[str]:
    return [
        "",
        "x" * 10_240,
        "' OR '1'='1",
        "'; DROP TABLE conversations; --",
        '" OR ""="',
        "%",
        "_" * 22,  # well-formed, and a LIKE wildcard
        "ünïcødé-ⓘⓓ-名前-🙂",
        "../../../../etc/passwd",
        "..\\..\\glassbox.db",
        "file:glassbox.db?mode=rwc",
        "\x00",
        "abc\x00def" * 3,
        "\u202eevil",
        " " + theirs,
        theirs.upper() if theirs.upper() != theirs else theirs.lower(),
        new_id(),  # well-formed, never made
        theirs,  # a real id, someone else's
    ]


@pytest.fixture()
def two_owners(db_url):
    """A store with Alice's conversation and a share of it, and Bob: (store, alice, bob, cid, share)."""
    store = Store(db_url)
    alice, bob = owner(), owner()
    cid = store.create(alice, chat("Alice's question", "Alice's answer"), SETTINGS, "test-model")
    share = store.share(cid, alice)
    yield store, alice, bob, cid, share
    store.dispose()


def test_hostile_ids_open_nothing_and_raise_nothing(two_owners):
    store, alice, bob, cid, _ = two_owners
    for who in (bob, None, "", "x" * 10_000, "' OR '1'='1"):
        for bad in _hostile_ids(cid):
            assert store.load(bad, who) is None, (bad[:40], who and who[:20])
    assert store.load(cid, alice) is not None  # the tables are all still there
    assert store.last_error is None


@pytest.mark.parametrize(
    "action",
    ["save", "save_reply", "rename", "delete", "share", "revoke", "fork", "shares", "version"],
)
def test_hostile_ids_in_every_call_are_refused_plainly(two_owners, action):
    store, alice, bob, cid, share = two_owners
    msgs = chat("Hello")
    calls = {
        "save": lambda i: store.save(i, bob, msgs, SETTINGS),
        "save_reply": lambda i: store.save_reply(i, bob, msgs[-1]),
        "rename": lambda i: store.rename(i, bob, "pwned"),
        "delete": lambda i: store.delete(i, bob),
        "share": lambda i: store.share(i, bob),
        "revoke": lambda i: store.revoke(i, bob),
        "fork": lambda i: store.fork(i, bob),
        "shares": lambda i: store.shares(i, bob),
        "version": lambda i: store.version(i),
    }
    for bad in _hostile_ids(cid)[:-1]:  # all but Alice's real id (next test)
        try:
            result = calls[action](bad)
        except StoreUnavailable as exc:
            pytest.fail(f"{action}({bad[:30]!r}) made the database look down: {exc}")
        except StoreError as exc:
            assert_plain(str(exc))
        else:
            assert result in (None, []), (action, bad[:30], result)
    assert store.last_error is None
    alice_view = store.load(cid, alice)
    assert alice_view.title == "Alice's question" and len(alice_view.messages) == 3
    assert store.load(share, None) is not None


def test_another_owner_can_neither_list_nor_change_a_conversation(two_owners):
    store, alice, bob, cid, share = two_owners
    before = store.load(cid, alice)
    theirs = store.create(bob, chat("Bob's own"), SETTINGS, "test-model")

    assert [s.id for s in store.list(bob)] == [theirs]
    assert store.shares(cid, bob) == []
    assert store.load(cid, bob) is None
    with pytest.raises(StoreError):
        store.save(cid, bob, chat("overwritten"), SETTINGS)
    with pytest.raises(StoreError):
        store.save_reply(cid, bob, before.messages[-1])
    with pytest.raises(StoreError):
        store.rename(cid, bob, "Bob's now")
    with pytest.raises(StoreError):
        store.rename(share, bob, "Bob's now")
    with pytest.raises(StoreError):
        store.delete(cid, bob)
    with pytest.raises(StoreError):
        store.delete(share, bob)
    with pytest.raises(StoreError):
        store.share(cid, bob)
    with pytest.raises(StoreError):
        store.revoke(share, bob)
    with pytest.raises(StoreError):
        store.fork(cid, bob)  # not shared: not even a copy
    # Bob's own id cannot be used as a lever on Alice's rows either.
    with pytest.raises(StoreError):
        store.revoke(theirs, bob)  # a chat is not a share

    after = store.load(cid, alice)
    assert (after.title, after.version) == (before.title, before.version)
    assert same_messages(after.messages, before.messages)
    assert [s.id for s in store.list(alice)] == [cid]
    assert [s.id for s in store.shares(cid, alice)] == [share]
    shared = store.load(share, bob)  # a share link is for anyone, read-only
    assert shared is not None and shared.kind == "share" and not shared.mine
    forked = store.fork(share, bob)  # "Continue from here" makes Bob's own copy
    assert {s.id for s in store.list(bob)} == {theirs, forked}
    assert same_messages(store.load(cid, alice).messages, before.messages)


# -- limits -----------------------------------------------------------------------------------


def test_too_many_conversations_is_refused_clearly_and_writes_nothing(db_url):
    store = Store(db_url, max_conversations=2)
    who = owner()
    first = store.create(who, chat("One"), SETTINGS, "test-model")
    store.create(who, chat("Two"), SETTINGS, "test-model")
    with pytest.raises(LimitReached) as caught:
        store.create(who, chat("Three"), SETTINGS, "test-model")
    assert "2 saved conversations" in str(caught.value) and "Delete one" in str(caught.value)
    assert_plain(str(caught.value))
    share = store.share(first, who)  # shares are not conversations of one's own: not counted
    with pytest.raises(LimitReached):
        store.fork(share, who)
    assert len(store.list(who)) == 2 and rows(db_url, "conversations") == 3
    assert rows(db_url, "messages") == 2 * 2 + 2
    assert store.create(owner(), chat("Someone else's first"), SETTINGS, "test-model")  # per owner
    assert store.last_error is None  # a limit is not an outage
    store.dispose()


def test_an_oversized_conversation_is_refused_clearly_and_nothing_partial_is_written(db_url, greedy_trace):
    store = Store(db_url, max_bytes=20_000)
    who = owner()
    with pytest.raises(LimitReached) as caught:  # too big from its first save: no row at all
        store.create(who, chat("x" * 30_000), SETTINGS, "test-model")
    assert "storage limit" in str(caught.value)
    assert_plain(str(caught.value))
    assert rows(db_url, "conversations") == 0 and rows(db_url, "messages") == 0

    msgs = chat("What is the capital of France?")
    cid = store.create(who, msgs, SETTINGS, "test-model")
    before = store.load(cid, who)
    big = [*msgs, Message("assistant", greedy_trace.text, trace=greedy_trace), Message("user", "y" * 25_000)]
    with pytest.raises(LimitReached):
        store.save(cid, who, big, SETTINGS)
    reply = Message("assistant", "z" * 25_000, trace=greedy_trace)
    store.save(cid, who, [*msgs, Message("assistant", "", id=reply.id)], SETTINGS)
    before = store.load(cid, who)
    with pytest.raises(LimitReached):
        store.save_reply(cid, who, reply)
    after = store.load(cid, who)
    assert after.version == before.version and same_messages(after.messages, before.messages)
    assert after.messages[-1].trace is None and rows(db_url, "trace_steps") == 0
    assert store.last_error is None
    # Under the limit again (a shorter reply), saving goes on.
    store.save(cid, who, [*msgs, Message("assistant", "Paris.")], SETTINGS)
    assert store.load(cid, who).messages[-1].content == "Paris."
    store.dispose()


def test_a_nul_character_is_kept_or_refused_plainly_never_an_outage(db_url):
    store = Store(db_url)
    who = owner()
    msgs = chat("bell\x07 nul\x00 del\x7f end")  # tests/hostile_text.py's "control"
    try:
        cid = store.create(who, msgs, SETTINGS, "test-model")
    except StoreUnavailable as exc:
        pytest.fail(f"a NUL character made the database look down: {exc}")
    except StoreError as exc:  # PostgreSQL text cannot hold NUL
        assert "NUL" in str(exc)
        assert_plain(str(exc))
        assert rows(db_url, "conversations") == 0  # nothing half-written
    else:
        assert store.load(cid, who).messages[1].content == msgs[1].content  # SQLite keeps it exactly
    assert store.last_error is None
    assert store.create(who, chat("plain text"), SETTINGS, "test-model")  # the store goes on
    store.dispose()
