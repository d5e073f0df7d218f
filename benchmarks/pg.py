"""A throwaway PostgreSQL server for one benchmark run, with default durability.

The same approach as the test suite's server (``initdb`` and ``pg_ctl`` from PATH,
/usr/local/bin or /usr/lib/postgresql/*/bin; under root the cluster belongs to the
``postgres`` user or to a ``perdure-pg`` system user), but the server keeps
PostgreSQL's durable defaults: ``fsync=on``, ``synchronous_commit=on``,
``full_page_writes=on``. Only ``max_connections`` is raised (64-client limit runs and
the peers' pools). The cluster lives in a temporary folder under /tmp and is removed
when the run ends.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

_SERVER_USER = "postgres"
_FALLBACK_USER = "perdure-pg"


class Unavailable(Exception):
    """No PostgreSQL binaries here (the message says how to get them)."""


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(p) for p in name.split(".") if p.isdigit())


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
    raise Unavailable("PostgreSQL binaries (initdb, pg_ctl) not found; apt-get install postgresql")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_user() -> pwd.struct_passwd | None:
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
    """``start()``, ``create_database()`` per measurement, ``stop()``."""

    def __init__(self) -> None:
        self.bindir = find_bindir()
        self.user = _server_user()
        base = "/tmp" if self.user is not None and os.path.isdir("/tmp") else None
        self.folder = Path(tempfile.mkdtemp(prefix="perdure-bench-pg-", dir=base))
        if self.user is not None:
            os.chown(self.folder, self.user.pw_uid, self.user.pw_gid)
        self.data = self.folder / "data"
        self.port = 0
        self._names = itertools.count(1)
        self.version = ""

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
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
        if check and proc.returncode != 0:
            log = self.folder / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stdout}{proc.stderr}\n{tail}")
        return proc

    def start(self) -> None:
        # --no-sync only skips flushing the freshly created cluster files; the server
        # itself runs with fsync=on.
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
            "--locale=C", "--no-sync",
        )  # fmt: skip
        for attempt in range(3):
            self.port = free_port()
            options = (
                f"-p {self.port} -c listen_addresses=127.0.0.1 "
                f"-c unix_socket_directories={self.folder} -c max_connections=300 "
                "-c fsync=on -c synchronous_commit=on -c full_page_writes=on"
            )
            try:
                self._run(
                    "pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data),
                    "-l", str(self.folder / "server.log"), "-o", options,
                )  # fmt: skip
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        self.version = self._run("postgres", "--version").stdout.strip()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w")
        shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "bench") -> str:
        """A new empty database; returns its URL."""
        import psycopg
        from psycopg import sql

        name = f"{prefix}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def settings(self) -> dict[str, str]:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            rows = conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                (["fsync", "synchronous_commit", "full_page_writes", "wal_sync_method"],),
            ).fetchall()
        return {str(k): str(v) for k, v in rows}

    def pgbench(self) -> Path | None:
        path = self.bindir / "pgbench"
        return path if path.exists() else None
