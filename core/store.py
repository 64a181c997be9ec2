"""The store: the only module that speaks SQL. Conversations, their messages and traces as rows.

SQLite (one file in the data folder, WAL mode) is the default; any SQLAlchemy URL in
GLASSBOX_DB_URL selects another database, PostgreSQL in a deployment. The schema is made and
upgraded by the Alembic migrations in core/migrations/ (an older file is upgraded, never dropped).

Rows hold the same plain data as the JSON export. A trace's steps are stored in chunks of
CHUNK steps (core.tracepack), so saving a reply while it streams only appends.

Owners are never stored as given: a visitor's owner token is kept as its SHA-256. Every call
that changes a conversation names its owner, and changes nothing that is not theirs.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from core.conversation import Message
from core.settings import SamplingSettings
from core.trace import Span, Trace
from core.tracepack import pack_ids, pack_steps, unpack_ids, unpack_steps

log = logging.getLogger(__name__)
T = TypeVar("T")

CHUNK = 16  # steps per stored chunk: a streaming reply is saved at least this often
ID_BYTES = 16  # 128 random bits in every conversation id
DEFAULT_MAX_CONVERSATIONS = 200
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
RETRIES = (0.2, 0.5, 1.0)  # seconds between tries when the database does not answer
MIGRATIONS = Path(__file__).parent / "migrations"
_meta = sa.MetaData()
conversations = sa.Table(
    "conversations",
    _meta,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("owner", sa.String(64)),
    sa.Column("title", sa.String(200)),
    sa.Column("model_name", sa.String(200)),
    sa.Column("settings", sa.Text),
    sa.Column("created_at", sa.Float),
    sa.Column("updated_at", sa.Float),
    sa.Column("version", sa.Integer),
    sa.Column("size_bytes", sa.Integer),
    sa.Column("kind", sa.String(8)),
    sa.Column("source_id", sa.String(32)),
)
messages = sa.Table(
    "messages",
    _meta,
    sa.Column("conversation_id", sa.String(32), primary_key=True),
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("parent", sa.String(64)),
    sa.Column("position", sa.Integer),
    sa.Column("role", sa.String(16)),
    sa.Column("content", sa.Text),
    sa.Column("notice", sa.Text),
    sa.Column("trace_id", sa.String(64)),
)
traces = sa.Table(
    "traces",
    _meta,
    sa.Column("conversation_id", sa.String(32), primary_key=True),
    sa.Column("trace_id", sa.String(64), primary_key=True),
    sa.Column("meta", sa.Text),
    sa.Column("prompt_ids", sa.LargeBinary),
    sa.Column("n_steps", sa.Integer),
    sa.Column("updated_at", sa.Float),
)
trace_steps = sa.Table(
    "trace_steps",
    _meta,
    sa.Column("conversation_id", sa.String(32), primary_key=True),
    sa.Column("trace_id", sa.String(64), primary_key=True),
    sa.Column("chunk", sa.Integer, primary_key=True),
    sa.Column("data", sa.LargeBinary),
)


class StoreError(Exception):
    """Something a person should be told about; the message is for them."""


class StoreUnavailable(StoreError):
    """The database cannot be read or written right now."""


class LimitReached(StoreError):
    """A configured limit (conversations per owner, stored size) would be passed."""


@dataclass
class Summary:
    """One line of a visitor's history."""

    id: str
    title: str
    updated_at: float
    kind: str = "chat"


@dataclass
class Stored:
    """A conversation as loaded: its messages (traces attached) and what was saved with it."""

    id: str
    title: str
    kind: str  # "chat" (its owner's, editable) | "share" (a frozen snapshot, read-only)
    mine: bool  # the asking owner's own conversation
    messages: list[Message]
    settings: dict[str, Any]
    version: int
    model_name: str
    source_id: str | None = None


def new_id() -> str:
    """A conversation id: 128 random bits, URL-safe (22 characters)."""
    return secrets.token_urlsafe(ID_BYTES)


