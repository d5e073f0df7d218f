"""Worker behaviour: sticky cache, durable backoff, graceful shutdown, sharing work."""

from __future__ import annotations

import asyncio
import time

import pytest

import perdure
from perdure import RetryPolicy, WorkflowContext


async def test_sticky_cache_never_replays_on_the_hot_path(app: perdure.App) -> None:
    @app.activity
    async def inc(x: int) -> int:
        return x + 1

    @app.workflow
    async def counter(ctx: WorkflowContext, n: int) -> int:
        x = 0
        for _ in range(n):
            x = await ctx.activity(inc, x)
        return x

    async with app.worker() as worker:
        assert await app.execute_workflow(counter, 50) == 50
    assert worker.stats.runs_adopted == 1
    assert worker.stats.events_replayed == 0  # 50 steps, not one replayed event
    assert worker.stats.steps_committed == 51
    assert worker.stats.lease_waits == 0  # no step left an activity waiting for a renewal


async def test_retry_backoff_is_durable_across_worker_restarts(app: perdure.App) -> None:
    attempts: list[tuple[int, float]] = []

    @app.activity(retry=RetryPolicy(initial_interval="1500ms"))
    async def flaky() -> int:
        attempt = perdure.activity.info().attempt
        attempts.append((attempt, time.monotonic()))
        if attempt == 1:
            raise ConnectionError("first attempt fails")
        return attempt

    @app.workflow
    async def wf(ctx: WorkflowContext) -> int:
        return await ctx.activity(flaky)

    async with app.worker():
        handle = await app.start_workflow(wf)
        while not attempts:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # the failure and its backoff are committed
    # the worker is gone; the backoff lives in the database
    assert (await handle.describe()).status == "running"
    async with app.worker():
        assert await handle.result(timeout=20) == 2
    (a1, t1), (a2, t2) = attempts
    assert (a1, a2) == (1, 2)
    assert t2 - t1 >= 1.5


async def test_graceful_shutdown_lets_activities_finish(app: perdure.App) -> None:
    finished: list[str] = []

    @app.activity
    async def work(name: str) -> str:
        await asyncio.sleep(0.5)
        finished.append(name)
        return name

    @app.workflow
    async def wf(ctx: WorkflowContext) -> list[str]:
        first = await ctx.activity(work, "first")
        second = await ctx.activity(work, "second")
        return [first, second]

    async with app.worker(graceful_shutdown_timeout="5s"):
        handle = await app.start_workflow(wf)
        await asyncio.sleep(0.2)  # "first" is running when the block exits
    assert finished == ["first"]
    history = await handle.history()
    assert [e.event_type for e in history].count("activity_completed") == 1
    async with app.worker():
        assert await handle.result(timeout=20) == ["first", "second"]
    assert finished == ["first", "second"]


async def test_shutdown_past_grace_hands_runs_back_at_once(app: perdure.App) -> None:
    starts: list[float] = []

    @app.activity
    async def stubborn() -> str:
        starts.append(time.monotonic())
        if len(starts) == 1:
            await asyncio.sleep(30)
        return "done"

    @app.workflow
    async def wf(ctx: WorkflowContext) -> str:
        return await ctx.activity(stubborn)

    async with app.worker(graceful_shutdown_timeout="200ms", lease_duration="60s"):
        handle = await app.start_workflow(wf)
        while not starts:
            await asyncio.sleep(0.02)
    stopped = time.monotonic()
    async with app.worker(lease_duration="60s"):
        assert await handle.result(timeout=20) == "done"
    # handed back at once: the new worker did not wait for the 60s lease to expire
    assert starts[1] - stopped < 30


