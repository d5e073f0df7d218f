"""SQLite: a run started with its first step in the same transaction (a worker that took
the run at once) is inserted as the step's fence would leave it, instead of inserted and
then updated. The row must come out exactly as the general path (insert, then fence)
leaves it; the fence still holds for the steps after it."""

from __future__ import annotations

import dataclasses
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlite_store_kit import migrated_store, new_run, row_of

from perdure._history import EventType, HistoryEvent
from perdure._store import _sqlite_tx
from perdure._store._base import NewRun, RunExists, StepCommit, StepRejected, utcnow
from perdure._store._sqlite import SQLiteStore
from perdure._store._times import parse

FAR = datetime(2100, 1, 1, tzinfo=UTC)


def _events(first: int, count: int) -> list[HistoryEvent]:
    return [
        HistoryEvent(
            seq=seq,
            event_type=EventType.TIMER_FIRED,
            name=None,
            attributes={"timer_id": seq},
            created_at=utcnow(),
        )
        for seq in range(first, first + count)
    ]


def _start_step(run: NewRun, wake_at: datetime | None, lease: datetime) -> StepCommit:
    return StepCommit(
        namespace="default",
        run_id=run.run_id,
        worker_id="w1",
        expected_seq=1,
        events=_events(1, 2),
        wake_at=wake_at,
        lease_until=lease,
        start=run,
    )


@pytest.fixture
async def store(tmp_path: Path) -> SQLiteStore:
    return await migrated_store(tmp_path / "s.db")


@pytest.fixture(params=["stepped-insert", "insert-then-fence"])
def start_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a started run's row is written: the stepped insert, and the general
    path (insert, then fence) it must match."""
    if request.param == "insert-then-fence":
        monkeypatch.setattr(_sqlite_tx, "stepped_start", lambda step: False)
    return str(request.param)


async def test_the_started_run_is_written_once_as_its_first_step_leaves_it(
    store: SQLiteStore,
) -> None:
    run = new_run("wf-a")
    lease = utcnow() + timedelta(seconds=30)
    statements: list[str] = []
    await store.db.read(lambda conn: conn.set_trace_callback(statements.append))
    await store.commit_step(_start_step(run, FAR, lease))
    await store.db.read(lambda conn: conn.set_trace_callback(None))
    assert not [s for s in statements if s.lstrip().startswith("UPDATE")]  # no fence update
    record = await store.get_run("default", "wf-a")
    assert record is not None
    assert record.next_event_seq == 3 and record.owner == "w1" and record.wake_at == FAR
    assert parse(row_of(store, run.run_id)["lease_expires_at"]) == lease
    assert [e.seq for e in await store.load_history(run.run_id)] == [1, 2]
    # the fence holds for the next steps
    step = StepCommit(
        namespace="default",
        run_id=run.run_id,
        worker_id="w1",
        expected_seq=1,
        events=_events(3, 1),
        wake_at=None,
        lease_until=lease,
    )
    with pytest.raises(StepRejected):
        await store.commit_step(step)  # the history is at 3 already
    await store.commit_step(dataclasses.replace(step, expected_seq=3))
    record = await store.get_run("default", "wf-a")
    assert record is not None and record.next_event_seq == 4
    await store.close()


@pytest.mark.usefixtures("start_path")
async def test_a_message_left_for_the_workflow_id_makes_the_new_run_due_either_way(
    store: SQLiteStore,
) -> None:
    old = new_run("wf-b", owner=None)
    await store.start_run(old)
    conn = sqlite3.connect(store.db.path)
    with conn:  # a signal by plain SQL, for the workflow id, to whichever run is running
        conn.execute(
            "INSERT INTO perdure_inbox (workflow_id, kind, name, payload)"
            " VALUES ('wf-b', 'signal', 'go', '[]')"
        )
    conn.close()
    new = new_run("wf-b", id_conflict_policy="terminate_existing")
    await store.commit_step(_start_step(new, FAR, utcnow() + timedelta(seconds=30)))
    row = row_of(store, new.run_id)
    # the unread message is the new run's: it is due at once, not at its timer
    assert row["wake_at"] == "1970-01-01T00:00:00.000000Z"
    assert row["next_event_seq"] == 3 and row["owner"] == "w1"
    assert row_of(store, old.run_id)["status"] == "terminated"
    await store.close()


@pytest.mark.usefixtures("start_path")
async def test_both_paths_leave_the_same_row(store: SQLiteStore) -> None:
    run = new_run("wf-c")
    wake = utcnow() + timedelta(minutes=5)
    lease = utcnow() + timedelta(seconds=30)
    await store.commit_step(_start_step(run, wake, lease))
    row = row_of(store, run.run_id)
    assert {k: row[k] for k in ("status", "next_event_seq", "owner", "input")} == {
        "status": "running",
        "next_event_seq": 3,
        "owner": "w1",
        "input": "[1]",
    }
    assert parse(row["wake_at"]) == wake and parse(row["lease_expires_at"]) == lease
    await store.close()


async def test_a_refused_start_writes_nothing(store: SQLiteStore) -> None:
    first = new_run("wf-d", owner=None)
    await store.start_run(first)
    again = new_run("wf-d", id_conflict_policy="use_existing")
    with pytest.raises(RunExists):
        await store.commit_step(_start_step(again, None, utcnow() + timedelta(seconds=30)))
    assert await store.load_history(first.run_id) == []
    record = await store.get_run("default", "wf-d")
    assert record is not None and record.run_id == first.run_id
    assert record.next_event_seq == 1 and record.owner is None
    await store.close()
