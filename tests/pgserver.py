"""A throwaway PostgreSQL server for the test session, started from installed binaries.

``initdb`` and ``pg_ctl`` are looked up on PATH, in /usr/local/bin and in
/usr/lib/postgresql/*/bin (newest first). The cluster lives in a temporary folder,
listens on a free port of 127.0.0.1 and is removed at the end of the session. PostgreSQL
refuses to run as root: under root the cluster belongs to the ``postgres`` user (or to a
``perdure-pg`` system user created for the purpose).

Each test gets its own database, cloned from a template that already holds the schema
(``CREATE DATABASE ... TEMPLATE ...``), which takes milliseconds.

``PERDURE_TEST_POSTGRES_URL=postgresql://user@host/db`` uses an existing server instead
(the user needs CREATEDB).

``PostgresServer`` is also the benchmark suite's server (``benchmarks/pg.py`` subclasses
it with PostgreSQL's durable settings), so this module needs only the standard library
at import time: ``python -m benchmarks`` imports it as ``tests.pgserver``.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

_SERVER_USER = "postgres"
_FALLBACK_USER = "perdure-pg"


class Unavailable(Exception):
    """No PostgreSQL to run against (the reason says why)."""


def find_bindir() -> Path:
    candidates: list[Path] = []
    for tool in ("initdb", "pg_ctl"):
        found = shutil.which(tool)
        if found:
            candidates.append(Path(found).resolve().parent)
    candidates.append(Path("/usr/local/bin"))
    candidates += sorted(
        (Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")),
        key=lambda p: _version_key(p.parent.name),
        reverse=True,
    )
    for folder in candidates:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    raise Unavailable(
        "PostgreSQL binaries (initdb, pg_ctl) not found on PATH, in /usr/local/bin or in "
        "/usr/lib/postgresql/*/bin; install PostgreSQL (apt-get install postgresql)"
    )


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(p) for p in name.split(".") if p.isdigit())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_user() -> pwd.struct_passwd | None:
    """Who runs the server: ourselves, unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in (_SERVER_USER, _FALLBACK_USER):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", _FALLBACK_USER],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam(_FALLBACK_USER)


class PostgresServer:
    """A cluster of its own in a temporary folder: ``start()``, ``url()``, ``stop()``.

    The class attributes are what a subclass changes: the test session trades durability
    for speed (a crash loses nothing it needs), the benchmark keeps PostgreSQL's defaults.
    """

    folder_prefix: ClassVar[str] = "perdure-pg-"
    # -c settings on top of the port, the socket folder and max_connections=300
    server_settings: ClassVar[dict[str, str]] = {
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
    }
    stop_mode: ClassVar[str] = "immediate"

    def __init__(self) -> None:
        self.bindir = find_bindir()
        self.user = _server_user()
        # Not under TMPDIR: under root that may be a folder the server user cannot enter.
        base = "/tmp" if self.user is not None and os.path.isdir("/tmp") else None
        self.folder = Path(tempfile.mkdtemp(prefix=self.folder_prefix, dir=base))
        if self.user is not None:
            os.chown(self.folder, self.user.pw_uid, self.user.pw_gid)
        self.data = self.folder / "data"
        self.port = 0

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run one of the server's programs as the server's user; raise with the log's tail."""
        kwargs: dict[str, Any] = {}
        if self.user is not None:
            kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        proc = subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            cwd=self.folder,
            env={**os.environ, "LC_ALL": "C", "LANG": "C"},
            **kwargs,
        )
        if proc.returncode != 0:
            log = self.folder / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stdout}{proc.stderr}\n{tail}")
        return proc

    def start(self) -> None:
        # --no-sync only skips flushing the freshly created cluster files; whether the
        # server itself syncs is server_settings' fsync.
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
            "--locale=C", "--no-sync",
        )  # fmt: skip
        for attempt in range(3):
            self.port = free_port()
            try:
                self._run(
                    "pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data),
                    "-l", str(self.folder / "server.log"), "-o", self._options(),
                )  # fmt: skip
                return
            except RuntimeError:
                if attempt == 2:
                    raise

    def _options(self) -> str:
        return (
            f"-p {self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.folder} -c max_connections=300 "
            + " ".join(f"-c {name}={value}" for name, value in self.server_settings.items())
        )

    def restart(self) -> None:
        """Stop the server the way an administrator's restart does, then start it again.

        ``-m fast`` rolls back open transactions and closes every connection: clients see
        their connections drop and must connect again. Same port, same data.
        """
        self._run(
            "pg_ctl", "restart", "-w", "-t", "60", "-m", "fast", "-D", str(self.data),
            "-l", str(self.folder / "server.log"), "-o", self._options(),
        )  # fmt: skip

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "stop", "-D", str(self.data), "-m", self.stop_mode, "-w")
        shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"


