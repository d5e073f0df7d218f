"""SQLite group commit without a savepoint per write: a failing write still undoes
only itself, whether it changed something before failing or not, in both I/O modes."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from perdure._store._sqlite_db import SQLiteDB


class Boom(Exception):
    pass


def insert(value: str, *, then_fail: bool = False) -> Callable[[sqlite3.Connection], str]:
    def tx(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO t (v) VALUES (?)", (value,))
        if then_fail:
            raise Boom(value)
        return value

    return tx


def fail_clean(conn: sqlite3.Connection) -> None:
    # Changes nothing before failing, like a fence that matched no row.
    conn.execute("UPDATE t SET v = 'never' WHERE v = 'absent'")
    raise Boom("clean")


def fail_in_statement(conn: sqlite3.Connection) -> None:
    # The statement itself is refused (and undone by SQLite) after a row went in.
    conn.executemany("INSERT INTO u (k) VALUES (?)", [(1,), (1,)])


async def open_db(tmp_path: Path, io: str) -> SQLiteDB:
    db = SQLiteDB(str(tmp_path / "g.db"), io=io)

    def schema(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE t (v TEXT NOT NULL)")
        conn.execute("CREATE TABLE u (k INTEGER PRIMARY KEY)")

    await db.write(schema)
    return db


async def rows(db: SQLiteDB) -> list[str]:
    return await db.read(lambda c: [r[0] for r in c.execute("SELECT v FROM t ORDER BY v")])


@pytest.mark.parametrize("io", ["loop", "thread"])
async def test_failing_writes_in_a_group_undo_only_themselves(tmp_path: Path, io: str) -> None:
    db = await open_db(tmp_path, io)
    try:
        outcomes = await asyncio.gather(
            db.write(insert("a")),
            db.write(insert("b", then_fail=True)),  # changed a row, then failed
            db.write(insert("c")),
            db.write(fail_clean),
            db.write(fail_in_statement),
            db.write(insert("d")),
            return_exceptions=True,
        )
        assert outcomes[0] == "a" and outcomes[2] == "c" and outcomes[5] == "d"
        assert isinstance(outcomes[1], Boom) and isinstance(outcomes[3], Boom)
        assert isinstance(outcomes[4], sqlite3.IntegrityError)
        assert await rows(db) == ["a", "c", "d"]
        assert await db.read(lambda c: c.execute("SELECT count(*) FROM u").fetchone()[0]) == 0
    finally:
        await db.close()


@pytest.mark.parametrize("io", ["loop", "thread"])
async def test_a_lone_failing_write_is_rolled_back(tmp_path: Path, io: str) -> None:
    db = await open_db(tmp_path, io)
    try:
        with pytest.raises(Boom):
            await db.write(insert("x", then_fail=True))
        with pytest.raises(Boom):
            await db.write(fail_clean)
        assert await db.write(insert("y")) == "y"
        assert await rows(db) == ["y"]
    finally:
        await db.close()


async def test_groups_after_a_rerun_keep_working(tmp_path: Path) -> None:
    db = await open_db(tmp_path, "loop")
    try:
        for round_ in range(3):
            outcomes = await asyncio.gather(
                *(db.write(insert(f"{round_}-{i}", then_fail=i % 3 == 1)) for i in range(9)),
                return_exceptions=True,
            )
            assert [isinstance(o, Boom) for o in outcomes] == [i % 3 == 1 for i in range(9)]
        assert await rows(db) == sorted(
            f"{r}-{i}" for r in range(3) for i in range(9) if i % 3 != 1
        )
    finally:
        await db.close()


async def test_large_groups_keep_order_and_isolation(tmp_path: Path) -> None:
    # Writes and reads sent while a large group is being written wait for its commit;
    # failures in a large group undo only themselves.
    db = await open_db(tmp_path, "loop")
    try:
        first = [db.write(insert(f"a{i:02d}")) for i in range(40)]
        tasks = [asyncio.ensure_future(w) for w in first]
        await asyncio.sleep(0)  # the first group is flushed
        later = await asyncio.gather(
            db.read(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0]),
            *(db.write(insert(f"b{i:02d}")) for i in range(20)),
        )
        assert await asyncio.gather(*tasks) == [f"a{i:02d}" for i in range(40)]
        assert later[0] >= 40  # the read ran after the first group committed
        assert later[1:] == [f"b{i:02d}" for i in range(20)]
        outcomes = await asyncio.gather(
            *(db.write(insert(f"c{i:02d}", then_fail=i in (3, 17))) for i in range(30)),
            db.write(fail_clean),
            return_exceptions=True,
        )
        assert [isinstance(o, Boom) for o in outcomes] == [i in (3, 17) for i in range(30)] + [True]
        expected = [f"a{i:02d}" for i in range(40)] + [f"b{i:02d}" for i in range(20)]
        expected += [f"c{i:02d}" for i in range(30) if i not in (3, 17)]
        assert await rows(db) == sorted(expected)
        assert db.commits >= 3
    finally:
        await db.close()


async def test_a_group_commits_off_the_loop_and_what_follows_waits_for_it(
    tmp_path: Path,
) -> None:
    # On the loop, a group's COMMIT (its fsync) runs on a helper thread while the loop
    # goes on; a lone write commits on the loop (no thread hop on a sequential path).
    # A read submitted with the group answers only after the group is durable.
    db = await open_db(tmp_path, "loop")
    try:
        await db.write(insert("warm"))
        committed_on: list[str] = []
        assert db._conn is not None
        db._conn.set_trace_callback(
            lambda sql: (
                committed_on.append(threading.current_thread().name) if sql == "COMMIT" else None
            )
        )
        loop_thread = threading.current_thread().name
        outcomes = await asyncio.gather(
            db.write(insert("g1")),
            db.write(insert("g2")),
            db.read(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0]),
        )
        assert outcomes == ["g1", "g2", 3]
        assert len(committed_on) == 1 and committed_on[0] != loop_thread
        assert await db.write(insert("lone")) == "lone"
        assert committed_on[1:] == [loop_thread]
    finally:
        await db.close()


async def test_a_group_whose_commit_fails_leaves_nothing(tmp_path: Path) -> None:
    # A deferred foreign key is only checked at COMMIT: that COMMIT fails (on the
    # helper thread), every write of the group hears it, and none of them stays.
    db = await open_db(tmp_path, "loop")

    def schema(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        conn.execute(
            "CREATE TABLE child (pid INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)"
        )

    def orphan(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO child (pid) VALUES (42)")

    try:
        await db.write(schema)
        outcomes = await asyncio.gather(
            db.write(insert("x")), db.write(orphan), db.write(insert("y")), return_exceptions=True
        )
        assert all(isinstance(o, sqlite3.IntegrityError) for o in outcomes), outcomes
        assert await rows(db) == []
        assert await asyncio.gather(db.write(insert("z")), db.write(insert("w"))) == ["z", "w"]
        assert await rows(db) == ["w", "z"]
    finally:
        await db.close()
