"""A worker killed while it commits steps of many runs in one transaction.

Group commit writes the steps of many runs together. After a SIGKILL in the
middle of that: no step the worker acted on is missing (an activity only runs
once its scheduling is committed, so every activity that ran has its
`activity_scheduled` event), no step is half there (histories are whole,
numbered without gaps, with at most one outcome per activity), and a new
worker finishes every workflow exactly once.
"""

from __future__ import annotations

import asyncio
import collections
import random
import textwrap

import perdure

APP = textwrap.dedent(
    """
    import asyncio, os
    import perdure
    from perdure import WorkflowContext

    app = perdure.App(os.environ["PERDURE_DATABASE_URL"])
    LOG = open(os.environ["CRASH_LOG"], "a", buffering=1)

    @app.activity(name="step")
    async def step(workflow_id: str, i: int) -> int:
        LOG.write(f"{workflow_id}:{i} {os.getpid()}\\n")
        await asyncio.sleep(0.01)
        return i

    @app.workflow(name="five")
    async def five(ctx: WorkflowContext, n: int) -> int:
        total = 0
        for i in range(5):
            total += await ctx.activity(step, ctx.info.workflow_id, i)
        return total + n

    if __name__ == "__main__":
        asyncio.run(app.run_worker(lease_duration="2s", poll_interval="50ms",
                                   max_concurrent_workflows=1000))
    """
)

N = 200


async def test_kill_during_group_commits_loses_nothing(database_url: str, worker_processes) -> None:  # type: ignore[no-untyped-def]
    procs = worker_processes(APP)
    async with perdure.App(database_url) as client:
        handles = [await client.start_workflow("five", i, workflow_id=f"gc-{i}") for i in range(N)]
        first = procs.start()
        # kill once a good share of the steps ran: many batches are in flight then
        while len(procs.lines()) < N * 5 * random.uniform(0.2, 0.5):
            assert first.poll() is None, procs.output(first)
            await asyncio.sleep(0.01)
        procs.kill(first)

        ran = collections.Counter(procs.lines())
        recorded: set[str] = set()  # "wf:i" whose completion was committed before the kill
        for handle in handles:
            events = await handle.history()
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            scheduled = {
                e.attributes["activity_id"] for e in events if e.event_type == "activity_scheduled"
            }
            outcomes = collections.Counter(
                e.attributes["activity_id"] for e in events if e.event_type == "activity_completed"
            )
            assert all(count == 1 for count in outcomes.values())
            assert set(outcomes) <= scheduled
            recorded |= {f"{handle.workflow_id}:{activity_id - 1}" for activity_id in outcomes}
            steps_run = {key for key in ran if key.startswith(f"{handle.workflow_id}:")}
            # an activity runs only after its scheduling committed: none may be missing
            assert len(steps_run) <= len(scheduled), (handle.workflow_id, steps_run, scheduled)

        second = procs.start()
        results = await asyncio.gather(*(h.result(timeout=120) for h in handles))
        procs.stop(second)
    assert results == [10 + i for i in range(N)]
    again = collections.Counter(procs.lines())
    for handle in handles:
        events = await handle.history()
        assert [e.event_type for e in events].count("workflow_completed") == 1
        assert [e.event_type for e in events].count("activity_completed") == 5
    # an activity whose completion was recorded never ran again; one cut off by the
    # kill ran at most once more
    for key, count in again.items():
        assert count <= (1 if key in recorded else 2), key
        if count == 2:
            assert ran[key] == 1, key
