"""The least any asyncio engine does per sequential step: the floor under W4.

A bare loop with no engine around it: await the activity (a no-op coroutine, in the
loop's own task, as perdure's hot path runs it), resume the workflow's coroutine with
the result, encode the step's two events as JSON and commit them durably, fenced the
way perdure fences a step (the run is still ours and its history ends where we think):

* SQLite: ``BEGIN IMMEDIATE``, a ``SELECT`` of the run's row and history end, an
  insert of both events into a history table shaped like ``perdure_history``
  (``WITHOUT ROWID``, keyed by run and sequence number), ``COMMIT``.
* PostgreSQL: one statement that moves the run's row on and inserts both events
  (a data-modifying CTE), in autocommit: one round trip and one commit per step.

No retries, leases, timers, signals, replay, recovery or group commit: what is left is
the cost that CPython, the driver and the database put on every step of any engine.
Read against the single-row limit, it says how much of W4's gap to that limit is the
engine's and how much is Python's own.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Generator
from typing import Any

_SQLITE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS floor_runs (run_id TEXT PRIMARY KEY, owner TEXT,"
    " status TEXT, wake_at TEXT)",
    "CREATE TABLE IF NOT EXISTS floor_history (run_id TEXT NOT NULL, seq INTEGER NOT NULL,"
    " event_type TEXT NOT NULL, name TEXT, attributes TEXT NOT NULL, created_at TEXT NOT NULL,"
    " PRIMARY KEY (run_id, seq)) WITHOUT ROWID",
)
_SQLITE_FENCE = (
    "SELECT 1 FROM floor_runs WHERE run_id = ?1 AND owner = ?2 AND status = 'running'"
    " AND wake_at <= ?4 AND NOT EXISTS (SELECT 1 FROM floor_history h"
    " WHERE h.run_id = ?1 AND h.seq >= ?3)"
)
_SQLITE_APPEND = (
    "INSERT INTO floor_history (run_id, seq, event_type, name, attributes, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)

_PG_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS floor_runs (run_id TEXT PRIMARY KEY, owner TEXT,"
    " next_seq BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS floor_history (run_id TEXT NOT NULL, seq BIGINT NOT NULL,"
    " event_type TEXT NOT NULL, name TEXT, attributes JSONB NOT NULL,"
    " created_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (run_id, seq))",
)
_PG_STEP = (
    "WITH fence AS (UPDATE floor_runs SET next_seq = %(next)s"
    " WHERE run_id = %(run)s AND owner = %(owner)s AND next_seq = %(seq)s RETURNING 1)"
    " INSERT INTO floor_history (run_id, seq, event_type, name, attributes, created_at)"
    " SELECT %(run)s, v.seq, v.event_type, 'noop', v.attributes::jsonb, now()"
    " FROM (VALUES (%(seq)s::bigint, 'activity_completed', %(done)s),"
    " (%(seq)s::bigint + 1, 'activity_scheduled', %(next_attrs)s)) v(seq, event_type, attributes)"
    " WHERE EXISTS (SELECT 1 FROM fence)"
)


class _Activity:
    """What the workflow awaits: the engine fills in ``result`` and resumes it."""

    def __init__(self, arg: int) -> None:
        self.arg = arg
        self.result: Any = None

    def __await__(self) -> Generator[_Activity, None, Any]:
        yield self
        return self.result


async def _noop(i: int) -> int:
    return i


async def _workflow(n: int) -> int:
    for i in range(n):
        await _Activity(i)
    return n


async def _run(steps: int, commit: Callable[[int, str, str], None]) -> None:
    """Drive one workflow of ``steps`` activities; ``commit(seq, done, scheduled)``
    durably records a step's two events (JSON) and raises if its fence fails."""
    workflow = _workflow(steps)
    pending = workflow.send(None)
    seq = 1
    while True:
        pending.result = await _noop(pending.arg)
        try:
            following = workflow.send(None)
        except StopIteration:
            return
        done = json.dumps({"activity_id": seq, "attempt": 1, "result": pending.result})
        scheduled = json.dumps(
            {"activity_id": seq + 1, "activity_type": "noop", "args": [following.arg]}
        )
        commit(seq, done, scheduled)
        seq += 2
        pending = following


def _timed(steps: int, commit: Callable[[int, str, str], None]) -> dict[str, float]:
    started, cpu = time.perf_counter(), time.process_time()
    asyncio.run(_run(steps, commit))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"floor_steps_per_s": steps / elapsed, "floor_cpu_ms": cpu / steps * 1000}


def sqlite_floor(conn: sqlite3.Connection, steps: int, run_id: str) -> dict[str, float]:
    """``conn``: autocommit (``isolation_level=None``), the limit loop's settings."""
    for ddl in _SQLITE_SCHEMA:
        conn.execute(ddl)
    conn.execute("INSERT INTO floor_runs VALUES (?, 'me', 'running', '2000-01-01')", (run_id,))
    stamp = "2026-01-01T00:00:00.000000+00:00"

    def commit(seq: int, done: str, scheduled: str) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute(_SQLITE_FENCE, (run_id, "me", seq, "9999")).fetchone() is None:
                raise RuntimeError("fence failed")
            conn.executemany(
                _SQLITE_APPEND,
                [
                    (run_id, seq, "activity_completed", "noop", done, stamp),
                    (run_id, seq + 1, "activity_scheduled", "noop", scheduled, stamp),
                ],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    return _timed(steps, commit)


def postgres_floor(url: str, steps: int, run_id: str) -> dict[str, float]:
    import psycopg

    with psycopg.connect(url, autocommit=True, prepare_threshold=0) as conn:
        for ddl in _PG_SCHEMA:
            conn.execute(ddl)
        conn.execute("INSERT INTO floor_runs VALUES (%s, 'me', 1)", (run_id,))

        def commit(seq: int, done: str, scheduled: str) -> None:
            params = {
                "run": run_id,
                "owner": "me",
                "seq": seq,
                "next": seq + 2,
                "done": done,
                "next_attrs": scheduled,
            }
            if conn.execute(_PG_STEP, params).rowcount != 2:
                raise RuntimeError("fence failed")

        return _timed(steps, commit)
