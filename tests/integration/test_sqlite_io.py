"""SQLite I/O modes: on the event loop (default) or a thread, and a lock held elsewhere."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

import perdure
from perdure import WorkflowContext


def build(url: str) -> perdure.App:
    app = perdure.App(url)

    @app.activity(name="double")
    async def double(x: int) -> int:
        return 2 * x

    @app.workflow(name="doubler")
    async def doubler(ctx: WorkflowContext, x: int) -> int:
        return await ctx.activity(double, x)

    return app


@pytest.mark.parametrize("options", ["", "?io=thread", "?synchronous=NORMAL&io=thread"])
async def test_io_modes_run_workflows(tmp_path: Path, options: str) -> None:
    app = build(f"sqlite:///{tmp_path / 'db.sqlite'}{options}")
    async with app, app.worker():
        results = await asyncio.gather(*(app.execute_workflow("doubler", i) for i in range(20)))
    assert results == [2 * i for i in range(20)]


async def test_a_write_lock_held_by_another_process_does_not_block_the_loop(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db.sqlite"
    app = build(f"sqlite:///{path}")
    await app.migrate()
    release = threading.Event()
    locked = threading.Event()

    def hold_lock() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        locked.set()
        release.wait(10)
        conn.execute("COMMIT")
        conn.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    locked.wait(10)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    tick_task = asyncio.create_task(ticker())
    start = asyncio.create_task(app.start_workflow("doubler", 21, workflow_id="waits-for-lock"))
    await asyncio.sleep(0.3)
    assert not start.done()  # still waiting for the lock...
    assert ticks > 5  # ...without blocking the event loop
    release.set()
    handle = await asyncio.wait_for(start, 10)
    holder.join()
    tick_task.cancel()
    async with app.worker():
        assert await handle.result(timeout=20) == 42
    await app.close()


def test_bad_sqlite_url_options() -> None:
    with pytest.raises(ValueError, match="synchronous must be one of"):
        perdure.App("sqlite:///x.db?synchronous=sometimes")
    with pytest.raises(ValueError, match="io must be"):
        perdure.App("sqlite:///x.db?io=fibers")
    with pytest.raises(ValueError, match="unknown SQLite URL option"):
        perdure.App("sqlite:///x.db?journal=off")
