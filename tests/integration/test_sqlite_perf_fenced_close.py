"""SQLite: the step that ends a held run is fenced and closed by ONE update of the run's
row (FENCE_AND_CLOSE) instead of a fence update and then a close update. The fence must
hold exactly as before (another owner, a history that moved on, a run that ended: the
step is refused and writes nothing), the closed row must come out as close_run leaves
it, and what a close means for others (the parent's child result, waiting updates)
must still happen."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from sqlite_store_kit import migrated_store, new_run, row_of

from perdure._history import EventType, HistoryEvent
from perdure._store import _sqlite_tx
from perdure._store._base import RunClose, StepCommit, StepRejected, utcnow
from perdure._store._sqlite import SQLiteStore

CLOSE = RunClose(status="completed", result={"n": 1}, had_children=False)


def _event(seq: int, event_type: str = EventType.TIMER_FIRED) -> HistoryEvent:
    return HistoryEvent(
        seq=seq, event_type=event_type, name=None, attributes={"timer_id": seq}, created_at=utcnow()
    )


def _closing(run_id: str, seq: int, worker: str = "w1") -> StepCommit:
    return StepCommit(
        namespace="default",
        run_id=run_id,
        worker_id=worker,
        expected_seq=seq,
        events=[_event(seq), _event(seq + 1, EventType.WORKFLOW_COMPLETED)],
        lease_until=utcnow() + timedelta(seconds=30),
        close=CLOSE,
    )


@pytest.fixture
async def store(tmp_path: Path) -> SQLiteStore:
    return await migrated_store(tmp_path / "c.db")


@pytest.fixture(params=["fence-and-close", "fence-then-close"])
def close_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a closing step is written: the one update, and the general path (the
    fence, then close_run) it must match."""
    if request.param == "fence-then-close":
        monkeypatch.setattr(_sqlite_tx, "fences_by_closing", lambda step: False)
    return str(request.param)


async def _held_run(store: SQLiteStore, workflow_id: str, **options: object) -> str:
    run = new_run(workflow_id, **options)
    await store.start_run(run)
    await store.commit_step(
        StepCommit(
            namespace="default",
            run_id=run.run_id,
            worker_id="w1",
            expected_seq=1,
            events=[_event(1)],
            wake_at=utcnow(),
            lease_until=utcnow() + timedelta(seconds=30),
        )
    )
    return run.run_id


async def _seqs(store: SQLiteStore, run_id: str) -> list[int]:
    return [e.seq for e in await store.load_history(run_id)]


async def test_the_closing_step_updates_the_run_once(store: SQLiteStore, close_path: str) -> None:
    run_id = await _held_run(store, "wf-a")
    statements: list[str] = []
    await store.db.read(lambda conn: conn.set_trace_callback(statements.append))
    await store.commit_step(_closing(run_id, 2))
    await store.db.read(lambda conn: conn.set_trace_callback(None))
    updates = [s for s in statements if s.lstrip().startswith("UPDATE perdure_workflows")]
    assert len(updates) == (1 if close_path == "fence-and-close" else 2)
    row = row_of(store, run_id)
    assert {
        k: row[k]
        for k in ("status", "result", "error", "next_event_seq", "owner", "lease_expires_at")
    } == {
        "status": "completed",
        "result": '{"n":1}',
        "error": None,
        "next_event_seq": 4,
        "owner": None,
        "lease_expires_at": None,
    }
    assert row["wake_at"] is None and row["closed_at"] is not None
    assert await _seqs(store, run_id) == [1, 2, 3]
    await store.close()


@pytest.mark.usefixtures("close_path")
async def test_a_fenced_out_closing_step_writes_nothing(store: SQLiteStore) -> None:
    run_id = await _held_run(store, "wf-b")
    before = row_of(store, run_id)
    with pytest.raises(StepRejected):
        await store.commit_step(_closing(run_id, 2, worker="w2"))  # not its owner
    with pytest.raises(StepRejected):
        await store.commit_step(_closing(run_id, 1))  # the history is at 2 already
    assert row_of(store, run_id) == before
    assert await _seqs(store, run_id) == [1]
    await store.commit_step(_closing(run_id, 2))
    with pytest.raises(StepRejected):
        await store.commit_step(_closing(run_id, 4))  # the run has ended
    assert row_of(store, run_id)["status"] == "completed"
    assert await _seqs(store, run_id) == [1, 2, 3]
    await store.close()


@pytest.mark.usefixtures("close_path")
async def test_a_closed_child_tells_its_parent_and_a_waiting_update_hears_why(
    store: SQLiteStore,
) -> None:
    parent_id = await _held_run(store, "parent")
    child_id = await _held_run(
        store, "child", parent_workflow_id="parent", parent_run_id=parent_id, child_id=7
    )
    conn = sqlite3.connect(store.db.path)
    with conn:  # an update for the child, by plain SQL, that its code never took
        conn.execute(
            "INSERT INTO perdure_inbox (workflow_id, kind, name, payload)"
            """ VALUES ('child', 'update', 'bump', '[{"update_id": "u-1", "args": []}]')"""
        )
    conn.close()
    await store.commit_step(_closing(child_id, 2))
    inbox = await store.load_run_inbox(parent_id)
    assert [(m.kind, m.payload[0]["child_id"], m.payload[0]["status"]) for m in inbox] == [
        ("child_result", 7, "completed")
    ]
    assert inbox[0].payload[0]["result"] == {"n": 1}
    reply = await store.take_reply("u-1")
    assert reply is not None and reply["rejected"] is True
    await store.close()
