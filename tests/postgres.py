"""A throwaway PostgreSQL server for the storage tests.

``postgres_server()`` runs Debian's own binaries (``initdb`` + ``pg_ctl``) in a fresh temporary
folder, listening on a free loopback port, and yields a :class:`PostgresServer` handle whose
``url`` is ``postgresql+psycopg://postgres@127.0.0.1:PORT/glassbox``. The handle can
``stop()`` and ``start()`` the server (same port, same data) for fault tests, and
``create_database()`` / ``drop_database()`` give each test its own empty database.

PostgreSQL refuses to run as root, and CI runs the tests as root: there the binaries run as the
``postgres`` system user that Debian's package creates, and the temporary folder belongs to it.
The binaries are never optional: when they are missing the fixture fails and says how to get them
(``make test`` installs Debian's ``postgresql``), so CI cannot pass without testing PostgreSQL.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql

HOST = "127.0.0.1"
SUPERUSER = "postgres"
DEFAULT_DB = "glassbox"
RUN_AS = "postgres"  # the system user Debian's postgresql package creates

MISSING = (
    "PostgreSQL server binaries (initdb, pg_ctl) were not found: looked in `pg_config --bindir` "
    "and /usr/lib/postgresql/*/bin. `make test` installs Debian's `postgresql` package "
    "(or run: apt-get install postgresql). The storage tests need a real PostgreSQL server."
)

# Speed over durability against an OS crash (the data is thrown away after the run), but not
# against the server's own crash: stop() kills it like a crash, and a commit must survive that.
# So fsync is off (the kernel still holds every write) and synchronous_commit stays on
# (turned off, a commit acknowledged just before stop() was lost on restart).
SERVER_SETTINGS = {
    "listen_addresses": f"'{HOST}'",
    "fsync": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "32MB",
    "max_wal_size": "256MB",
    "log_min_messages": "warning",
}


class PostgresError(RuntimeError):
    """The test server could not be set up, started or stopped (the message carries its log)."""


def find_bindir() -> Path:
    """The folder holding initdb and pg_ctl; raises :class:`PostgresError` with a fix when absent."""
    candidates: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10)
            candidates.append(out.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    # Newest version first. libpq-dev's pg_config alone names a bindir without a server in it.
    candidates += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: [int(x) if x.isdigit() else 0 for x in Path(p).parent.name.split(".")],
        reverse=True,
    )
    for bindir in candidates:
        if bindir and all(os.access(Path(bindir) / b, os.X_OK) for b in ("initdb", "pg_ctl", "postgres")):
            return Path(bindir)
    raise PostgresError(MISSING)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class PostgresServer:
    """One running test server. ``url`` is the ``glassbox`` database; ``url_for(name)`` any other."""

    def __init__(self, bindir: Path, root: Path, as_user: str | None) -> None:
        self.bindir = bindir
        self.root = root  # the temporary folder: data/, the socket and server.log
        self.datadir = root / "data"
        self.logfile = root / "server.log"
        self.host = HOST
        self.port = 0
        self._as_user = as_user
        self.running = False

    # -- URLs and databases ------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.url_for(DEFAULT_DB)

    def url_for(self, dbname: str) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@{self.host}:{self.port}/{dbname}"

    def admin_connect(self, timeout: float = 5) -> psycopg.Connection:
        """An autocommit connection to the ``postgres`` maintenance database."""
        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=SUPERUSER,
            dbname="postgres",
            autocommit=True,
            connect_timeout=max(1, int(timeout)),
        )

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (a unique name when none is given) and return its URL."""
        name = name or f"test_{uuid.uuid4().hex[:16]}"
        with self.admin_connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, closing any connection a test left open to it."""
        with self.admin_connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    # -- process control ---------------------------------------------------------------------

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._as_user:
            cmd = ["runuser", "-u", self._as_user, "--", *cmd]
        try:
            done = subprocess.run(
                cmd, cwd=self.root, capture_output=True, text=True, timeout=timeout, env=_clean_env()
            )
        except subprocess.TimeoutExpired as e:
            raise PostgresError(f"{args[0]} timed out after {timeout} s\n{self.log_tail()}") from e
        if done.returncode != 0:
            raise PostgresError(
                f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}{done.stderr}\n{self.log_tail()}"
            )
        return done

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.logfile.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "server.log:\n" + "\n".join(text)

    def init(self) -> None:
        self._run(
            "initdb",
            "--pgdata",
            str(self.datadir),
            "--username",
            SUPERUSER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",
            "--no-instructions",
        )
        settings = dict(SERVER_SETTINGS, unix_socket_directories=f"'{self.root}'")
        with open(self.datadir / "postgresql.conf", "a") as f:
            f.write("\n# glassbox test server\n")
            f.writelines(f"{k} = {v}\n" for k, v in settings.items())

    def start(self) -> None:
        """Start the server (on the same port and data as before, after a ``stop()``)."""
        if self.running:
            return
        first = self.port == 0
        for attempt in range(5):
            if first:
                self.port = free_port()
            try:
                self._run(
                    "pg_ctl",
                    "start",
                    "--pgdata",
                    str(self.datadir),
                    "--log",
                    str(self.logfile),
                    "--wait",
                    "--timeout",
                    "30",
                    "-o",
                    f"-p {self.port}",
                )
                break
            except PostgresError:
                # Another process took the port between free_port() and the bind: try another one.
                if not first or attempt == 4:
                    raise
        self.running = True
        self._wait_ready()

    def _wait_ready(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.admin_connect(timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as e:
                if time.monotonic() > deadline:
                    raise PostgresError(
                        f"server on port {self.port} never answered\n{self.log_tail()}"
                    ) from e
                time.sleep(0.05)

    def stop(self) -> None:
        """Take the server down at once (``-m immediate``, like a crash); ``start()`` brings it back."""
        if not self.running:
            return
        self._run("pg_ctl", "stop", "--pgdata", str(self.datadir), "--mode", "immediate", "--wait")
        self.running = False

    def __repr__(self) -> str:
        return f"PostgresServer({self.url!r}, running={self.running})"


def _clean_env() -> dict[str, str]:
    # No PG* variable from the caller's shell may point the tools at another server or data folder.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _run_as() -> str | None:
    """None when the binaries can run as the current user; the ``postgres`` user when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(RUN_AS)
    except KeyError:
        raise PostgresError(
            f"running as root and there is no `{RUN_AS}` user to run PostgreSQL as (it refuses root). "
            "Debian's `postgresql` package creates it: `make test` installs that package."
        ) from None
    if not shutil.which("runuser"):
        raise PostgresError("running as root and `runuser` (util-linux) is missing")
    return RUN_AS


