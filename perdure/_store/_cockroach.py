"""The CockroachDB store: the PostgreSQL store less what CockroachDB lacks.

- no LISTEN/NOTIFY: workers poll (``listen`` keeps the base class's no-op);
- no triggers: a run with a message in its inbox is due whatever its ``wake_at``
  (``claim_runs`` in sql/cockroach/queries.sql);
- no advisory locks: migrations are idempotent statements run one by one, and every
  process that migrates at once runs them;
- serializable transactions that can fail with SQLSTATE 40001: every transaction is run
  again, with backoff, until it commits (``Database.retrying``);
- a step is a few pipelined statements in one transaction, not one statement with
  several data-modifying CTEs on one table, which CockroachDB does not allow.

``PERDURE_TEST_COCKROACH_EMULATION=1`` (tests only) lets a ``cockroachdb://`` URL point
at PostgreSQL: the hash-sharding clauses are left out of the schema and a share of the
transactions (``PERDURE_TEST_COCKROACH_FAULT_RATE``, 0.1 by default) is made to fail
with 40001, so the retry paths run all the time.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
from collections.abc import Callable

from psycopg import errors

from perdure._store._base import StepCommit
from perdure._store._postgres import PostgresStore, emulating_cockroach
from perdure._store._postgres_db import split_statements
from perdure._store._queries import migration_files

_HASH_SHARDING = re.compile(r"\s+USING\s+HASH(\s+WITH\s*\([^)]*\))?", re.IGNORECASE)
# Processes racing through the same idempotent DDL: the loser may see these; it tries again.
_DDL_RACES = (
    errors.SerializationFailure,
    errors.DeadlockDetected,
    errors.UniqueViolation,
    errors.DuplicateTable,
    errors.DuplicateObject,
    errors.DuplicateSchema,
    errors.InternalError_,  # PostgreSQL (emulation): "tuple concurrently updated"
)


class CockroachStore(PostgresStore):
    """``App("cockroachdb://user@host:26257/db?sslmode=verify-full&schema=perdure")``."""

    dialect = "cockroach"
    _query_dialects = ("postgres", "cockroach")
    _default_port = 26257

    emulated = False

    def _fault_rate(self) -> float:
        if not emulating_cockroach():
            return 0.0
        return float(os.environ.get("PERDURE_TEST_COCKROACH_FAULT_RATE", "0.1"))

    async def _check_server(self) -> None:
        version = await self._server_version()
        if "cockroachdb" in version.lower():
            return
        if not emulating_cockroach():
            raise ValueError(
                f"{self.url!r} is a cockroachdb:// URL but the server is not CockroachDB "
                f"({version.split(',')[0]}); use a postgresql:// URL for PostgreSQL"
            )
        self.emulated = True

    # -- schema ----------------------------------------------------------
    async def migrate(self) -> None:
        async with self._migrate_lock:
            if self._migrated:
                return
            await self._check_server()
            if not await self.db.read(self._schema_exists):
                await self._ddl(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
            await self._ddl(
                "CREATE TABLE IF NOT EXISTS perdure.schema_version (version integer PRIMARY KEY,"
                " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            rows = await self._all(self._sql("SELECT version FROM perdure.schema_version"), ())
            applied = {r["version"] for r in rows}
            for version, name, text in migration_files(self.dialect):
                if version in applied:
                    continue
                for statement in split_statements(text):
                    await self._ddl(statement)
                await self._write(
                    self._sql(
                        "INSERT INTO perdure.schema_version (version, name) VALUES (%s, %s)"
                        " ON CONFLICT (version) DO NOTHING"
                    ),
                    (version, name),
                )
            self._migrated = True

    async def _ddl(self, statement: str) -> None:
        statement = self._sql(statement)
        if self.emulated:
            statement = _HASH_SHARDING.sub("", statement)
        pool = await self.db.pool()
        for attempt in range(1, 11):
            try:
                async with pool.connection() as conn:
                    await conn.execute(statement.encode())
                return
            except _DDL_RACES:
                if attempt == 10:
                    raise
            await asyncio.sleep(0.01 * attempt * (0.5 + random.random()))

    # -- wake-ups: none pushed; workers poll ---------------------------------
    async def listen(self, callback: Callable[[], None]) -> None:
        return None

    async def unlisten(self, callback: Callable[[], None]) -> None:
        return None

    # -- a step: several statements, one transaction -------------------------
    async def commit_step(self, step: StepCommit) -> None:
        await self.db.transaction(self._step_tx(step))
