"""A throwaway PostgreSQL server for one benchmark run, with default durability.

The test suite's server (``tests/pgserver.py``: ``initdb`` and ``pg_ctl`` from PATH,
/usr/local/bin or /usr/lib/postgresql/*/bin; under root the cluster belongs to the
``postgres`` user or to a ``perdure-pg`` system user), but the server keeps
PostgreSQL's durable defaults: ``fsync=on``, ``synchronous_commit=on``,
``full_page_writes=on``. Only ``max_connections`` is raised (64-client limit runs and
the peers' pools). The cluster lives in a temporary folder under /tmp and is removed
when the run ends.

``python -m benchmarks`` runs from the repository root, so ``tests`` (a folder without
``__init__.py``) imports as a namespace package; perdure itself never ships it.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import ClassVar

from tests import pgserver
from tests.pgserver import Unavailable, free_port

__all__ = ["PostgresServer", "Unavailable", "free_port"]


class PostgresServer(pgserver.PostgresServer):
    """``start()``, ``create_database()`` per measurement, ``stop()``."""

    folder_prefix: ClassVar[str] = "perdure-bench-pg-"
    server_settings: ClassVar[dict[str, str]] = {
        "fsync": "on",
        "synchronous_commit": "on",
        "full_page_writes": "on",
    }
    stop_mode: ClassVar[str] = "fast"

    def __init__(self) -> None:
        super().__init__()
        self._names = itertools.count(1)
        self.version = ""

    def start(self) -> None:
        super().start()
        self.version = self._run("postgres", "--version").stdout.strip()

    def create_database(self, prefix: str = "bench") -> str:
        """A new empty database; returns its URL."""
        import psycopg
        from psycopg import sql

        name = f"{prefix}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            # Every measurement starts with nothing left to write back from the ones
            # before it: else a checkpoint of their pages (the server's timed one runs
            # every 5 minutes, spread over 4.5) competes with its commits' fsyncs.
            conn.execute("CHECKPOINT")
        return self.url(name)

    def settings(self) -> dict[str, str]:
        """The durability settings the server really runs with, for the report."""
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
