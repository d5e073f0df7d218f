"""PostgreSQL: a full batch goes out at once, from the task that filled it.

A flusher task runs only after every callback already waiting in the event loop: a
thousand starts at once queued all their first steps before the first batch went out,
the server sat idle meanwhile, and the worker then sat idle while the batches ran. These
check that a full batch is on its way before the loop turns, that cancelling the task
that sent it loses none of the others' writes, that a failing write fails alone, that
statements new to a connection are prepared within the batch, and that a worker's
thousand starts at once go out that way and all complete.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from pg_store_kit import new_run, opened
from pgserver import Databases

from perdure._store import open_store
from perdure._store._postgres import PostgresStore
from perdure._store._postgres_db import Database, GroupCommit, RawQuery, parse_url

ECHO = RawQuery.parse("SELECT %(k)s::integer")
DOUBLE = RawQuery.parse("SELECT 2 * %(k)s::integer")
BAD = RawQuery.parse("SELECT 1 / %(k)s::integer")
BATCH = 8


async def _group(postgres: Databases) -> tuple[Database, GroupCommit]:
    url = postgres.url_for(postgres.create(postgres.template("postgres")))
    db = Database(parse_url(url), generic_plans=True)
    group = GroupCommit(db, raw=True, max_batch=BATCH)
    # Once writes queue up, the links that never connected do (in the background).
    await asyncio.gather(*(group.submit((ECHO, {"k": k})) for k in range(3)))
    for _ in range(100):
        if all(not link.cold() for link in group._links) and len(group._free) == len(group._links):
            break
        await asyncio.sleep(0.02)
    assert all(not link.cold() for link in group._links)
    return db, group


async def _close(db: Database, group: GroupCommit) -> None:
    await group.close()
    await db.close()


def _submit_all(group: GroupCommit, writes: list[tuple[RawQuery, dict[str, Any]]]) -> list[Any]:
    return [asyncio.ensure_future(group.submit(write)) for write in writes]


async def test_a_full_batch_is_sent_before_the_loop_turns(postgres: Databases) -> None:
    db, group = await _group(postgres)
    try:
        seen: list[tuple[int, int]] = []
        tasks = _submit_all(group, [(DOUBLE, {"k": k}) for k in range(BATCH)])
        # Runs after every task's first step, as a flusher task would.
        asyncio.get_running_loop().call_soon(lambda: seen.append((group.eager, len(group._queue))))
        values = await asyncio.wait_for(asyncio.gather(*tasks), 10)
        assert values == [[2 * k] for k in range(BATCH)]
        assert seen == [(1, 0)]  # sent by the eighth write's task, nothing left queued
        assert group.transactions >= 1 and len(group._free) == len(group._links)
    finally:
        await _close(db, group)


async def test_several_full_batches_each_go_out_at_once(postgres: Databases) -> None:
    db, group = await _group(postgres)
    try:
        n = BATCH * len(group._links)
        tasks = _submit_all(group, [(ECHO, {"k": k}) for k in range(n)])
        values = await asyncio.wait_for(asyncio.gather(*tasks), 10)
        assert values == [[k] for k in range(n)]
        assert group.eager == len(group._links)
        assert [await group.submit((ECHO, {"k": 5}))] == [[5]]  # and it goes on
    finally:
        await _close(db, group)


async def test_cancelling_the_sender_loses_no_write_of_its_batch(postgres: Databases) -> None:
    db, group = await _group(postgres)
    try:
        tasks = _submit_all(group, [(ECHO, {"k": k}) for k in range(BATCH)])
        for _ in range(3):
            await asyncio.sleep(0)
        assert group.eager == 1
        tasks[-1].cancel()  # the task that sent the batch
        with pytest.raises(asyncio.CancelledError):
            await tasks[-1]
        values = await asyncio.wait_for(asyncio.gather(*tasks[:-1]), 10)
        assert values == [[k] for k in range(BATCH - 1)]
        assert [await group.submit((ECHO, {"k": 9}))] == [[9]]
        assert len(group._free) == len(group._links)
    finally:
        await _close(db, group)


async def test_a_failing_write_in_a_sent_batch_fails_alone(postgres: Databases) -> None:
    db, group = await _group(postgres)
    try:
        writes = [(ECHO, {"k": k}) for k in range(BATCH)]
        writes[3] = (BAD, {"k": 0})  # division by zero: the batch rolls back
        tasks = _submit_all(group, writes)
        done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        assert group.eager == 1
        assert isinstance(done[3], psycopg.errors.DivisionByZero)
        assert [v for i, v in enumerate(done) if i != 3] == [[k] for k in range(BATCH) if k != 3]
        assert [await group.submit((ECHO, {"k": 1}))] == [[1]]
        assert len(group._free) == len(group._links)
    finally:
        await _close(db, group)


async def test_statements_new_to_a_connection_are_prepared_in_the_batch(
    postgres: Databases,
) -> None:
    db, group = await _group(postgres)
    try:
        fresh = RawQuery.parse("SELECT 3 * %(k)s::integer")
        assert all(fresh.name not in link._prepared for link in group._links)
        tasks = _submit_all(group, [(fresh, {"k": k}) for k in range(BATCH)])
        values = await asyncio.wait_for(asyncio.gather(*tasks), 10)
        assert values == [[3 * k] for k in range(BATCH)] and group.eager == 1
        assert sum(fresh.name in link._prepared for link in group._links) == 1
        # Prepared for good: the next full batch on that link sends no PREPARE again.
        tasks = _submit_all(group, [(fresh, {"k": k}) for k in range(BATCH)])
        assert await asyncio.wait_for(asyncio.gather(*tasks), 10) == values
    finally:
        await _close(db, group)


async def test_a_thousand_starts_at_once_go_out_in_full_batches(postgres: Databases) -> None:
    store = await opened(postgres)
    try:
        runs = [new_run(f"burst-{i}") for i in range(1000)]
        await asyncio.gather(*(store.start_run(r) for r in runs[:3]))  # the links connect
        for _ in range(100):
            if len(store._group._free) == len(store._group._links):
                break
            await asyncio.sleep(0.02)
        started = await asyncio.wait_for(
            asyncio.gather(*(store.start_run(r) for r in runs[3:])), 60
        )
        assert started == [(r.run_id, True) for r in runs[3:]]
        assert store._group.eager >= 1
        async with await psycopg.AsyncConnection.connect(store.settings.conninfo) as conn:
            cur = await conn.execute("SELECT workflow_id FROM perdure.workflows")
            assert {row[0] for row in await cur.fetchall()} == {r.workflow_id for r in runs}
    finally:
        await store.close()


async def test_one_group_commit_connection_is_enough(postgres: Databases) -> None:
    url = postgres.url_for(postgres.create(postgres.template("postgres")))
    store = open_store(f"{url}?group_commit_connections=1")
    assert isinstance(store, PostgresStore)
    await store.migrate()
    try:
        assert len(store._group._links) == 1
        runs = [new_run(f"one-link-{i}") for i in range(600)]
        started = await asyncio.wait_for(asyncio.gather(*(store.start_run(r) for r in runs)), 60)
        assert started == [(r.run_id, True) for r in runs]
        more = [new_run(f"one-link-b-{i}") for i in range(600)]  # the link is warm now
        started = await asyncio.wait_for(asyncio.gather(*(store.start_run(r) for r in more)), 60)
        assert started == [(r.run_id, True) for r in more]
        assert store._group.eager >= 1
    finally:
        await store.close()
