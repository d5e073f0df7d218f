"""The PostgreSQL server restarts (``pg_ctl restart -m fast``) while workflows run.

Some workflows are inside a slow activity, some wait on a timer, others commit step
after step of quick activities, when every connection drops. Workers reconnect and go
on: every workflow finishes once with the right result, and no activity runs again once
the run whose completion was recorded has started (activities whose completion could
not be recorded during the outage may run again).
"""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from pgserver import Databases

import perdure
from perdure import WorkflowContext

BUSY = 12  # inside a slow activity when the server goes away
SLEEPY = 12  # waiting on a timer when the server goes away
CHATTY = 6  # committing steps when the server goes away
CHATTY_STEPS = 40
SLOW_SECONDS = 2.0

pytestmark = pytest.mark.parametrize("database_url", ["postgres", "cockroach"], indirect=True)


def _app(url: str, log: Path) -> perdure.App:
    app = perdure.App(url)

    @app.activity(name="work")
    async def work(workflow_id: str, i: int, seconds: float) -> dict[str, Any]:
        token = uuid.uuid4().hex[:12]
        with open(log, "a") as f:
            f.write(f"{workflow_id} {i} {token}\n")
        await asyncio.sleep(seconds)
        return {"value": i, "token": token}

    @app.workflow(name="busy")
    async def busy(ctx: WorkflowContext, workflow_id: str) -> list[int]:
        values = []
        for i, seconds in enumerate((0.0, SLOW_SECONDS, 0.0)):
            values.append((await ctx.activity(work, workflow_id, i, seconds))["value"])
        return values

    @app.workflow(name="chatty")
    async def chatty(ctx: WorkflowContext, workflow_id: str) -> int:
        total = 0
        for i in range(CHATTY_STEPS):
            total += (await ctx.activity(work, workflow_id, i, 0.02))["value"]
        return total

    @app.workflow(name="sleepy")
    async def sleepy(ctx: WorkflowContext, workflow_id: str) -> list[int]:
        first = await ctx.activity(work, workflow_id, 0, 0.0)
        await ctx.sleep("3s")
        second = await ctx.activity(work, workflow_id, 1, 0.0)
        return [first["value"], second["value"]]

    return app


def _runs(log: Path) -> dict[tuple[str, int], list[str]]:
    runs: dict[tuple[str, int], list[str]] = collections.defaultdict(list)
    if log.exists():
        for line in log.read_text().splitlines():
            workflow_id, step, token = line.split()
            runs[(workflow_id, int(step))].append(token)
    return runs


async def _wait_until(what: str, check: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.05)


async def test_workflows_finish_once_across_a_server_restart(
    postgres: Databases, database_url: str, tmp_path: Path
) -> None:
    if postgres.server is None:
        pytest.skip("restarting needs the session's own server, not PERDURE_TEST_POSTGRES_URL")
    log = tmp_path / "log.txt"
    client = perdure.App(database_url)
    apps = [_app(database_url, log) for _ in range(2)]
    busy = [f"busy-{n}" for n in range(BUSY)]
    sleepy = [f"sleepy-{n}" for n in range(SLEEPY)]
    chatty = [f"chatty-{n}" for n in range(CHATTY)]
    try:
        workers = [app.worker(lease_duration="3s", graceful_shutdown_timeout="1s") for app in apps]
        for worker in workers:
            await worker.start()
        handles = [await client.start_workflow("busy", w, workflow_id=w) for w in busy]
        handles += [await client.start_workflow("sleepy", w, workflow_id=w) for w in sleepy]
        handles += [await client.start_workflow("chatty", w, workflow_id=w) for w in chatty]

        async def in_place() -> bool:
            runs = _runs(log)
            if not all((w, 1) in runs for w in busy):
                return False  # not every busy workflow is in its slow activity yet
            for handle in handles[BUSY : BUSY + SLEEPY]:
                types = [e.event_type for e in await handle.history()]
                if "timer_started" not in types:
                    return False
            return True

        await _wait_until("every workflow is in an activity or on a timer", in_place)
        restart_at = time.monotonic()
        chatty_steps = sum(1 for w, _ in _runs(log) if w.startswith("chatty"))
        await asyncio.to_thread(postgres.restart_server)
        restarted = time.monotonic()

        results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), timeout=90)
        done = time.monotonic()
        assert (
            results == [[0, 1, 2]] * BUSY + [[0, 1]] * SLEEPY + [sum(range(CHATTY_STEPS))] * CHATTY
        )

        # The workers still work: a new workflow runs to the end.
        assert await client.execute_workflow("busy", "after", workflow_id="after") == [0, 1, 2]
        for worker in workers:
            await worker.stop()
        await _check_histories(client, handles, log)
        print(
            f"\nrestart took {restarted - restart_at:.1f}s; all {len(handles)} workflows "
            f"done {done - restarted:.1f}s after it; the chatty ones were at step "
            f"{chatty_steps}/{CHATTY * CHATTY_STEPS} when it began"
        )
    finally:
        for app in (*apps, client):
            await app.close()


async def _check_histories(client: perdure.App, handles: list[Any], log: Path) -> None:
    runs = _runs(log)
    for handle in handles:
        workflow_id = handle.workflow_id
        listed = [d async for d in client.list_workflows(workflow_id_prefix=workflow_id)]
        assert [d.workflow_id for d in listed].count(workflow_id) == 1, workflow_id
        history = await handle.history()
        assert [e.seq for e in history] == list(range(1, len(history) + 1)), workflow_id
        types = collections.Counter(e.event_type for e in history)
        assert types["workflow_completed"] == 1, (workflow_id, types)
        completed = [e.attributes["result"]["token"] for e in history
                     if e.event_type == "activity_completed"]  # fmt: skip
        steps = {"busy": 3, "sleepy": 2, "chatty": CHATTY_STEPS}[workflow_id.split("-")[0]]
        assert len(completed) == steps, (workflow_id, types)
        for i, token in enumerate(completed):
            started = runs[(workflow_id, i)]
            # Nothing ran the activity again once the run that was recorded had started.
            assert started[-1] == token, (workflow_id, i, started, token)
