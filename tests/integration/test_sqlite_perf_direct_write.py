"""SQLite: a step's write that nothing could join runs at once, in its caller's task.

With no other callback ready in the event loop, no other write can be submitted before
the loop next waits for I/O, so the flush callback (a turn of the loop between a
sequential workflow's step and its commit) gained nothing. These check that such writes
(``write_now``, what a step's commit uses) go direct and come back already committed,
that writes submitted together still share one commit, that back-to-back direct writes
still let the loop turn, and that errors and another process's write lock behave as on
the flush path.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from loop_kit import ticking

import perdure
from perdure import WorkflowContext
from perdure._store._sqlite import SQLiteStore
from perdure._store._sqlite_db import SQLiteDB
from perdure._store._turns import YIELD_EVERY


async def open_db(tmp_path: Path) -> SQLiteDB:
    db = SQLiteDB(str(tmp_path / "d.db"))
    await db.write(lambda conn: conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
    return db


def insert(k: int) -> Callable[[sqlite3.Connection], int]:
    def tx(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO t (k) VALUES (?)", (k,))
        return k

    return tx


def turns_in(seconds: float) -> int:
    """How many writes of a run that long may have let the loop turn instead."""
    return int(seconds / YIELD_EVERY) + 1


def count(db: SQLiteDB) -> asyncio.Future[int]:
    return db.read(lambda conn: int(conn.execute("SELECT count(*) FROM t").fetchone()[0]))


async def test_sequential_writes_go_direct_and_come_back_committed(tmp_path: Path) -> None:
    db = await open_db(tmp_path)
    try:
        direct, commits = db.direct, db.commits
        started = time.monotonic()
        for k in range(50):
            future = db.write_now(insert(k))
            if db.direct - direct == k + 1:
                # Ran in this call: committed, and readable by another connection.
                assert future.done()
                other = sqlite3.connect(tmp_path / "d.db")
                assert other.execute("SELECT 1 FROM t WHERE k = ?", (k,)).fetchone()
                other.close()
            assert await future == k
        # Some take the flush callback instead, to let the loop turn: one per 5 ms.
        assert db.direct - direct >= 50 - turns_in(time.monotonic() - started) - 2
        assert db.commits - commits == 50
        assert await count(db) == 50
    finally:
        await db.close()


async def test_writes_from_tasks_started_together_share_one_commit(tmp_path: Path) -> None:
    """As the store's callers do, each task awaits its own write: when the first runs,
    the others are ready, so nothing goes direct and the group is one commit."""
    db = await open_db(tmp_path)

    async def write(k: int) -> int:
        return await db.write_now(insert(k))

    try:
        direct, commits = db.direct, db.commits
        assert await asyncio.gather(*(write(k) for k in range(20))) == list(range(20))
        # The last task may find nothing else ready: then it goes alone, directly.
        assert db.commits - commits <= 2
        assert db.direct - direct <= 1
    finally:
        await db.close()


async def test_a_step_write_joins_writes_already_waiting(tmp_path: Path) -> None:
    db = await open_db(tmp_path)
    try:
        direct, commits = db.direct, db.commits
        first = db.write(insert(1))
        second = db.write_now(insert(2))
        assert not second.done()
        assert await asyncio.gather(first, second) == [1, 2]
        assert (db.direct - direct, db.commits - commits) == (0, 1)
    finally:
        await db.close()


async def test_back_to_back_direct_writes_let_the_loop_turn(tmp_path: Path) -> None:
    """A direct write's caller finds its future done and never yields: a thousand in a
    row (a sequential workflow's steps) would hold every timer and lease renewal until
    the last. Every few milliseconds one takes the flush callback and the loop turns."""
    db = SQLiteDB(str(tmp_path / "d.db"), synchronous="OFF")  # as fast as writes go
    await db.write(lambda conn: conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
    try:
        async with ticking() as ticks:
            before, direct = ticks.count, db.direct
            started = time.monotonic()
            for k in range(2000):
                assert await db.write_now(insert(k)) == k
            elapsed = time.monotonic() - started
            # They did go direct, but for one write per 5 ms (a turn of the loop) and
            # one per tick (the ticker ready to run when the write came).
            ticked = ticks.count - before
            assert db.direct - direct >= 2000 - turns_in(elapsed) - ticked - 2
            # Held for all of them, the ticker would have run once; it runs about every
            # 5 ms of the writes instead (checked against how long they took, not a clock).
            assert ticked >= min(10, turns_in(elapsed) // 2)
            assert ticked >= 2
    finally:
        await db.close()


async def test_a_failing_direct_write_raises_and_leaves_nothing(tmp_path: Path) -> None:
    db = await open_db(tmp_path)
    try:
        await db.write_now(insert(1))
        direct = db.direct

        def half_then_fail(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO t (k) VALUES (2)")
            conn.execute("INSERT INTO t (k) VALUES (1)")  # taken: IntegrityError

        with pytest.raises(sqlite3.IntegrityError):
            await db.write_now(half_then_fail)
        assert db.direct == direct + 1
        assert await db.write_now(insert(3)) == 3
        assert await db.read(lambda c: [r[0] for r in c.execute("SELECT k FROM t ORDER BY k")]) == [
            1,
            3,
        ]
    finally:
        await db.close()


async def test_a_direct_write_meeting_another_process_lock_waits_without_blocking(
    tmp_path: Path,
) -> None:
    db = await open_db(tmp_path)
    locked, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        conn = sqlite3.connect(tmp_path / "d.db", isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        locked.set()
        release.wait(10)
        conn.execute("COMMIT")
        conn.close()

    await db.write_now(insert(0))  # connected before the lock
    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        holder_ready = await asyncio.to_thread(locked.wait, 10)
        assert holder_ready
        direct = db.direct
        future = db.write_now(insert(1))
        assert not future.done()  # busy: it waits for a retry instead of blocking here
        await asyncio.sleep(0.1)
        assert not future.done()
        release.set()
        assert await asyncio.wait_for(future, 10) == 1
        assert db.direct - direct <= 1
        assert await count(db) == 2
    finally:
        release.set()
        holder.join()
        await db.close()


async def test_a_sequential_workflow_steps_go_direct(tmp_path: Path) -> None:
    app = perdure.App(f"sqlite:///{tmp_path / 'w.db'}")

    @app.activity
    async def add_one(x: int) -> int:
        return x + 1

    @app.workflow
    async def count_up(ctx: WorkflowContext, n: int) -> int:
        x = 0
        for _ in range(n):
            x = await ctx.activity(add_one, x)
        return x

    async with app, app.worker():
        await app.execute_workflow(count_up, 3)  # warm: connected, cached
        store = await app._get_store()
        assert isinstance(store, SQLiteStore)
        db = store.db
        direct = db.direct
        started = time.monotonic()
        assert await app.execute_workflow(count_up, 100) == 100
        # The start and the close go with the first and last step: 100 step commits, of
        # which only those that let the loop turn (and those that met a timer or a
        # lease renewal ready to run) took the flush callback.
        assert db.direct - direct >= 100 - turns_in(time.monotonic() - started) - 5
