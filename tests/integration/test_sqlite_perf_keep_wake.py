"""SQLite steps of a run that stays due keep its wake_at (no due-index write, no inbox
lookup): one fence statement per step, the row's wake_at reads "due since", and a run
that was not due, or will not be, still gets the step's wake_at; fences still hold."""

from __future__ import annotations

import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from perdure._history import EventType, HistoryEvent
from perdure._store._base import NewRun, StepCommit, StepRejected, utcnow
from perdure._store._sqlite import SQLiteStore

FAR = datetime(2100, 1, 1, tzinfo=UTC)


def _event(seq: int) -> HistoryEvent:
    return HistoryEvent(
        seq=seq,
        event_type=EventType.TIMER_FIRED,
        name=None,
        attributes={"timer_id": seq},
        created_at=utcnow(),
    )


def _step(run_id: str, seq: int, wake_at: datetime | None, worker: str = "w1") -> StepCommit:
    return StepCommit(
        namespace="default",
        run_id=run_id,
        worker_id=worker,
        expected_seq=seq,
        events=[_event(seq)],
        wake_at=wake_at,
        lease_until=utcnow() + timedelta(seconds=30),
    )


async def _held_run(store: SQLiteStore, wake_at: datetime | None) -> tuple[str, str]:
    run_id = str(uuid.uuid4())
    workflow_id = f"wf-{run_id[:8]}"
    await store.start_run(
        NewRun(
            namespace="default",
            workflow_id=workflow_id,
            run_id=run_id,
            workflow_type="t",
            task_queue="q",
            input=[],
            wake_at=wake_at,
            owner="w1",
            lease_until=utcnow() + timedelta(seconds=30),
        )
    )
    return run_id, workflow_id


async def _wake_at(store: SQLiteStore, workflow_id: str) -> datetime | None:
    run = await store.get_run("default", workflow_id)
    assert run is not None
    return run.wake_at


@pytest.fixture
async def store(tmp_path: Path) -> SQLiteStore:
    s = SQLiteStore(str(tmp_path / "k.db"))
    await s.migrate()
    return s


async def test_a_run_due_before_and_after_a_step_keeps_its_wake_at(store: SQLiteStore) -> None:
    started = utcnow()
    run_id, workflow_id = await _held_run(store, started)
    updates: list[str] = []

    def trace(conn: sqlite3.Connection) -> None:
        conn.set_trace_callback(
            lambda sql: updates.append(sql) if sql.lstrip().startswith("UPDATE") else None
        )

    await store.db.read(trace)
    for seq in (1, 2, 3):
        await store.commit_step(_step(run_id, seq, utcnow()))
    await store.db.read(lambda conn: conn.set_trace_callback(None))
    assert len(updates) == 3  # one fence statement per step
    assert await _wake_at(store, workflow_id) == started
    run = await store.get_run("default", workflow_id)
    assert run is not None and run.next_event_seq == 4
    await store.close()


async def test_a_run_that_was_not_due_or_will_not_be_gets_the_new_wake_at(
    store: SQLiteStore,
) -> None:
    run_id, workflow_id = await _held_run(store, None)  # waited for a message only
    now = utcnow()
    await store.commit_step(_step(run_id, 1, now))
    assert await _wake_at(store, workflow_id) == now
    await store.commit_step(_step(run_id, 2, FAR))  # a timer: not due any more
    assert await _wake_at(store, workflow_id) == FAR
    later = utcnow()
    await store.commit_step(_step(run_id, 3, later))  # the timer fired early? due again
    assert await _wake_at(store, workflow_id) == later
    await store.commit_step(_step(run_id, 4, None))
    assert await _wake_at(store, workflow_id) is None
    await store.close()


async def test_steps_that_keep_wake_at_are_still_fenced(store: SQLiteStore) -> None:
    run_id, workflow_id = await _held_run(store, utcnow())
    await store.commit_step(_step(run_id, 1, utcnow()))
    with pytest.raises(StepRejected):
        await store.commit_step(_step(run_id, 1, utcnow()))  # history moved on
    with pytest.raises(StepRejected):
        await store.commit_step(_step(run_id, 2, utcnow(), worker="w2"))  # not its owner
    run = await store.get_run("default", workflow_id)
    assert run is not None and run.next_event_seq == 2
    await store.close()
