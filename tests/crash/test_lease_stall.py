"""A worker frozen past its lease (SIGSTOP) starts nothing more for a run it lost.

The frozen worker had an activity waiting out a retry backoff. While it is stopped,
its lease runs out and another worker takes the run over and runs the retry. When the
frozen worker wakes up, its backoff timer is long overdue: it must not start that
attempt too (the activity would run twice), because it can no longer be sure it holds
the run. This is what a CPU-starved worker that misses its lease renewals looks like.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import textwrap
import time
from typing import Any

import psycopg

import perdure

APP = textwrap.dedent(
    """
    import asyncio, os
    import perdure
    from perdure import RetryPolicy, WorkflowContext

    app = perdure.App(os.environ["PERDURE_DATABASE_URL"])
    LOG = os.environ["CRASH_LOG"]

    @app.activity(retry=RetryPolicy(initial_interval="2s"))
    async def flaky(name: str) -> str:
        attempt = perdure.activity.info().attempt
        with open(LOG, "a") as f:
            f.write(f"{name}:{attempt} {os.getpid()}\\n")
        if attempt == 1:
            raise RuntimeError("first attempt fails")
        return name

    @app.workflow(name="stall")
    async def stall(ctx: WorkflowContext) -> str:
        return await ctx.activity(flaky, "flaky")

    if __name__ == "__main__":
        asyncio.run(app.run_worker(lease_duration="1s", poll_interval="100ms"))
    """
)


def _retry_recorded(url: str) -> bool:
    """Whether the failed first attempt and its retry time are in the database."""
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            row = conn.execute("SELECT count(*) FROM perdure_tasks WHERE attempt >= 2")
            return bool(row.fetchone()[0])
    with psycopg.connect(url.replace("cockroachdb://", "postgresql://", 1)) as conn:
        found = conn.execute("SELECT count(*) FROM perdure.tasks WHERE attempt >= 2").fetchone()
        return bool(found and found[0])


def _attempts(wp: Any) -> list[tuple[str, str]]:
    text = wp.log.read_text() if wp.log.exists() else ""
    return [(line.split()[0], line.split()[1]) for line in text.splitlines()]


async def test_frozen_worker_does_not_rerun_a_taken_over_activity(
    worker_processes: Any, database_url: str
) -> None:
    wp = worker_processes(APP)
    async with perdure.App(database_url) as client:
        handle = await client.start_workflow("stall", workflow_id="stall-1")
        frozen = wp.start()
        await wp.wait_for_line("flaky:1", frozen)
        deadline = time.monotonic() + 30
        while not await asyncio.to_thread(_retry_recorded, database_url):
            assert time.monotonic() < deadline, "the retry was never recorded"
            await asyncio.sleep(0.05)
        frozen.send_signal(signal.SIGSTOP)
        try:
            # Its 1s lease runs out; the retry is due 2s after the first attempt.
            taker = wp.start()
            assert await handle.result(timeout=60) == "flaky"
        finally:
            frozen.send_signal(signal.SIGCONT)
        # Give the thawed worker time to fire its overdue backoff timer, and to find
        # out at its next renewal that the run is gone.
        await asyncio.sleep(1.5)
        wp.stop(frozen)
        wp.stop(taker)

    attempts = _attempts(wp)
    assert attempts == [("flaky:1", str(frozen.pid)), ("flaky:2", str(taker.pid))], (
        attempts,
        wp.output(frozen),
    )
    history = await _history(database_url)
    assert history.count("activity_completed") == 1
    assert history.count("workflow_completed") == 1


async def _history(url: str) -> list[str]:
    async with perdure.App(url) as client:
        events = await client.get_handle("stall-1").history()
    return [e.event_type for e in events]
