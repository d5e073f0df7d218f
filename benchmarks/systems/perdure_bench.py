"""The workloads on perdure: ``App(url)``, its worker in this process, default options."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import perdure
from benchmarks import store_trip
from benchmarks.common import (
    READY,
    WARM_UP,
    Ticker,
    completing,
    gather_limited,
    progress,
    settled_rss,
    wait_until,
)
from benchmarks.spec import Sizes
from benchmarks.wal import sqlite_path, wal_pages_per_commit
from perdure import WorkflowContext

IN_FLIGHT = 1000  # W6: starts and signals in flight at once (the same for every system)


async def noop(i: int) -> int:
    return i


async def empty(ctx: WorkflowContext) -> int:
    return 0


FAR_QUEUE = "far"


async def far_noop(i: int) -> int:
    """An activity on a task queue of its own (benchmarks/client_starts.py --far)."""
    return i


async def one_far(ctx: WorkflowContext, i: int) -> int:
    return int(await ctx.activity(far_noop, i, task_queue=FAR_QUEUE))


async def steps(ctx: WorkflowContext, n: int) -> int:
    for i in range(n):
        await ctx.activity(noop, i)
    return n


async def child(ctx: WorkflowContext, i: int) -> int:
    return i


async def fan_out(ctx: WorkflowContext, n: int) -> int:
    results = await asyncio.gather(*(ctx.execute_child(child, i) for i in range(n)))
    return sum(results)


async def waiter(ctx: WorkflowContext) -> int:
    READY.add(ctx.info.workflow_id)
    value = await ctx.wait_for_signal("go")
    return int(value or 0)


async def long_history(ctx: WorkflowContext, n: int) -> int:
    for i in range(n):
        await ctx.activity(noop, i)
    READY.add(ctx.info.workflow_id)
    await ctx.wait_for_signal("go")
    await ctx.activity(noop, -1)
    return n


def make_app(url: str) -> perdure.App:
    app = perdure.App(url)
    app.activity(noop)
    app.activity(far_noop, task_queue=FAR_QUEUE)
    for wf in (empty, steps, child, fan_out, waiter, long_history, one_far):
        app.workflow(wf)
    return app


# For ``perdure worker benchmarks.systems.perdure_bench:worker_app --database-url URL``
# (benchmarks/client_starts.py): the workloads' registry; the CLI's URL replaces this one.
worker_app = make_app("sqlite:///perdure-bench-worker.db")


async def _warm_up(app: perdure.App) -> None:
    """A few small workflows at once, as each system's warm-up (``WARM_UP``): connections
    that concurrent work opens (pools, perdure's group commit links) are open before the
    measured part, as in a process that has been running."""
    await asyncio.gather(*(app.execute_workflow(steps, 2) for _ in range(WARM_UP)))


async def _warm_up_sequential(app: perdure.App) -> None:
    """Before W3 and W4, which the single-row commit limit is compared with: enough
    sequential steps for SQLite's WAL to reach its working size and start over once
    (~1,000 frames, ~3.5 per step), as the limit loop's untimed commits do for it.
    Until then each fsync also commits the file's new size (~1.5x slower)."""
    await app.execute_workflow(steps, 400)


async def w1(app: perdure.App, s: Sizes) -> dict[str, Any]:
    async with app.worker():
        await _warm_up(app)
        started = time.perf_counter()
        handles = await asyncio.gather(*(app.start_workflow(empty) for _ in range(s.w1_workflows)))
        await asyncio.gather(*(h.result() for h in handles))
        elapsed = time.perf_counter() - started
    return {"workflows_per_s": s.w1_workflows / elapsed, "seconds": elapsed}


async def w2(app: perdure.App, s: Sizes) -> dict[str, Any]:
    async with app.worker():
        await _warm_up(app)
        started = time.perf_counter()
        handles = await asyncio.gather(
            *(app.start_workflow(steps, s.w2_steps) for _ in range(s.w2_workflows))
        )
        tick = Ticker(len(handles), "workflows done")
        done = 0

        async def result(h: Any) -> None:
            nonlocal done
            await h.result()
            done += 1
            tick(done)

        await asyncio.gather(*(result(h) for h in handles))
        elapsed = time.perf_counter() - started
    return {
        "workflows_per_s": s.w2_workflows / elapsed,
        "steps_per_s": s.w2_workflows * s.w2_steps / elapsed,
        "seconds": elapsed,
    }


async def w3(app: perdure.App, s: Sizes) -> dict[str, Any]:
    latencies = []
    async with app.worker():
        await _warm_up_sequential(app)
        tick = Ticker(s.w3_round_trips, "round trips")
        cpu = time.process_time()
        for i in range(s.w3_round_trips):
            started = time.perf_counter()
            handle = await app.start_workflow(steps, 1)
            await handle.result()
            latencies.append(time.perf_counter() - started)
            tick(i + 1)
        cpu = time.process_time() - cpu
    # As W4's: the report reads W3 against two raw commits with as much CPU around them,
    # and against the same two commits through perdure's store alone (no worker running).
    store = await store_trip.store_round_trips(await app._get_store(), s.w3_round_trips)
    return {
        **latency_metrics(latencies),
        "cpu_ms_per_round_trip": cpu / s.w3_round_trips * 1000,
        **store,
    }


def latency_metrics(latencies: list[float]) -> dict[str, Any]:
    from benchmarks.common import percentile

    return {
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "mean_ms": sum(latencies) / len(latencies) * 1000,
    }


async def w4(app: perdure.App, s: Sizes, url: str) -> dict[str, Any]:
    async with app.worker():
        await _warm_up_sequential(app)
        started, cpu = time.perf_counter(), time.process_time()
        handle = await app.start_workflow(steps, s.w4_steps)
        await handle.result()
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        # Read before the worker's connection closes (the last close deletes the log).
        pages = wal_pages_per_commit(sqlite_path(url)) if url.startswith("sqlite") else None
    store = await store_trip.store_steps(await app._get_store(), s.w4_steps)
    # The process's CPU per step (the database server's, on PostgreSQL, not included):
    # the report reads W4 against a raw commit loop spending as much between commits.
    metrics: dict[str, Any] = {
        "steps_per_s": s.w4_steps / elapsed,
        "seconds": elapsed,
        "cpu_ms_per_step": cpu / s.w4_steps * 1000,
    }
    if pages is not None:
        metrics["wal_pages_per_commit"] = pages
    return {**metrics, **store}


async def w5(app: perdure.App, s: Sizes) -> dict[str, Any]:
    async with app.worker():
        await _warm_up(app)
        started = time.perf_counter()
        handle = await app.start_workflow(fan_out, s.w5_children)
        total = await handle.result()
        elapsed = time.perf_counter() - started
    assert total == sum(range(s.w5_children))
    return {"seconds": elapsed, "children_per_s": s.w5_children / elapsed}


async def w6(app: perdure.App, s: Sizes) -> dict[str, Any]:
    n = s.w6_workflows
    limit = n + 100
    async with app.worker(max_concurrent_workflows=limit):
        await _warm_up(app)
        READY.clear()
        before = settled_rss()
        started = time.perf_counter()
        ids = [f"w6-{i}" for i in range(n)]
        await gather_limited(
            [lambda wid=wid: app.start_workflow(waiter, workflow_id=wid) for wid in ids],  # type: ignore[misc]
            IN_FLIGHT,
            Ticker(n, "started"),
        )
        await wait_until(
            lambda: len(READY) >= n,
            600,
            "all workflows to wait",
            report=lambda: progress(len(READY), n, "waiting"),
        )
        start_s = time.perf_counter() - started
        after = settled_rss()
        signal_started = time.perf_counter()
        await gather_limited(
            [lambda wid=wid: app.get_handle(wid).signal("go", 1) for wid in ids],  # type: ignore[misc]
            IN_FLIGHT,
            Ticker(n, "signalled"),
        )
        last_signal = time.perf_counter()
        await completing(
            [lambda wid=wid: app.get_handle(wid).result() for wid in ids],  # type: ignore[misc]
            IN_FLIGHT,
            "completed",
        )
        done = time.perf_counter()
    return {
        "workflows": n,
        "kb_per_workflow": (after - before) / n / 1024,
        "rss_before_mb": before / 2**20,
        "rss_waiting_mb": after / 2**20,
        "start_all_s": start_s,
        "signal_all_s": last_signal - signal_started,
        "complete_after_last_signal_s": done - last_signal,
        "max_concurrent_workflows": limit,
    }


async def w7(app: perdure.App, s: Sizes, url: str) -> dict[str, Any]:
    n = s.w7_activities
    READY.clear()
    wid = "w7-long"
    async with app.worker():
        handle = await app.start_workflow(long_history, n, workflow_id=wid)
        await wait_until(
            lambda: wid in READY,
            1200,
            "the long history to be recorded",
            poll=0.2,
            report=lambda: progress(0, 1, "recording history"),
        )
        # The wait itself records nothing; let the last step's commit settle.
        await asyncio.sleep(0.5)
    events = (await handle.describe()).history_length
    await handle.signal("go", 1)
    await app.close()

    fresh = make_app(url)
    async with fresh:
        started = time.perf_counter()
        async with fresh.worker():
            result = await fresh.get_handle(wid).result()
            elapsed = time.perf_counter() - started
        assert result == n
    return {"seconds_to_next_step": elapsed, "history_events": events, "activities": n}


async def run(workload: str, url: str, sizes: Sizes, **_: Any) -> dict[str, Any]:
    app = make_app(url)
    async with app:
        await app.migrate()
        if workload == "W7":
            return await w7(app, sizes, url)
        if workload == "W4":
            return await w4(app, sizes, url)
        fn = {"W1": w1, "W2": w2, "W3": w3, "W5": w5, "W6": w6}[workload]
        return await fn(app, sizes)