async def test_two_workers_share_runs_and_each_completes_once(
    app: perdure.App, database_url: str
) -> None:
    ran: list[int] = []

    @app.activity
    async def job(i: int) -> int:
        ran.append(i)
        await asyncio.sleep(0.05)
        return i

    @app.workflow
    async def wf(ctx: WorkflowContext, i: int) -> int:
        return await ctx.activity(job, i)

    # Two worker Apps stand for two processes; `app` is a plain client (no worker of
    # its own), so every run goes through the database and is claimed by one of them.
    workers = [perdure.App(database_url), perdure.App(database_url)]
    for w in workers:
        w._registry = app._registry
    try:
        async with (
            workers[0].worker(max_concurrent_workflows=5) as w1,
            workers[1].worker(max_concurrent_workflows=5) as w2,
        ):
            handles = await asyncio.gather(*(app.start_workflow(wf, i) for i in range(40)))
            results = [await h.result(timeout=30) for h in handles]
    finally:
        for w in workers:
            await w.close()
    assert results == list(range(40))
    assert sorted(ran) == list(range(40))
    assert w1.stats.runs_adopted + w2.stats.runs_adopted == 40
    assert w1.stats.runs_adopted > 0 and w2.stats.runs_adopted > 0


async def test_worker_state_machine(app: perdure.App) -> None:
    worker = app.worker()
    assert worker.state == "stopped"
    async with worker:
        assert worker.state == "running"
    assert worker.state == "stopped"


async def test_a_full_worker_evicts_idle_runs_to_make_room(app: perdure.App) -> None:
    @app.workflow(name="waiter")
    async def waiter(ctx: WorkflowContext) -> str:
        return str(await ctx.wait_for_signal("go"))

    @app.workflow(name="quick")
    async def quick(ctx: WorkflowContext, i: int) -> int:
        await ctx.sleep("1ms")
        return i

    async with app.worker(max_concurrent_workflows=3, poll_interval="50ms") as worker:
        waiting = [await app.start_workflow(waiter, workflow_id=f"w{i}") for i in range(3)]
        await asyncio.sleep(0.3)  # all three are held, idle, waiting for "go"
        # the worker is full of idle runs; new work still gets done
        results = [await (await app.start_workflow(quick, i)).result(timeout=20) for i in range(3)]
        assert results == [0, 1, 2]
        assert worker.stats.runs_evicted >= 1
        for handle in waiting:
            await handle.signal("go", "went")
        assert [await h.result(timeout=20) for h in waiting] == ["went"] * 3


async def test_a_backlog_larger_than_one_claim_is_taken_without_waiting_for_polls(
    app: perdure.App, database_url: str
) -> None:
    @app.workflow
    async def nothing(ctx: WorkflowContext, i: int) -> int:
        return i

    # Started through a plain client before any worker runs: nothing wakes the worker
    # but its own polls, and it polls once an hour. A claim takes at most 64 runs; one
    # that comes back full must look again at once.
    handles = await asyncio.gather(*(app.start_workflow(nothing, i) for i in range(200)))
    worker_app = perdure.App(database_url)
    worker_app._registry = app._registry
    try:
        async with worker_app.worker(poll_interval="1h") as worker:
            results = [await h.result(timeout=60) for h in handles]
    finally:
        await worker_app.close()
    assert results == list(range(200))
    assert worker.stats.runs_adopted == 200


async def test_sequential_activities_run_in_the_task_of_the_one_before(app: perdure.App) -> None:
    """A finished activity's task takes its run's step and runs the next activity itself."""
    tasks: list[asyncio.Task[object] | None] = []

    @app.activity
    async def where(i: int) -> int:
        tasks.append(asyncio.current_task())
        return i

    @app.workflow
    async def wf(ctx: WorkflowContext) -> int:
        total = 0
        for i in range(5):
            total += await ctx.activity(where, i)
        return total

    async with app.worker():
        assert await app.execute_workflow(wf) == 10
    assert len(tasks) == 5
    assert len({id(t) for t in tasks}) == 1


