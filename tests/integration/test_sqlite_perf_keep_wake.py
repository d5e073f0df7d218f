"""SQLite steps of a run that stays due leave the run's row alone: they append their
events, and the row (wake_at "due since", next_event_seq, lease) stays as it was, one
page less per commit. A run that was not due, or will not be, still gets the step's
wake_at and its row moved up to the history; fences still hold, against the history
itself; what clients read (describe, perdure_running, terminate) counts the history."""

from __future__ import annotations

import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from perdure._history import EventType, HistoryEvent
from perdure._store._base import ListFilter, NewRun, StepCommit, StepRejected, utcnow
from perdure._store._sqlite import SQLiteStore
from perdure._store._sqlite_tx import fmt

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


async def _row(store: SQLiteStore, run_id: str) -> dict[str, object]:
    def read(conn: sqlite3.Connection) -> dict[str, object]:
        row = conn.execute("SELECT * FROM perdure_workflows WHERE run_id = ?", (run_id,))
        return dict(row.fetchone())

    return await store.db.read(read)


async def _history_seqs(store: SQLiteStore, run_id: str) -> list[int]:
    return [e.seq for e in await store.load_history(run_id)]


async def test_a_run_due_before_and_after_a_step_keeps_its_row(store: SQLiteStore) -> None:
    started = utcnow()
    run_id, workflow_id = await _held_run(store, started)
    lease = (await _row(store, run_id))["lease_expires_at"]
    updates: list[str] = []

    def trace(conn: sqlite3.Connection) -> None:
        conn.set_trace_callback(
            lambda sql: updates.append(sql) if sql.lstrip().startswith("UPDATE") else None
        )

    await store.db.read(trace)
    steps = [_step(run_id, seq, utcnow()) for seq in (1, 2, 3)]
    for step in steps:
        await store.commit_step(step)
    await store.db.read(lambda conn: conn.set_trace_callback(None))
    assert updates == []  # the events only
    assert all(step.row_kept for step in steps)
    assert await _history_seqs(store, run_id) == [1, 2, 3]
    row = await _row(store, run_id)
    assert row["next_event_seq"] == 1 and row["lease_expires_at"] == lease  # trails
    assert await _wake_at(store, workflow_id) == started
    # What clients read counts the history.
    run = await store.get_run("default", workflow_id)
    assert run is not None and run.next_event_seq == 4
    assert (await store.get_run_by_id(run_id)).next_event_seq == 4  # type: ignore[union-attr]
    listed = await store.list_runs(ListFilter(namespace="default"))
    assert [r.next_event_seq for r in listed if r.run_id == run_id] == [4]
    view = await store.db.read(
        lambda conn: conn.execute(
            "SELECT history_length FROM perdure_running WHERE run_id = ?", (run_id,)
        ).fetchone()[0]
    )
    assert view == 3
    await store.close()


async def test_a_full_fence_after_kept_rows_moves_the_row_to_the_history(
    store: SQLiteStore,
) -> None:
    run_id, _ = await _held_run(store, utcnow())
    for seq in (1, 2):
        await store.commit_step(_step(run_id, seq, utcnow()))
    step = _step(run_id, 3, FAR)  # a timer: not due any more
    await store.commit_step(step)
    assert not step.row_kept
    row = await _row(store, run_id)
    assert row["next_event_seq"] == 4
    assert row["lease_expires_at"] == fmt(step.lease_until)  # type: ignore[arg-type]
    await store.close()


async def test_terminate_appends_after_the_history_not_the_row(store: SQLiteStore) -> None:
    run_id, workflow_id = await _held_run(store, utcnow())
    for seq in (1, 2, 3):
        await store.commit_step(_step(run_id, seq, utcnow()))
    assert (await _row(store, run_id))["next_event_seq"] == 1
    await store.terminate_run("default", workflow_id, None, "enough")
    history = await store.load_history(run_id)
    assert [(e.seq, e.event_type) for e in history][-2:] == [
        (3, EventType.TIMER_FIRED),
        (4, EventType.WORKFLOW_TERMINATED),
    ]
    row = await _row(store, run_id)
    assert row["status"] == "terminated" and row["next_event_seq"] == 5
    with pytest.raises(StepRejected):
        await store.commit_step(_step(run_id, 4, utcnow()))
    await store.close()


async def test_a_kept_row_step_is_fenced_out_by_a_takeover(store: SQLiteStore) -> None:
    run_id, _ = await _held_run(store, utcnow())
    await store.commit_step(_step(run_id, 1, utcnow()))

    def take_over(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE perdure_workflows SET owner = 'w2' WHERE run_id = ?", (run_id,))

    await store.db.write(take_over)
    with pytest.raises(StepRejected):
        await store.commit_step(_step(run_id, 2, utcnow()))
    assert await _history_seqs(store, run_id) == [1]
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
    with pytest.raises(StepRejected):
        await store.commit_step(_step(run_id, 1, FAR))  # the full fence checks it too
    assert await _history_seqs(store, run_id) == [1]
    run = await store.get_run("default", workflow_id)
    assert run is not None and run.next_event_seq == 2
    await store.close()
