"""perdure's store alone: W3's and W4's commits with no worker and no workflow code.

The same ``StepCommit`` objects perdure's worker builds for a one-activity round trip
(the start with its first step, then the step that closes the run) and for a step of a
sequential workflow (an activity's result and the next activity), written through
perdure's own store: its schema and indexes, its SQL, its group commit and its Python
around them. Read between the raw limit (and the floor) and perdure's figures, it says
how much of W3's latency and W4's rate the store costs before the engine above it
(the worker, the workflow's coroutine, the activity) adds its own.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta
from typing import Any

from benchmarks.common import percentile
from perdure._history import EventType, HistoryEvent
from perdure._store._base import NewRun, RunClose, StepCommit, Store, utcnow

WORKER = "bench-store-alone"
NAMESPACE = "default"
WORKFLOW_TYPE = "steps"
ACTIVITY_TYPE = "noop"
LEASE = timedelta(seconds=30)  # the worker's default lease


def _event(
    seq: int, event_type: str, name: str | None, attrs: dict[str, Any], now: datetime
) -> HistoryEvent:
    return HistoryEvent(seq=seq, event_type=event_type, name=name, attributes=attrs, created_at=now)


def _scheduled(seq: int, activity_id: int, now: datetime) -> HistoryEvent:
    attrs = {"activity_id": activity_id, "activity_type": ACTIVITY_TYPE, "args": [activity_id - 1]}
    return _event(seq, EventType.ACTIVITY_SCHEDULED, ACTIVITY_TYPE, attrs, now)


def _completed(seq: int, activity_id: int, now: datetime) -> HistoryEvent:
    attrs = {
        "activity_id": activity_id,
        "activity_type": ACTIVITY_TYPE,
        "attempt": 1,
        "result": activity_id - 1,
    }
    return _event(seq, EventType.ACTIVITY_COMPLETED, ACTIVITY_TYPE, attrs, now)


def start_step(run_id: str, workflow_id: str, args: list[Any]) -> StepCommit:
    """A run started by the starting process's own worker with its first step: the
    workflow started and scheduled its first activity."""
    now = utcnow()
    run = NewRun(
        namespace=NAMESPACE,
        workflow_id=workflow_id,
        run_id=run_id,
        workflow_type=WORKFLOW_TYPE,
        task_queue="default",
        input=args,
        wake_at=now,
        owner=WORKER,
        lease_until=now + LEASE,
        created_at=now,
    )
    started = {
        "args": args,
        "workflow_id": workflow_id,
        "run_id": run_id,
        "workflow_type": WORKFLOW_TYPE,
        "task_queue": "default",
        "parent_workflow_id": None,
        "parent_run_id": None,
    }
    return StepCommit(
        namespace=NAMESPACE,
        run_id=run_id,
        worker_id=WORKER,
        expected_seq=1,
        events=[
            _event(1, EventType.WORKFLOW_STARTED, WORKFLOW_TYPE, started, now),
            _scheduled(2, 1, now),
        ],
        wake_at=now,
        lease_until=now + LEASE,
        start=run,
    )


def _held_step(
    run_id: str, seq: int, events: list[HistoryEvent], now: datetime, **rest: Any
) -> StepCommit:
    """A step of a run this worker holds, its lease renewed as the worker does."""
    return StepCommit(
        namespace=NAMESPACE,
        run_id=run_id,
        worker_id=WORKER,
        expected_seq=seq,
        events=events,
        lease_until=now + LEASE,
        **rest,
    )


def activity_step(run_id: str, seq: int, activity_id: int) -> StepCommit:
    """An activity's result, and the next activity the workflow asked for."""
    now = utcnow()
    events = [_completed(seq, activity_id, now), _scheduled(seq + 1, activity_id + 1, now)]
    return _held_step(run_id, seq, events, now, wake_at=now)


def closing_step(run_id: str, seq: int, activity_id: int, result: Any) -> StepCommit:
    """The last activity's result, and the workflow's return."""
    now = utcnow()
    events = [
        _completed(seq, activity_id, now),
        _event(seq + 1, EventType.WORKFLOW_COMPLETED, None, {"result": result}, now),
    ]
    close = RunClose(status="completed", result=result, had_children=False)
    return _held_step(run_id, seq, events, now, close=close)


async def _round_trip(store: Store) -> None:
    run_id, workflow_id = str(uuid.uuid4()), str(uuid.uuid4())
    await store.commit_step(start_step(run_id, workflow_id, [1]))
    await store.commit_step(closing_step(run_id, 3, 1, 1))


async def store_round_trips(store: Store, count: int, warm_up: int = 20) -> dict[str, float]:
    """``count`` W3 round trips, one after another, through ``store`` alone (after
    ``warm_up`` untimed ones)."""
    for _ in range(warm_up):
        await _round_trip(store)
    latencies = []
    cpu = time.process_time()
    for _ in range(count):
        started = time.perf_counter()
        await _round_trip(store)
        latencies.append(time.perf_counter() - started)
    cpu = time.process_time() - cpu
    return {
        "store_p50_ms": percentile(latencies, 0.5) * 1000,
        "store_p99_ms": percentile(latencies, 0.99) * 1000,
        "store_cpu_ms_per_round_trip": cpu / count * 1000,
    }


async def store_steps(store: Store, count: int, warm_up: int = 100) -> dict[str, float]:
    """One run of ``count`` sequential W4 steps through ``store`` alone, timed after
    ``warm_up`` untimed ones (its start and its closing step untimed too)."""
    run_id = str(uuid.uuid4())
    await store.commit_step(start_step(run_id, str(uuid.uuid4()), [count]))
    activity_id = 1  # activity n finishes in the step at seq 2n + 1

    async def steps(n: int) -> None:
        nonlocal activity_id
        for _ in range(n):
            await store.commit_step(activity_step(run_id, 2 * activity_id + 1, activity_id))
            activity_id += 1

    await steps(warm_up)
    started, cpu = time.perf_counter(), time.process_time()
    await steps(count)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    await store.commit_step(closing_step(run_id, 2 * activity_id + 1, activity_id, count))
    return {"store_steps_per_s": count / elapsed, "store_cpu_ms_per_step": cpu / count * 1000}