async def test_signal_is_handled_while_a_handed_over_activity_runs(app: perdure.App) -> None:
    """The task running the handed-over activity no longer counts as the run's drain."""
    started = asyncio.Event()
    release = asyncio.Event()

    @app.activity
    async def quick() -> int:
        return 1

    @app.activity
    async def slow() -> int:
        started.set()
        await release.wait()
        return 2

    @app.workflow
    async def wf(ctx: WorkflowContext) -> list[str]:
        seen: list[str] = []
        ctx.set_signal_handler("ping", seen.append)
        ctx.set_query_handler("seen", lambda: seen)
        await ctx.activity(quick)
        await ctx.activity(slow)
        return seen

    async with app.worker():
        handle = await app.start_workflow(wf)
        await asyncio.wait_for(started.wait(), 10)
        await handle.signal("ping", "hello")
        try:
            for _ in range(500):
                if await handle.query("seen") == ["hello"]:
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the signal waited for the running activity")
        finally:
            release.set()
        assert await handle.result(timeout=10) == ["hello"]


def _of_test(obj: object, marker: str) -> bool:
    """Whether a perdure object in ``gc.garbage`` belongs to a workflow or activity
    whose qualified name holds ``marker`` (earlier tests may leave garbage too)."""
    kind = type(obj).__qualname__
    if kind in ("WorkflowRunner", "WorkflowContext"):
        return marker in obj.info.workflow_type  # type: ignore[attr-defined]
    if kind == "HeldRun":
        return marker in obj.record.workflow_type  # type: ignore[attr-defined]
    if kind == "PendingActivity":
        return marker in obj.activity_type  # type: ignore[attr-defined]
    if kind == "ActivityState":
        return any(_of_test(a, marker) for a in getattr(obj._make_info, "args", ()))  # type: ignore[attr-defined]
    if kind == "WorkflowLoop":
        return _of_test(getattr(obj._timer_factory, "__self__", None), marker)  # type: ignore[attr-defined]
    return False


async def test_finished_runs_leave_no_reference_cycles(app: perdure.App) -> None:
    """A run's objects (runner, its loop and context, activities and their attempt
    state) are freed by reference counting when it ends. Cycles among them would
    wait for the cyclic collector, whose full passes then cost a busy worker a
    quarter of its CPU (measured on 1,000 concurrent workflows)."""
    import gc

    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    @app.workflow
    async def leaf(ctx: WorkflowContext, x: int) -> int:
        return x + 1

    @app.workflow
    async def busy(ctx: WorkflowContext, n: int) -> int:
        total = 0
        for i in range(n):
            total += await ctx.activity(double, i)
        await asyncio.sleep(0.01)  # a durable timer
        total += await ctx.execute_child(leaf, total)
        return total

    app.activity(double)
    marker = "test_finished_runs_leave_no_reference_cycles"
    async with app.worker():
        assert await app.execute_workflow(busy, 2) == 5  # warm: lazy imports, caches
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            handles = [await app.start_workflow(busy, 3) for _ in range(5)]
            for handle in handles:
                assert await handle.result(timeout=30) == 13
            del handles
            await asyncio.sleep(0.2)  # let the worker let go of the closed runs
            gc.collect()
            cyclic = sorted({type(o).__qualname__ for o in gc.garbage if _of_test(o, marker)})
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    assert cyclic == []


async def test_result_waits_that_time_out_or_are_cancelled_leave_nothing_behind(
    app: perdure.App,
) -> None:
    @app.workflow
    async def gated(ctx: WorkflowContext) -> str:
        return str(await ctx.wait_for_signal("go"))

    async with app.worker():
        handle = await app.start_workflow(gated)
        with pytest.raises(perdure.TimeoutError):
            await handle.result(timeout=0.2)
        waiting = asyncio.create_task(handle.result())
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert app._close_waiters == {}  # no future or timer left for either wait
        both = [asyncio.create_task(handle.result(timeout=30)) for _ in range(2)]
        await asyncio.sleep(0.05)
        await handle.signal("go", "on")
        assert await asyncio.gather(*both) == ["on", "on"]  # woken by the close, not a timer
        assert app._close_waiters == {}
