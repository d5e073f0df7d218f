"""A client killed while a burst of its starts is being committed.

A client that starts many workflows at once sends them by group commit; on
PostgreSQL a full batch goes out from the task that filled it while the next one
fills, so several batches are in flight when the client dies. After a SIGKILL in
the middle of that: every start the client was told about is there, every run
that is there is whole (running, its input intact: it returns the number it was
started with), and a worker finishes each of them exactly once.
"""

from __future__ import annotations

import asyncio
import textwrap
import time

import perdure

APP = textwrap.dedent(
    """
    import asyncio, os
    import perdure
    from perdure import WorkflowContext

    app = perdure.App(os.environ["PERDURE_DATABASE_URL"])
    LOG = open(os.environ["CRASH_LOG"], "a", buffering=1)

    @app.workflow(name="echo")
    async def echo(ctx: WorkflowContext, n: int) -> int:
        return n

    async def burst() -> None:
        async def one(i: int) -> None:
            await app.start_workflow("echo", i, workflow_id=f"burst-{i}")
            LOG.write(f"burst-{i}\\n")  # told: the start is committed

        # A few starts first: the client's group commit connects its other links.
        await asyncio.gather(*(app.start_workflow("echo", k, workflow_id=f"warm-{k}")
                               for k in range(3)))
        await asyncio.sleep(0.3)
        store = await app._get_store()
        for round_ in range(1000):  # until killed
            await asyncio.gather(*(one(round_ * 1000 + i) for i in range(1000)))
            print("eager batches", getattr(getattr(store, "_group", None), "eager", 0),
                  flush=True)

    if __name__ == "__main__":
        if os.environ.get("MODE") == "client":
            asyncio.run(burst())
        else:
            asyncio.run(app.run_worker(poll_interval="50ms"))
    """
)


async def test_a_client_killed_mid_burst_loses_no_acknowledged_start(
    database_url: str,
    worker_processes,  # type: ignore[no-untyped-def]
) -> None:
    procs = worker_processes(APP)
    client_proc = procs.start(MODE="client")
    deadline = time.monotonic() + 60
    while len(procs.lines()) < 1500:  # in its second burst: batches in flight
        assert client_proc.poll() is None, procs.output(client_proc)
        assert time.monotonic() < deadline, procs.output(client_proc)
        await asyncio.sleep(0.005)
    procs.kill(client_proc)
    told = set(procs.lines())
    if database_url.startswith("postgresql"):  # full batches went out at once
        assert "eager batches 0" not in procs.output(client_proc), procs.output(client_proc)
        assert "eager batches" in procs.output(client_proc)

    async with perdure.App(database_url) as app:
        there = {d.workflow_id async for d in app.list_workflows(workflow_type="echo")}
        assert told <= there, sorted(told - there)[:5]
        for workflow_id in sorted(there)[:: max(1, len(there) // 200)]:  # a sample's histories
            handle = app.get_handle(workflow_id)
            assert (await handle.describe()).status == "running"
            assert await handle.history() == []  # no worker yet: its first step writes them

        worker = procs.start()
        for workflow_id in sorted(there):
            n = int(workflow_id.split("-")[1])
            assert await app.get_handle(workflow_id).result(timeout=120) == n
        procs.stop(worker)
        for workflow_id in sorted(there)[:: max(1, len(there) // 200)]:
            events = await app.get_handle(workflow_id).history()
            assert [e.event_type for e in events].count("workflow_completed") == 1