def _make_root(as_user: str | None) -> Path:
    """A fresh temporary folder the server's user owns (under $TMPDIR, else /tmp)."""
    bases = [tempfile.gettempdir()]
    if as_user and "/tmp" not in bases:
        bases.append("/tmp")
    for base in bases:
        root = Path(tempfile.mkdtemp(prefix="glassbox-pg-", dir=base))
        if not as_user:
            return root
        pw = pwd.getpwnam(as_user)
        os.chown(root, pw.pw_uid, pw.pw_gid)
        # The server's user must be able to reach the folder: $TMPDIR may sit under /root.
        probe = subprocess.run(["runuser", "-u", as_user, "--", "test", "-w", str(root)], check=False)
        if probe.returncode == 0:
            return root
        shutil.rmtree(root, ignore_errors=True)
    raise PostgresError(f"no temporary folder the `{as_user}` user can write to (tried {bases})")


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Start a throwaway server with an empty ``glassbox`` database; stop it and delete it on exit."""
    bindir = find_bindir()
    as_user = _run_as()
    root = _make_root(as_user)
    server = PostgresServer(bindir, root, as_user)
    try:
        server.init()
        server.start()
        server.create_database(DEFAULT_DB)
        yield server
    finally:
        try:
            if server.running:
                server.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)