def owner_key(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def looks_like_id(value: object) -> bool:
    """A well-formed conversation id (any other string from a URL is not even looked up)."""
    return (
        isinstance(value, str)
        and len(value) == 22
        and all(c.isascii() and (c.isalnum() or c in "-_") for c in value)
    )


def title_from(messages_: list[Message]) -> str:
    first = next((m.content for m in messages_ if m.role == "user" and m.content.strip()), "")
    words = " ".join(first.split())
    return (words[:60] + "…" if len(words) > 60 else words) or "New conversation"


def default_sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'glassbox.db'}"


class Store:
    """Conversations in a database. Thread-safe; one per process.

    Construction never touches the database: the first call does (and makes or upgrades the
    schema), so an app whose database is down at start still runs, and the store retries.
    """

    def __init__(
        self,
        url: str,
        max_conversations: int = DEFAULT_MAX_CONVERSATIONS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        retries: tuple[float, ...] = RETRIES,
    ) -> None:
        self.url = sa.make_url(url)
        self.max_conversations = max_conversations
        self.max_bytes = max_bytes
        self.retries = retries
        self.notices: list[str] = []  # things every visitor should be told once (a file set aside)
        self.last_error: str | None = None  # why the last call failed; None once one succeeds
        self._engine: Engine | None = None
        self._ready = False
        self._lock = threading.Lock()

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

    # -- connection, schema, retries ----------------------------------------------------------
    def _make_engine(self) -> Engine:
        if self.is_sqlite:
            engine = sa.create_engine(self.url, connect_args={"timeout": 10, "check_same_thread": False})

            @event.listens_for(engine, "connect")
            def _sqlite_pragmas(dbapi_conn, _record) -> None:  # every new connection
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.close()

            return engine
        return sa.create_engine(
            self.url, pool_pre_ping=True, connect_args={"connect_timeout": 3} if self._is_pg else {}
        )

    @property
    def _is_pg(self) -> bool:
        return self.url.get_backend_name() == "postgresql"

    def _sqlite_file(self) -> Path | None:
        """The SQLite database file on disk; None for an in-memory database.

        A URI file name (`sqlite:///file:/data/glassbox.db?mode=ro&uri=true`) names its file
        after "file:", not in the working folder."""
        name = self.url.database or ""
        if name.startswith("file:"):
            name = unquote(urlsplit(name).path)
        if not name or name == ":memory:" or self.url.query.get("mode") == "memory":
            return None
        return Path(name)

    def _prepare(self) -> Engine:
        """The engine, with the schema made or upgraded (once per process, and again after a
        call found the file damaged)."""
        with self._lock:
            if self._engine is None:
                path = self._sqlite_file() if self.is_sqlite else None
                if path is not None and self.url.query.get("mode") != "ro":
                    path.parent.mkdir(parents=True, exist_ok=True)  # OSError: _run says so plainly
                self._engine = self._make_engine()
            if not self._ready:
                try:
                    self._migrate(self._engine)
                except sa.exc.DatabaseError as exc:
                    if not (self.is_sqlite and _is_corrupt(exc)):
                        raise
                    self._set_aside_corrupt_file()
                    self._migrate(self._engine)
                self._ready = True
            return self._engine

    def _migrate(self, engine: Engine) -> None:
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with engine.begin() as conn:
            if self._is_pg:  # two app processes starting together upgrade one at a time
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(774411)"))
            if self.is_sqlite:
                # A file that is not a database raises here; damaged pages are reported as rows.
                found = [tuple(r) for r in conn.exec_driver_sql("PRAGMA quick_check").fetchall()]
                if found != [("ok",)]:
                    raise sa.exc.DatabaseError(
                        "PRAGMA quick_check", None, sqlite3.DatabaseError("database disk image is malformed")
                    )
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def _set_aside_corrupt_file(self) -> None:
        """Rename a damaged SQLite file (never delete it, never replace an earlier one set
        aside) and start a new one."""
        assert self._engine is not None
        self._engine.dispose()
        path = self._sqlite_file()
        if path is None or not path.exists() or not _still_damaged(path):
            # Another app process on this file set it aside first and started a new one.
            self._engine = self._make_engine()
            return
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = path.with_name(f"{path.name}.corrupt-{stamp}")
        n = 1
        while any(aside.with_name(aside.name + x).exists() for x in ("", "-wal", "-shm")):
            n += 1
            aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        path.rename(aside)
        for suffix in ("-wal", "-shm"):
            extra = path.with_name(path.name + suffix)
            if extra.exists():
                extra.rename(aside.with_name(aside.name + suffix))
        log.warning("the conversation database was damaged; set aside as %s", aside)
        self.notices.append(
            f"The conversation database was damaged. It was set aside as {aside.name} (not deleted) "
            "and a new, empty one was started; conversations from before are in the old file."
        )
        self._engine = self._make_engine()

    def _run(self, work: Callable[[Connection], T]) -> T:
        """Run work in one transaction, retrying when the database does not answer.

        While the database stays down (the last call failed), a call tries once and does not
        wait again: every page run would otherwise stall for the pauses. A call that works
        clears that. A SQLite file found damaged is set aside by the next call (_prepare).
        """
        last: Exception | None = None
        pauses = self.retries if self.last_error is None else ()
        for pause in (*pauses, None):
            try:
                engine = self._prepare()
                with engine.begin() as conn:
                    result = work(conn)
                self.last_error = None
                return result
            except sa.exc.DataError as exc:  # the data, not the database: a NUL byte for PostgreSQL
                log.warning("database refused the data: %s", _first_line(exc))
                raise StoreError(
                    "The database refused some of the text it was given (a NUL character?), "
                    "so nothing was changed."
                ) from exc
            except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
                last = exc
                if self.is_sqlite and _is_corrupt(exc):
                    self._ready = False
                if _is_permanent(exc) or pause is None:
                    break
                time.sleep(pause)
            except sa.exc.DatabaseError as exc:
                last = exc
                if self.is_sqlite and _is_corrupt(exc):
                    self._ready = False
                break
            except OSError as exc:  # the data folder cannot be made, a damaged file cannot be renamed
                last = exc
                break
            except Exception as exc:
                if not _is_alembic(exc):  # LimitReached, StoreError: for the caller
                    raise
                last = exc  # the migrations failed: a database from a newer version of the app
                break
        self.last_error = _explain(last)
        log.warning("database call failed: %s", _first_line(last))
        raise StoreUnavailable(self.last_error) from last

    def check(self) -> None:
        """Raise StoreUnavailable unless the database can be read and written now."""

        def probe(conn: Connection) -> None:
            conn.execute(sa.select(sa.func.count()).select_from(conversations)).scalar()
            if self.is_sqlite:  # a read-only folder or file is only found out by writing
                conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS _probe (x INTEGER)")
                conn.exec_driver_sql("DROP TABLE _probe")

        self._run(probe)

    # -- reading -------------------------------------------------------------------------------
    def version(self, cid: str) -> int | None:
        """The conversation's version (bumped by every write), None if it does not exist."""
        return self._run(
            lambda c: c.execute(sa.select(conversations.c.version).where(conversations.c.id == cid)).scalar()
        )

    def list(self, owner: str) -> list[Summary]:
        """The owner's conversations, newest first (shares they made are not listed here)."""
        key = owner_key(owner)
        q = (
            sa.select(conversations.c.id, conversations.c.title, conversations.c.updated_at)
            .where(conversations.c.owner == key, conversations.c.kind == "chat")
            .order_by(conversations.c.updated_at.desc())
        )
        return self._run(lambda c: [Summary(r.id, r.title, r.updated_at) for r in c.execute(q)])

    def load(self, cid: str, owner: str | None) -> Stored | None:
        """The conversation if the owner may see it: their own, or a share. Else None."""
        if not looks_like_id(cid):
            return None
        key = owner_key(owner) if owner else None
        return self._run(lambda c: self._load(c, cid, key))

    def _load(self, conn: Connection, cid: str, key: str | None) -> Stored | None:
        row = conn.execute(sa.select(conversations).where(conversations.c.id == cid)).first()
        if row is None or (row.kind == "chat" and row.owner != key):
            return None
        loaded_traces = self._load_traces(conn, cid)
        rows = conn.execute(
            sa.select(messages).where(messages.c.conversation_id == cid).order_by(messages.c.position)
        ).all()
        by_id: dict[str, Message] = {}
        for r in rows:
            by_id[r.id] = Message(
                r.role, r.content, id=r.id, trace=loaded_traces.get(r.trace_id or ""), notice=r.notice
            )
        main: list[Message] = []
        for r in rows:
            if not r.parent:
                main.append(by_id[r.id])
            elif r.parent in by_id:
                by_id[r.parent].alternatives.append(by_id[r.id])
        return Stored(
            id=row.id,
            title=row.title,
            kind=row.kind,
            mine=row.owner == key,
            messages=main,
            settings=json.loads(row.settings),
            version=row.version,
            model_name=row.model_name,
            source_id=row.source_id,
        )

    def _load_traces(self, conn: Connection, cid: str) -> dict[str, Trace]:
        chunks: dict[str, list[bytes]] = {}
        for r in conn.execute(
            sa.select(trace_steps.c.trace_id, trace_steps.c.data)
            .where(trace_steps.c.conversation_id == cid)
            .order_by(trace_steps.c.trace_id, trace_steps.c.chunk)
        ):
            chunks.setdefault(r.trace_id, []).append(r.data)
        out: dict[str, Trace] = {}
        for r in conn.execute(sa.select(traces).where(traces.c.conversation_id == cid)):
            meta = json.loads(r.meta)
            steps = [s for blob in chunks.get(r.trace_id, []) for s in unpack_steps(blob)][: r.n_steps]
            out[r.trace_id] = Trace(
                prompt_ids=unpack_ids(r.prompt_ids),
                spans=[Span(**s) for s in meta["spans"]],
                settings=SamplingSettings.from_dict(meta["settings"]),
                model_name=meta["model_name"],
                steps=steps,
                trace_id=r.trace_id,
                created_at=meta["created_at"],
                finish_reason=meta["finish_reason"],
                ttft_s=meta["ttft_s"],
                decode_tokens_per_s=meta["decode_tokens_per_s"],
                total_s=meta["total_s"],
                notices=meta["notices"],
                branch_of=meta["branch_of"],
                branch_step=meta["branch_step"],
            )
        return out

    # -- writing -------------------------------------------------------------------------------
    def create(
        self,
        owner: str,
        messages_: list[Message],
        settings: dict[str, Any],
        model_name: str,
        title: str | None = None,
    ) -> str:
        """A new conversation of the owner's, saved with its messages; returns its id."""
        key = owner_key(owner)
        cid = new_id()

        def work(conn: Connection) -> str:
            self._check_room(conn, key)
            now = time.time()
            conn.execute(
                conversations.insert().values(
                    id=cid,
                    owner=key,
                    title=title or title_from(messages_),
                    model_name=model_name,
                    settings=json.dumps(settings),
                    created_at=now,
                    updated_at=now,
                    version=0,
                    size_bytes=0,
                    kind="chat",
                )
            )
            self._write(conn, cid, messages_, settings)
            return cid

        return self._run(work)

    def _check_room(self, conn: Connection, key: str) -> None:
        """Raise LimitReached when the owner already keeps the most conversations allowed."""
        count = conn.execute(
            sa.select(sa.func.count())
            .select_from(conversations)
            .where(conversations.c.owner == key, conversations.c.kind == "chat")
        ).scalar()
        if count >= self.max_conversations:
            raise LimitReached(
                f"You have {count} saved conversation{'' if count == 1 else 's'}, the most this app keeps per visitor. "
                "Delete one in the sidebar's history to save a new one."
            )

    def save(self, cid: str, owner: str, messages_: list[Message], settings: dict[str, Any]) -> int:
        """Bring the stored conversation in line with messages_; returns the new version.

        Only what changed is written: new or edited messages, and each trace's steps from its
        first unsaved chunk on. Messages no longer in the list are deleted with their traces.
        """
        key = owner_key(owner)

        def work(conn: Connection) -> int:
            row = conn.execute(
                sa.select(conversations.c.owner, conversations.c.kind).where(conversations.c.id == cid)
            ).first()
            if row is None or row.owner != key or row.kind != "chat":
                raise StoreError("This conversation no longer exists, so it could not be saved.")
            return self._write(conn, cid, messages_, settings)

        return self._run(work)

    def _write(self, conn: Connection, cid: str, messages_: list[Message], settings: dict[str, Any]) -> int:
        wanted: dict[str, tuple[str, int, Message]] = {}
        for pos, m in enumerate(messages_):
            wanted[m.id] = ("", pos, m)
            for k, alt in enumerate(m.alternatives):
                wanted[alt.id] = (m.id, k, alt)
        have = {
            r.id: r
            for r in conn.execute(
                sa.select(
                    messages.c.id,
                    messages.c.parent,
                    messages.c.position,
                    messages.c.content,
                    messages.c.notice,
                    messages.c.trace_id,
                ).where(messages.c.conversation_id == cid)
            )
        }
        live = {m.trace.trace_id: m.trace for _, _, m in wanted.values() if m.trace is not None}
        saved = {
            r.trace_id: r
            for r in conn.execute(
                sa.select(traces.c.trace_id, traces.c.n_steps, traces.c.meta).where(
                    traces.c.conversation_id == cid
                )
            )
        }
        behind = {  # replies of which this copy is older than the stored one: their text stays too
            tid
            for tid, trace in live.items()
            if tid in saved
            and _older_copy(saved[tid].n_steps, saved[tid].meta, len(trace.steps), trace.finish_reason)
        }
        gone = [mid for mid in have if mid not in wanted]
        if gone:
            conn.execute(messages.delete().where(messages.c.conversation_id == cid, messages.c.id.in_(gone)))
        for mid, (parent, pos, m) in wanted.items():
            tid = m.trace.trace_id if m.trace is not None else None
            old = have.get(mid)
            content = old.content if old is not None and tid in behind else m.content
            values = {
                "parent": parent,
                "position": pos,
                "role": m.role,
                "content": content,
                "notice": m.notice,
                "trace_id": tid,
            }
            if old is None:
                conn.execute(messages.insert().values(conversation_id=cid, id=mid, **values))
            elif (old.parent, old.position, old.content, old.notice, old.trace_id) != (
                parent,
                pos,
                content,
                m.notice,
                tid,
            ):
                conn.execute(
                    messages.update()
                    .where(messages.c.conversation_id == cid, messages.c.id == mid)
                    .values(**values)
                )
        dead = [t for t in saved if t not in live]
        if dead:
            for table in (trace_steps, traces):
                conn.execute(table.delete().where(table.c.conversation_id == cid, table.c.trace_id.in_(dead)))
        for tid, trace in live.items():
            old = saved.get(tid)
            self._write_trace(conn, cid, trace, None if old is None else (old.n_steps, old.meta))
        return self._touch(conn, cid, settings=settings, title_from_messages=messages_)

    def _write_trace(self, conn: Connection, cid: str, trace: Trace, saved: tuple[int, str] | None) -> None:
        """Insert or bring up to date one trace: its metadata and every chunk from the first unsaved one."""
        steps = list(trace.steps)  # a snapshot: a streaming reply may append meanwhile
        meta = _trace_meta(trace)
        if saved is None:
            conn.execute(
                traces.insert().values(
                    conversation_id=cid,
                    trace_id=trace.trace_id,
                    meta=meta,
                    prompt_ids=pack_ids(trace.prompt_ids),
                    n_steps=len(steps),
                    updated_at=time.time(),
                )
            )
            first_chunk = 0
        else:
            n_saved, old_meta = saved
            if n_saved == len(steps) and old_meta == meta:
                return
            if _older_copy(n_saved, old_meta, len(steps), trace.finish_reason):
                return  # another tab or process holds a newer copy: a stored trace only grows
            conn.execute(
                traces.update()
                .where(traces.c.conversation_id == cid, traces.c.trace_id == trace.trace_id)
                .values(meta=meta, n_steps=len(steps), updated_at=time.time())
            )
            first_chunk = min(n_saved, len(steps)) // CHUNK
            where = (
                trace_steps.c.conversation_id == cid,
                trace_steps.c.trace_id == trace.trace_id,
                trace_steps.c.chunk >= first_chunk,
            )
            conn.execute(trace_steps.delete().where(*where))
        rows = [
            {
                "conversation_id": cid,
                "trace_id": trace.trace_id,
                "chunk": k,
                "data": pack_steps(steps[k * CHUNK : (k + 1) * CHUNK]),
            }
            for k in range(first_chunk, -(-len(steps) // CHUNK))
        ]
        if rows:
            conn.execute(trace_steps.insert(), rows)

    def _touch(
        self,
        conn: Connection,
        cid: str,
        settings: dict[str, Any] | None = None,
        title_from_messages: list[Message] | None = None,
    ) -> int:
        """Bump the version, recount the stored size (and refuse past the limit)."""
        size = self._size(conn, cid)
        if size > self.max_bytes:
            raise LimitReached(
                f"This conversation has reached the storage limit of {self.max_bytes / 2**20:g} MB, so "
                "its newest changes were not saved. Start a new conversation to keep chatting with saving."
            )
        values: dict[str, Any] = {
            "version": conversations.c.version + 1,
            "updated_at": time.time(),
            "size_bytes": size,
        }
        if settings is not None:
            values["settings"] = json.dumps(settings)
        if title_from_messages is not None:
            row = conn.execute(sa.select(conversations.c.title).where(conversations.c.id == cid)).first()
            if row is not None and row.title == "New conversation":
                values["title"] = title_from(title_from_messages)
        conn.execute(conversations.update().where(conversations.c.id == cid).values(**values))
        return conn.execute(sa.select(conversations.c.version).where(conversations.c.id == cid)).scalar()

    def _size(self, conn: Connection, cid: str) -> int:
        def total(expr, table) -> int:
            return int(
                conn.execute(
                    sa.select(sa.func.coalesce(sa.func.sum(sa.func.length(expr)), 0)).where(
                        table.c.conversation_id == cid
                    )
                ).scalar()
            )

        return (
            total(messages.c.content, messages)
            + total(traces.c.prompt_ids, traces)
            + total(traces.c.meta, traces)
            + total(trace_steps.c.data, trace_steps)
        )

    def save_reply(self, cid: str, owner: str, message: Message) -> int:
        """While a reply streams: its text and the trace's new steps, nothing else (cheap).

        Returns the new version."""
        key = owner_key(owner)
        trace = message.trace

        def work(conn: Connection) -> int:
            row = conn.execute(
                sa.select(conversations.c.owner, conversations.c.kind).where(conversations.c.id == cid)
            ).first()
            if row is None or row.owner != key or row.kind != "chat":
                raise StoreError("This conversation no longer exists, so the reply could not be saved.")
            done = conn.execute(
                messages.update()
                .where(messages.c.conversation_id == cid, messages.c.id == message.id)
                .values(content=message.content)
            )
            if done.rowcount == 0:
                raise StoreError("The reply's message was not saved first.")
            if trace is not None:
                old = conn.execute(
                    sa.select(traces.c.n_steps, traces.c.meta).where(
                        traces.c.conversation_id == cid, traces.c.trace_id == trace.trace_id
                    )
                ).first()
                self._write_trace(conn, cid, trace, None if old is None else (old.n_steps, old.meta))
            return self._touch(conn, cid)

        return self._run(work)

    def rename(self, cid: str, owner: str, title: str) -> None:
        title = " ".join(title.split())[:200] or "New conversation"
        self._run(lambda c: self._owned_update(c, cid, owner, title=title))

    def _owned_update(self, conn: Connection, cid: str, owner: str, **values: Any) -> None:
        done = conn.execute(
            conversations.update()
            .where(conversations.c.id == cid, conversations.c.owner == owner_key(owner))
            .values(version=conversations.c.version + 1, **values)
        )
        if done.rowcount == 0:
            raise StoreError("This conversation does not exist or is not yours.")

    def delete(self, cid: str, owner: str) -> None:
        """Delete the conversation with its messages, traces and the share links made from it."""
        key = owner_key(owner)

        def work(conn: Connection) -> None:
            ids = [
                r.id
                for r in conn.execute(
                    sa.select(conversations.c.id).where(
                        conversations.c.owner == key,
                        sa.or_(conversations.c.id == cid, conversations.c.source_id == cid),
                    )
                )
            ]
            if cid not in ids:
                raise StoreError("This conversation does not exist or is not yours.")
            _delete_rows(conn, ids)

        self._run(work)

    # -- sharing -------------------------------------------------------------------------------
    def share(self, cid: str, owner: str) -> str:
        """Freeze a snapshot of the owner's conversation; returns the snapshot's id (the link)."""
        key = owner_key(owner)

        def work(conn: Connection) -> str:
            original = self._load(conn, cid, key)
            if original is None or not original.mine or original.kind != "chat":
                raise StoreError("Only your own conversations can be shared.")
            return self._copy(conn, original, key, kind="share", source_id=cid)

        return self._run(work)

    def shares(self, cid: str, owner: str) -> list[Summary]:
        """The live share links made from this conversation, newest first."""
        q = (
            sa.select(conversations.c.id, conversations.c.title, conversations.c.created_at)
            .where(
                conversations.c.source_id == cid,
                conversations.c.owner == owner_key(owner),
                conversations.c.kind == "share",
            )
            .order_by(conversations.c.created_at.desc())
        )
        return self._run(lambda c: [Summary(r.id, r.title, r.created_at, "share") for r in c.execute(q)])

    def revoke(self, share_id: str, owner: str) -> None:
        """Delete a share snapshot: its link then opens nothing."""
        key = owner_key(owner)

        def work(conn: Connection) -> None:
            row = conn.execute(
                sa.select(conversations.c.owner, conversations.c.kind).where(conversations.c.id == share_id)
            ).first()
            if row is None or row.owner != key or row.kind != "share":
                raise StoreError("This share link does not exist or is not yours.")
            _delete_rows(conn, [share_id])

        self._run(work)

    def fork(self, cid: str, owner: str) -> str:
        """Copy a conversation the owner can see (a share, or their own) into their history."""
        key = owner_key(owner)

        def work(conn: Connection) -> str:
            source = self._load(conn, cid, key)
            if source is None:
                raise StoreError("This conversation does not exist or is no longer shared.")
            self._check_room(conn, key)
            return self._copy(conn, source, key, kind="chat", source_id=cid)

        return self._run(work)

    def _copy(self, conn: Connection, source: Stored, key: str, kind: str, source_id: str) -> str:
        new = new_id()
        now = time.time()
        conn.execute(
            conversations.insert().values(
                id=new,
                owner=key,
                title=source.title,
                model_name=source.model_name,
                settings=json.dumps(source.settings),
                created_at=now,
                updated_at=now,
                version=0,
                size_bytes=0,
                kind=kind,
                source_id=source_id,
            )
        )
        self._write(conn, new, source.messages, source.settings)
        return new

    # -- housekeeping --------------------------------------------------------------------------
    def cleanup(self, older_than_days: float) -> int:
        """Delete conversations (and shares) not changed for that many days; returns how many."""
        cutoff = time.time() - older_than_days * 86400

        def work(conn: Connection) -> int:
            ids = [
                r.id
                for r in conn.execute(
                    sa.select(conversations.c.id).where(conversations.c.updated_at < cutoff)
                )
            ]
            _delete_rows(conn, ids)
            return len(ids)

        return self._run(work)

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def _delete_rows(conn: Connection, ids: list[str]) -> None:
    """Every row of these conversations, children first (no reliance on ON DELETE CASCADE)."""
    for start in range(0, len(ids), 500):
        batch = ids[start : start + 500]
        for table in (trace_steps, traces, messages):
            conn.execute(table.delete().where(table.c.conversation_id.in_(batch)))
        conn.execute(conversations.delete().where(conversations.c.id.in_(batch)))


def _older_copy(n_saved: int, saved_meta: str, n_steps: int, finish_reason: str) -> bool:
    """True when the copy being saved is behind the stored one (a reply that another tab or app
    process is still writing, or has finished). A trace only grows: its steps are never taken
    back, and a finished reply never becomes "running" again."""
    if n_steps < n_saved:
        return True
    stored_finish = json.loads(saved_meta).get("finish_reason")
    return n_steps == n_saved and finish_reason == "running" and stored_finish != "running"


def _trace_meta(trace: Trace) -> str:
    data = {f.name: getattr(trace, f.name) for f in dataclasses.fields(trace)}
    for name in ("prompt_ids", "steps", "trace_id"):
        data.pop(name)
    data["spans"] = [dataclasses.asdict(s) for s in trace.spans]
    data["settings"] = trace.settings.to_dict()
    return json.dumps(data, ensure_ascii=False, sort_keys=True)


def _message(exc: BaseException | None) -> str:
    """The driver's own words, lower-cased: never the statement or its parameters (a
    visitor's text in a parameter must not decide what the failure is called)."""
    if exc is None:
        return ""
    orig = getattr(exc, "orig", None)
    return str(orig if orig is not None else exc).lower()


def _first_line(exc: BaseException | None) -> str:
    """For the log: the failure without the statement's parameters (a visitor's text)."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}" if exc else ""


def _is_alembic(exc: BaseException) -> bool:
    """An Alembic error (its classes are not imported here: alembic loads with the first call)."""
    return type(exc).__module__.split(".")[0] == "alembic"


def _is_corrupt(exc: Exception) -> bool:
    text = _message(exc)
    return "file is not a database" in text or "malformed" in text or "not a database" in text


def _still_damaged(path: Path) -> bool:
    """Checked again right before a rename: is the file at path itself damaged (not a new one
    another process has just put there)?"""
    try:
        con = sqlite3.connect(str(path), timeout=10)
        try:
            return con.execute("PRAGMA quick_check").fetchall() != [("ok",)]
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        return _is_corrupt(exc)


_PERMANENT = (
    "readonly",
    "read-only",
    "disk is full",
    "disk full",
    "disk i/o error",  # SQLite could not write (a full disk, a file that may not grow)
    "no space left",
    "unable to open",
    "not a database",
    "malformed",
    "database is locked",  # SQLite already waited its busy timeout (10 s)
    "authentication failed",
    "does not exist",
)


def _is_permanent(exc: Exception) -> bool:
    """A failure that trying again soon will not mend (a read-only file, a full disk, a damaged
    file, a wrong password), or that the driver has already waited out."""
    text = _message(exc)
    return any(s in text for s in _PERMANENT)


def _explain(exc: BaseException | None) -> str:
    """What went wrong, in words for a visitor: no paths, no SQL, no stack."""
    if exc is not None and _is_alembic(exc):
        if "can't locate revision" in str(exc).lower():
            return "the database was made by a newer version of this app"
        return "the database's tables could not be set up"
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return "the disk holding the database is full"
        if exc.errno in (errno.EEXIST, errno.ENOTDIR):
            return "the data folder cannot be made (a file is in its place)"
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return "the data folder cannot be written (a read-only folder?)"
        return "the data folder cannot be used"
    text = _message(exc)
    if "readonly" in text or "read-only" in text:
        return "the database file cannot be written (a read-only folder or disk?)"
    if "unable to open" in text:
        return "the database file cannot be opened or made (a read-only folder?)"
    if "full" in text or "no space left" in text:
        return "the disk holding the database is full"
    if "disk i/o error" in text:
        return "the database file could not be written (a full or failing disk?)"
    if "malformed" in text or "not a database" in text:
        return "the database file is damaged"
    if "database is locked" in text:
        return "the database is busy: another program is holding it"
    if "authentication failed" in text or "password" in text:
        return "the database refused the app's login"
    if "does not exist" in text:
        return "the database named in the app's settings does not exist"
    if any(w in text for w in ("connect", "server", "timeout", "terminat", "shutdown")):
        return "the database server does not answer"
    return "the database reported an error"
