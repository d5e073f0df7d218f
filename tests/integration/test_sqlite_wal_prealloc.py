"""A worker grows its SQLite WAL to working size before its steps append to it, and the
zeros past the last frame never read as data: a copy of the files taken mid-run (what a
crash leaves) opens with exactly the committed rows, before and after the WAL wrapped."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import perdure
from perdure import WorkflowContext
from perdure._store._sqlite_wal import preallocate_wal, wal_target_size


def _app(db: Path) -> perdure.App:
    app = perdure.App(f"sqlite:///{db}")

    @app.activity
    async def double(x: int) -> int:
        return 2 * x

    @app.workflow(name="doubles")
    async def doubles(ctx: WorkflowContext, n: int) -> int:
        total = 0
        for i in range(n):
            total += await ctx.activity(double, i)
        return total

    return app


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    return conn


def _extend(conn: sqlite3.Connection) -> int:
    conn.execute("BEGIN IMMEDIATE")
    added = preallocate_wal(conn)
    conn.execute("COMMIT")
    return added


def _crash_copy(src: Path, dst: Path) -> None:
    """The files as a power cut would leave them: no checkpoint, WAL not deleted."""
    for suffix in ("", "-wal"):
        shutil.copyfile(f"{src}{suffix}", f"{dst}{suffix}")


def _rows(path: Path) -> tuple[int, str]:
    conn = sqlite3.connect(path)
    try:
        count = conn.execute("SELECT count(*) FROM t").fetchone()[0]
        check = conn.execute("PRAGMA integrity_check").fetchone()[0]
        return int(count), str(check)
    finally:
        conn.close()


async def test_worker_start_preallocates_and_runs(tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    app = _app(db)
    async with app.worker():
        conn = _connect(db)
        target = wal_target_size(conn)
        conn.close()
        assert target > 4_000_000  # 1,000 frames of 4 KiB pages and a quarter more
        assert Path(f"{db}-wal").stat().st_size >= target
        handle = await app.start_workflow("doubles", 50)
        assert await handle.result() == sum(2 * i for i in range(50))
    await app.close()
    reopened = _app(db)
    history = await reopened.get_handle(handle.workflow_id).history()
    assert sum(1 for e in history if e.event_type == "activity_completed") == 50
    await reopened.close()


def test_crash_copy_sees_exactly_the_committed_rows(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    conn = _connect(db)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    added = _extend(conn)
    wal_size = Path(f"{db}-wal").stat().st_size
    assert added > 0 and wal_size == wal_target_size(conn)
    committed = 0
    for round_ in range(3):
        # Round 0 stays in the zeroed part; later rounds wrap the WAL (checkpoints
        # start it over) so stale frames and zeros both lie past the last frame.
        for i in range(1_500):
            conn.execute("INSERT INTO t (v) VALUES (?)", (f"{round_}-{i}" * 20,))
            committed += 1
        copy = tmp_path / f"copy{round_}.db"
        _crash_copy(db, copy)
        assert _rows(copy) == (committed, "ok")
    # The WAL kept (or outgrew) its preallocated size: never truncated under us.
    assert Path(f"{db}-wal").stat().st_size >= wal_size
    conn.close()


def test_only_what_is_missing_and_only_where_it_applies(tmp_path: Path) -> None:
    conn = _connect(tmp_path / "a.db")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    assert _extend(conn) > 0
    assert _extend(conn) == 0  # already at size
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    assert wal_target_size(conn) == 0
    conn.close()

    memory = sqlite3.connect(":memory:", isolation_level=None)
    assert _extend(memory) == 0
    memory.close()

    rollback = sqlite3.connect(tmp_path / "r.db", isolation_level=None)
    rollback.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    assert _extend(rollback) == 0
    assert not Path(f"{tmp_path / 'r.db'}-wal").exists()
    rollback.close()
