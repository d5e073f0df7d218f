"""PostgreSQL: a write that nothing could join goes out at once, from its caller's task.

With no other callback ready in the event loop, no other write can be submitted before
the loop next waits for I/O, so a flusher task (and its two extra turns of the loop per
statement) gained nothing for a sequential workflow's steps. These check that such writes
go direct, every time (no callback left behind in the loop stops the next one), that
writes submitted together still share one transaction, that writes arriving while a
direct one is out take the other link, that a slow one does not hold up the event loop
(its answer is awaited in a short blocking poll, then through the loop), and that errors
and cancellation leave the group usable.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from loop_kit import ticking
from pgserver import Databases

from perdure._store import _postgres_db as pgdb
from perdure._store._postgres_db import Database, GroupCommit, RawQuery, parse_url

ECHO = RawQuery.parse("SELECT %(k)s::integer")
SLOW = RawQuery.parse("SELECT %(k)s::integer FROM pg_sleep(%(ms)s::integer / 1000.0)")
BAD = RawQuery.parse("SELECT 1 / %(k)s::integer")


async def _group(postgres: Databases) -> tuple[Database, GroupCommit]:
    url = postgres.url_for(postgres.create(postgres.template("postgres")))
    db = Database(parse_url(url), generic_plans=True)
    return db, GroupCommit(db)


async def _close(db: Database, group: GroupCommit) -> None:
    await group.close()
    await db.close()


async def echo(group: GroupCommit, k: int) -> Any:
    return (await asyncio.wait_for(group.submit((ECHO, {"k": k})), 10))[0]


async def test_sequential_writes_all_go_direct(postgres: Databases) -> None:
    db, group = await _group(postgres)
    try:
        assert [await echo(group, k) for k in range(30)] == list(range(30))
        # The first may meet a callback of the connection's setup; then every one.
        assert group.direct >= 29
        assert group.transactions == 30
        assert not group._flushers
    finally:
        await _close(db, group)


async def test_writes_submitted_together_share_a_transaction(postgres: Databases) -> None:
    db, group = await _group(postgres)
    try:
        await echo(group, 0)  # connect first
        direct, transactions = group.direct, group.transactions
        values = await asyncio.gather(*(echo(group, k) for k in range(40)))
        assert values == list(range(40))
        assert group.direct == direct  # each saw the others ready behind it
        assert group.transactions - transactions <= 3
    finally:
        await _close(db, group)


async def test_writes_arriving_during_a_direct_one_use_the_other_link(
    postgres: Databases,
) -> None:
    db, group = await _group(postgres)
    try:
        await echo(group, 0)
        before = group.direct
        slow = asyncio.create_task(group.submit((SLOW, {"k": 7, "ms": 300})))
        await asyncio.sleep(0.1)  # it went out alone, direct
        assert group.direct == before + 1
        fast = await asyncio.wait_for(asyncio.gather(*(echo(group, k) for k in range(5))), 0.25)
        assert fast == list(range(5))  # done while the slow one still runs
        assert not slow.done()
        assert await slow == [7]
        assert await echo(group, 9) == 9
    finally:
        await _close(db, group)


async def test_a_failing_direct_write_raises_and_the_next_goes_through(
    postgres: Databases,
) -> None:
    db, group = await _group(postgres)
    try:
        await echo(group, 0)
        with pytest.raises(psycopg.errors.DivisionByZero):
            await group.submit((BAD, {"k": 0}))
        assert await echo(group, 1) == 1
        assert len(group._free) == len(group._links)  # every link back
    finally:
        await _close(db, group)


async def test_a_cancelled_direct_write_frees_its_link(postgres: Databases) -> None:
    db, group = await _group(postgres)
    try:
        await echo(group, 0)
        slow = asyncio.create_task(group.submit((SLOW, {"k": 1, "ms": 5000})))
        await asyncio.sleep(0.1)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        assert len(group._free) == len(group._links)
        assert [await echo(group, k) for k in range(3)] == [0, 1, 2]
    finally:
        await _close(db, group)


async def test_a_slow_write_waits_briefly_then_leaves_the_loop_running(
    postgres: Databases, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, group = await _group(postgres)
    waits: list[int] = []
    readable = pgdb._readable

    def spied(fd: int, wait_ms: int = 0) -> bool:
        waits.append(wait_ms)
        return readable(fd, wait_ms)

    monkeypatch.setattr(pgdb, "_readable", spied)
    try:
        await echo(group, 0)
        async with ticking() as ticks:
            before, direct = ticks.count, group.direct
            for k in range(1000):
                assert (await group.submit((ECHO, {"k": k})))[0] == k
            assert group.direct - direct >= 900  # they did go direct
            # Held for all of them, the ticker would have run once or twice, not dozens.
            assert ticks.count - before >= 10
    finally:
        await _close(db, group)


async def test_back_to_back_direct_writes_let_the_loop_turn(postgres: Databases) -> None:
    """Answers that come within the short wait never yield: a thousand writes in a row
    from one task (a sequential workflow's steps) would hold every timer, lease renewal
    and other connection until the last. They let the loop turn every few ms."""
    db, group = await _group(postgres)
    try:
        await echo(group, 0)
        ticks = 0
        done = False

        async def ticker() -> None:  # a timer: never in the ready queue when a write goes
            nonlocal ticks
            while not done:
                await asyncio.sleep(0.001)
                ticks += 1

        ticking = asyncio.create_task(ticker())
        await asyncio.sleep(0.01)
        before, direct = ticks, group.direct
        for k in range(1000):
            assert (await group.submit((ECHO, {"k": k})))[0] == k
        assert group.direct - direct >= 900  # they did go direct
        # Held for all of them, the ticker would have run once or twice, not dozens.
        assert ticks - before >= 10
        done = True
        await ticking
    finally:
        await _close(db, group)
