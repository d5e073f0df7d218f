"""The workloads on DBOS (``dbos`` from PyPI), written the way its docs show.

``@DBOS.workflow()`` / ``@DBOS.step()`` async functions, ``DBOS.start_workflow_async``
and ``handle.get_result()``, ``DBOS.recv_async`` / ``DBOS.send_async`` for signals,
child workflows started from a workflow. Everything at DBOS's defaults; the system
database is the URL given (``sqlite:///...`` or ``postgresql://...``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import Any

from dbos import DBOS, DBOSClient, DBOSConfig

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
from benchmarks.systems.perdure_bench import IN_FLIGHT, latency_metrics


@DBOS.step()
async def noop(i: int) -> int:
    return i


@DBOS.workflow()
async def empty() -> int:
    return 0


@DBOS.workflow()
async def steps(n: int) -> int:
    for i in range(n):
        await noop(i)
    return n


@DBOS.workflow()
async def child(i: int) -> int:
    return i


@DBOS.workflow()
async def fan_out(n: int) -> int:
    handles = [await DBOS.start_workflow_async(child, i) for i in range(n)]
    results = await asyncio.gather(*(h.get_result() for h in handles))
    return sum(results)


@DBOS.workflow()
async def waiter() -> int:
    READY.add(DBOS.workflow_id or "")
    value = await DBOS.recv_async("go", timeout_seconds=3600)
    return int(value or 0)


@DBOS.workflow()
async def long_history(n: int) -> int:
    for i in range(n):
        await noop(i)
    READY.add(DBOS.workflow_id or "")
    await DBOS.recv_async("go", timeout_seconds=3600)
    await noop(-1)
    return n


def _config(url: str) -> DBOSConfig:
    return {"name": "perdure-bench", "system_database_url": url, "log_level": "WARNING"}


def _launch(url: str) -> None:
    DBOS(config=_config(url))
    DBOS.launch()


async def _warm_up() -> None:
    handles = await asyncio.gather(*(DBOS.start_workflow_async(steps, 2) for _ in range(WARM_UP)))
    await asyncio.gather(*(h.get_result() for h in handles))


async def w1(s: Sizes) -> dict[str, Any]:
    started = time.perf_counter()
    handles = await asyncio.gather(
        *(DBOS.start_workflow_async(empty) for _ in range(s.w1_workflows))
    )
    await asyncio.gather(*(h.get_result() for h in handles))
    elapsed = time.perf_counter() - started
    return {"workflows_per_s": s.w1_workflows / elapsed, "seconds": elapsed}


async def w2(s: Sizes) -> dict[str, Any]:
    started = time.perf_counter()
    handles = await asyncio.gather(
        *(DBOS.start_workflow_async(steps, s.w2_steps) for _ in range(s.w2_workflows))
    )
    tick = Ticker(len(handles), "workflows done")
    done = 0

    async def result(h: Any) -> None:
        nonlocal done
        await h.get_result()
        done += 1
        tick(done)

    await asyncio.gather(*(result(h) for h in handles))
    elapsed = time.perf_counter() - started
    return {
        "workflows_per_s": s.w2_workflows / elapsed,
        "steps_per_s": s.w2_workflows * s.w2_steps / elapsed,
        "seconds": elapsed,
    }


async def w3(s: Sizes) -> dict[str, Any]:
    latencies = []
    tick = Ticker(s.w3_round_trips, "round trips")
    for i in range(s.w3_round_trips):
        started = time.perf_counter()
        handle = await DBOS.start_workflow_async(steps, 1)
        await handle.get_result()
        latencies.append(time.perf_counter() - started)
        tick(i + 1)
    return latency_metrics(latencies)


async def w4(s: Sizes) -> dict[str, Any]:
    started = time.perf_counter()
    handle = await DBOS.start_workflow_async(steps, s.w4_steps)
    await handle.get_result()
    elapsed = time.perf_counter() - started
    return {"steps_per_s": s.w4_steps / elapsed, "seconds": elapsed}


async def w5(s: Sizes) -> dict[str, Any]:
    started = time.perf_counter()
    handle = await DBOS.start_workflow_async(fan_out, s.w5_children)
    total = await handle.get_result()
    elapsed = time.perf_counter() - started
    assert total == sum(range(s.w5_children))
    return {"seconds": elapsed, "children_per_s": s.w5_children / elapsed}


async def w6(s: Sizes) -> dict[str, Any]:
    from dbos import SetWorkflowID

    n = s.w6_workflows
    READY.clear()
    before = settled_rss()
    started = time.perf_counter()
    ids = [f"w6-{i}" for i in range(n)]

    async def start(wid: str) -> None:
        with SetWorkflowID(wid):
            await DBOS.start_workflow_async(waiter)

    await gather_limited([lambda w=w: start(w) for w in ids], IN_FLIGHT, Ticker(n, "started"))  # type: ignore[misc]
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
        [lambda w=w: DBOS.send_async(w, 1, "go") for w in ids],  # type: ignore[misc]
        IN_FLIGHT,
        Ticker(n, "signalled"),
    )
    last_signal = time.perf_counter()

    async def result(wid: str) -> Any:
        return await (await DBOS.retrieve_workflow_async(wid)).get_result()

    await completing([lambda w=w: result(w) for w in ids], IN_FLIGHT, "completed")  # type: ignore[misc]
    done = time.perf_counter()
    return {
        "workflows": n,
        "kb_per_workflow": (after - before) / n / 1024,
        "rss_before_mb": before / 2**20,
        "rss_waiting_mb": after / 2**20,
        "start_all_s": start_s,
        "signal_all_s": last_signal - signal_started,
        "complete_after_last_signal_s": done - last_signal,
    }


async def w7(s: Sizes, url: str) -> dict[str, Any]:
    from dbos import SetWorkflowID

    n = s.w7_activities
    wid = "w7-long"
    READY.clear()
    with SetWorkflowID(wid):
        await DBOS.start_workflow_async(long_history, n)
    await wait_until(
        lambda: wid in READY,
        1200,
        "the long history to be recorded",
        poll=0.2,
        report=lambda: progress(0, 1, "recording history"),
    )
    await asyncio.sleep(0.5)
    recorded = len(await DBOS.list_workflow_steps_async(wid))
    # The "worker" stops: DBOS is torn down; the run stays PENDING in the database.
    DBOS.destroy()
    # DBOS installed its (now shut down) executor as the loop's default one.
    asyncio.get_running_loop().set_default_executor(concurrent.futures.ThreadPoolExecutor())
    client = DBOSClient(system_database_url=url)
    client.send(wid, 1, "go")
    client.destroy()
    # A fresh DBOS on the same database recovers the pending run at launch.
    started = time.perf_counter()
    _launch(url)
    result = await (await DBOS.retrieve_workflow_async(wid)).get_result()
    elapsed = time.perf_counter() - started
    assert result == n
    return {"seconds_to_next_step": elapsed, "history_steps": recorded, "activities": n}


async def run(workload: str, url: str, sizes: Sizes, **_: Any) -> dict[str, Any]:
    _launch(url)
    try:
        await _warm_up()
        if workload == "W7":
            return await w7(sizes, url)
        fn = {"W1": w1, "W2": w2, "W3": w3, "W4": w4, "W5": w5, "W6": w6}[workload]
        return await fn(sizes)
    finally:
        DBOS.destroy()
