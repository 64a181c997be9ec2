"""The database fixtures themselves: a real PostgreSQL server, isolated databases, stop and start."""

from __future__ import annotations

import os
import time

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from tests import postgres as pg


def run(url: str, *statements: str) -> object:
    """Run statements in one transaction on a short-lived engine; the last one's scalar result."""
    engine = sa.create_engine(url, connect_args={"connect_timeout": 2})
    try:
        with engine.begin() as conn:
            results = [conn.execute(sa.text(q)) for q in statements]
            return results[-1].scalar() if results[-1].returns_rows else None
    finally:
        engine.dispose()


def test_server_answers_a_query(postgres_server: pg.PostgresServer) -> None:
    url = postgres_server.url
    assert url == f"postgresql+psycopg://postgres@127.0.0.1:{postgres_server.port}/glassbox"
    assert run(url, "SELECT current_database()") == "glassbox"
    assert run(url, "SHOW server_encoding") == "UTF8"
    assert str(run(url, "SHOW server_version")).split(".")[0].isdigit()


def test_server_files_belong_to_a_non_root_user(postgres_server: pg.PostgresServer) -> None:
    assert postgres_server.root.is_dir()
    assert (postgres_server.root / f".s.PGSQL.{postgres_server.port}").exists()  # socket in the temp dir
    if os.geteuid() == 0:
        assert postgres_server.datadir.stat().st_uid != 0


def test_db_url_is_fresh_and_empty(db_url: str) -> None:
    engine = sa.create_engine(db_url)
    try:
        assert sa.inspect(engine).get_table_names() == []
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE t (x TEXT)"))
            conn.execute(sa.text("INSERT INTO t VALUES (:x)"), {"x": "héllo ✓"})
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT x FROM t")).scalar() == "héllo ✓"
    finally:
        engine.dispose()


def test_two_fresh_databases_are_isolated(postgres_server: pg.PostgresServer) -> None:
    a = postgres_server.create_database()
    b = postgres_server.create_database()
    try:
        assert a != b
        run(a, "CREATE TABLE only_in_a (x INT)", "INSERT INTO only_in_a VALUES (1)")
        assert run(a, "SELECT count(*) FROM only_in_a") == 1
        assert run(b, "SELECT to_regclass('only_in_a')") is None
        assert run(postgres_server.url, "SELECT to_regclass('only_in_a')") is None
    finally:
        for url in (a, b):
            postgres_server.drop_database(url.rsplit("/", 1)[1])
    names = run(postgres_server.url, "SELECT string_agg(datname, ',') FROM pg_database")
    assert a.rsplit("/", 1)[1] not in str(names)


def test_drop_database_closes_open_connections(postgres_server: pg.PostgresServer) -> None:
    url = postgres_server.create_database()
    engine = sa.create_engine(url)
    conn = engine.connect()
    conn.execute(sa.text("SELECT 1"))
    try:
        postgres_server.drop_database(url.rsplit("/", 1)[1])  # must not hang on the open connection
    finally:
        conn.invalidate()
        engine.dispose()


def test_stop_then_start_keeps_port_and_data(postgres_server: pg.PostgresServer) -> None:
    url = postgres_server.create_database()
    port = postgres_server.port
    run(url, "CREATE TABLE kept (x INT)", "INSERT INTO kept VALUES (42)")
    engine = sa.create_engine(url, connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT x FROM kept")).scalar() == 42

        postgres_server.stop()
        assert not postgres_server.running
        started = time.monotonic()
        with pytest.raises(OperationalError), engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        assert time.monotonic() - started < 5  # refused at once, not a hang

        postgres_server.start()
        assert postgres_server.running
        assert postgres_server.port == port
        engine.dispose()  # the pool's connections died with the old server
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT x FROM kept")).scalar() == 42
    finally:
        engine.dispose()
        postgres_server.start()
        postgres_server.drop_database(url.rsplit("/", 1)[1])


def test_throwaway_server_cleans_up_after_itself() -> None:
    started = time.monotonic()
    with pg.postgres_server() as server:
        elapsed = time.monotonic() - started
        root, port = server.root, server.port
        assert run(server.url, "SELECT 1") == 1
    assert elapsed < 10, f"server took {elapsed:.1f} s to start"
    assert not root.exists()
    with pytest.raises(OperationalError):
        run(f"postgresql+psycopg://postgres@127.0.0.1:{port}/glassbox", "SELECT 1")


def test_missing_binaries_fail_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pg.shutil, "which", lambda name: None)
    monkeypatch.setattr(pg.glob, "glob", lambda pattern: [])
    with pytest.raises(pg.PostgresError, match="make test"):
        pg.find_bindir()
