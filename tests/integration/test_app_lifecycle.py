"""An App outlives its connections: close() releases them, the next use opens new ones.

The pattern this keeps working: one module-level ``app`` with its decorators, used by
several ``asyncio.run`` calls in turn (scripts, CLI commands, test functions), each
closing it at the end.
"""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

import perdure
from perdure import WorkflowContext


def _app(database_url: str) -> perdure.App:
    app = perdure.App(database_url)

    @app.activity
    async def add_one(n: int) -> int:
        return n + 1

    @app.workflow(name="twice")
    async def twice(ctx: WorkflowContext, n: int) -> int:
        return await ctx.activity(add_one, await ctx.activity(add_one, n))

    return app


async def _round(app: perdure.App, first: int) -> list[int]:
    async with app:
        # Several first uses at once wait for one opening of the store (on this loop).
        await asyncio.gather(app.migrate(), app.migrate(), app.migrate())
        async with app.worker():
            handles = await asyncio.gather(
                *(app.start_workflow("twice", first + k) for k in range(5))
            )
            return list(await asyncio.gather(*(h.result() for h in handles)))


def _other_connections(database_url: str) -> int:
    """Backends still connected to the test's database, once those of connections the
    client closed had time to exit: a backend leaves ``pg_stat_activity`` only as its
    process ends, a moment after the client's close (longer on a loaded machine)."""
    deadline = time.monotonic() + 10
    with psycopg.connect(database_url, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
            assert row is not None
            if row[0] == 0 or time.monotonic() > deadline:
                return int(row[0])
            time.sleep(0.05)


def test_one_app_serves_event_loop_after_event_loop(database_url: str) -> None:
    app = _app(database_url)
    for first in (0, 100, 200):
        assert asyncio.run(_round(app, first)) == [first + k + 2 for k in range(5)]
    if database_url.startswith("postgresql"):
        # Each close released the pool, the group-commit links and the LISTEN connection.
        assert _other_connections(database_url) == 0


def test_a_handle_used_after_close_opens_connections_the_next_close_releases(
    database_url: str,
) -> None:
    app = _app(database_url)

    async def start() -> perdure.WorkflowHandle:
        async with app:
            return await app.start_workflow("twice", 1)

    handle = asyncio.run(start())

    async def finish() -> int:
        try:
            async with app.worker():
                result: int = await handle.result()
                return result
        finally:
            await app.close()

    assert asyncio.run(finish()) == 3
    if database_url.startswith("postgresql"):
        assert _other_connections(database_url) == 0


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_close_twice_is_harmless(database_url: str) -> None:
    app = _app(database_url)

    async def run() -> None:
        await app.migrate()
        await app.close()
        await app.close()

    asyncio.run(run())
