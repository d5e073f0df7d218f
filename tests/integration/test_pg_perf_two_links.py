"""PostgreSQL group commit keeps several batches in flight, each on its own connection.

With one connection the worker sat idle while the server executed and committed each
batch (a third of W2's time on PostgreSQL, py-spy): the next batch could only go out
after it. Now the next batch goes out on another connection meanwhile. A blocked
batch (here: one waiting for a lock) does not hold back the writes after it, a
sequential caller keeps using one connection, and results never mix.
"""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from pgserver import Databases

from perdure._store._postgres_db import Database, GroupCommit, RawQuery, parse_url

ECHO = RawQuery.parse("SELECT %(k)s::integer")
LOCKED = RawQuery.parse("SELECT %(k)s::integer FROM pg_advisory_xact_lock(4242)")


def setup(postgres: Databases) -> tuple[str, Database]:
    url = postgres.url_for(postgres.create(postgres.template("postgres")))
    return url, Database(parse_url(url), generic_plans=True)


async def test_a_blocked_batch_does_not_hold_back_the_next(postgres: Databases) -> None:
    url, db = setup(postgres)
    group = GroupCommit(db)
    holder = await psycopg.AsyncConnection.connect(url)
    try:
        await holder.execute("SELECT pg_advisory_xact_lock(4242)")  # held: its tx is open
        blocked = asyncio.ensure_future(group.submit((LOCKED, {"k": 1})))
        await asyncio.sleep(0.05)  # the first batch is out, waiting for the lock
        assert not blocked.done()
        # The next writes go out on the other connection and commit meanwhile.
        assert await asyncio.wait_for(
            asyncio.gather(*(group.submit((ECHO, {"k": k})) for k in range(5))), 10
        ) == [[k] for k in range(5)]
        assert not blocked.done()
        await holder.rollback()  # lets the first batch through
        assert await asyncio.wait_for(blocked, 10) == [1]
    finally:
        await holder.close()
        await group.close()
        await db.close()


async def test_sequential_writes_use_one_connection(postgres: Databases) -> None:
    _, db = setup(postgres)
    group = GroupCommit(db)
    try:
        for k in range(10):
            assert await asyncio.wait_for(group.submit((ECHO, {"k": k})), 10) == [k]
        first, *others = group._links
        assert first._conn is not None
        assert all(link._conn is None for link in others)  # never needed
    finally:
        await group.close()
        await db.close()


async def test_many_concurrent_writes_each_get_their_own_result(postgres: Databases) -> None:
    _, db = setup(postgres)
    group = GroupCommit(db, max_batch=16)
    try:
        for _ in range(3):
            values = await asyncio.wait_for(
                asyncio.gather(*(group.submit((ECHO, {"k": k})) for k in range(200))), 30
            )
            assert values == [[k] for k in range(200)]
        assert group.writes == 600 and group.transactions >= 600 // 16
        assert all(link._conn is not None for link in group._links)  # all were used
    finally:
        await group.close()
        await db.close()


async def test_a_lone_write_of_several_statements_is_one_transaction(
    postgres: Databases,
) -> None:
    # A run's start and its first step, sent alone, go out through libpq's pipeline
    # mode as BEGIN, the statements, COMMIT: all or nothing, each statement's value back.
    url, db = setup(postgres)
    group = GroupCommit(db)
    make = RawQuery.parse("CREATE TABLE IF NOT EXISTS t (k integer PRIMARY KEY, v text)")
    put = RawQuery.parse("INSERT INTO t (k, v) VALUES (%(k)s, %(v)s) RETURNING k")
    name = RawQuery.parse("SELECT v FROM t WHERE k = %(k)s")
    try:
        await group.submit((make, {}))
        assert await group.submit((put, {"k": 1, "v": "a"}), (put, {"k": 2, "v": "b"})) == [1, 2]
        assert await group.submit((put, {"k": 3, "v": "c"}), (name, {"k": 3})) == [3, "c"]
        with pytest.raises(psycopg.errors.UniqueViolation):
            await group.submit((put, {"k": 4, "v": "d"}), (put, {"k": 1, "v": "again"}))
        # Nothing of the failed write stayed, and the group goes on.
        assert await group.submit((name, {"k": 4}), (name, {"k": 1})) == [None, "a"]
        async with await psycopg.AsyncConnection.connect(url) as conn:
            rows = await (await conn.execute("SELECT k, v FROM t ORDER BY k")).fetchall()
        assert rows == [(1, "a"), (2, "b"), (3, "c")]
    finally:
        await group.close()
        await db.close()