class Databases:
    """Creates databases on a server: templates once, then one clone per test."""

    def __init__(self, admin_url: str, server: PostgresServer | None = None) -> None:
        import psycopg

        self.admin_url = admin_url
        self.server = server  # None: an existing server (PERDURE_TEST_POSTGRES_URL)
        self._conn = psycopg.connect(admin_url, autocommit=True)
        self._templates: dict[str, str] = {}
        self._counter = itertools.count(1)
        self._prefix = f"perdure_t{os.getpid()}_"

    def restart_server(self) -> None:
        """Restart the session's server (``pg_ctl restart -m fast``): every connection drops."""
        import psycopg

        if self.server is None:
            raise Unavailable("the server is not the session's own (PERDURE_TEST_POSTGRES_URL)")
        self._conn.close()
        try:
            self.server.restart()
        finally:
            self._conn = psycopg.connect(self.admin_url, autocommit=True)

    def url_for(self, name: str, scheme: str = "postgresql") -> str:
        parts = urlsplit(self.admin_url)
        return urlunsplit((scheme, parts.netloc, f"/{name}", parts.query, ""))

    def create(self, template: str = "template0") -> str:
        from psycopg import errors, sql

        name = f"{self._prefix}{next(self._counter)}"
        # The template may still have a closing session of the process that filled it.
        for attempt in range(50):
            try:
                self._conn.execute(
                    sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                        sql.Identifier(name), sql.Identifier(template)
                    )
                )
                return name
            except errors.ObjectInUse:
                if attempt == 49:
                    raise
                time.sleep(0.05)
        raise AssertionError("unreachable")

    def template(self, kind: str) -> str:
        """A database holding the migrated schema of ``kind`` ("postgres" or "cockroach")."""
        if kind not in self._templates:
            name = self.create()
            url = self.url_for(name, "cockroachdb" if kind == "cockroach" else "postgresql")
            # In a thread of its own: the caller may be running inside an event loop.
            with ThreadPoolExecutor(1) as pool:
                pool.submit(asyncio.run, _migrate(url)).result()
            self._templates[kind] = name
        return self._templates[kind]

    def drop_all(self) -> None:
        from psycopg import sql

        rows = self._conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (self._prefix + "%",)
        ).fetchall()
        for (name,) in rows:
            with contextlib.suppress(Exception):
                self._conn.execute(
                    sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name))
                )
        self._conn.close()


async def _migrate(url: str) -> None:
    from perdure._store import open_store

    store = open_store(url)  # a cockroach kind needs PERDURE_TEST_COCKROACH_EMULATION=1
    try:
        await store.migrate()
    finally:
        await store.close()


@contextlib.contextmanager
def postgres_databases() -> Iterator[Databases]:
    """The session's database factory; raises ``Unavailable`` when there is no PostgreSQL."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        raise Unavailable(f"psycopg is not installed ({exc}): pip install -e '.[test]'") from exc
    external = os.environ.get("PERDURE_TEST_POSTGRES_URL")
    if external:
        dbs = Databases(external)
        try:
            yield dbs
        finally:
            dbs.drop_all()
        return
    server = PostgresServer()
    try:
        server.start()
        dbs = Databases(server.url(), server)
        try:
            yield dbs
        finally:
            dbs._conn.close()
    finally:
        server.stop()
