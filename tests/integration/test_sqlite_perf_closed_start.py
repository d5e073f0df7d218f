"""SQLite: a run whose first step also closes it (a workflow that ends without waiting,
taken at once by the starting process's worker) is inserted closed, instead of inserted
running and then updated. The row must come out as the general path (insert, then close)
leaves it, and the id policies must hold: a closed row is not seen by the unique index
on running runs, so a running run of the same id still refuses it."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlite_store_kit import migrated_store, new_run, row_of

import perdure
from perdure import WorkflowAlreadyStartedError, WorkflowContext
from perdure._history import EventType, HistoryEvent
from perdure._store import _sqlite_tx
from perdure._store._base import NewRun, RunClose, RunExists, StepCommit, utcnow
from perdure._store._sqlite import SQLiteStore


def _closing_start(run: NewRun, close: RunClose) -> StepCommit:
    terminal = EventType.WORKFLOW_COMPLETED if close.status == "completed" else "workflow_failed"
    events = [
        HistoryEvent(
            seq=1,
            event_type=EventType.WORKFLOW_STARTED,
            name="t",
            attributes={"args": [1]},
            created_at=utcnow(),
        ),
        HistoryEvent(
            seq=2,
            event_type=terminal,
            name=None,
            attributes={"result": close.result} if close.error is None else {"error": close.error},
            created_at=utcnow(),
        ),
    ]
    return StepCommit(
        namespace="default",
        run_id=run.run_id,
        worker_id="w1",
        expected_seq=1,
        events=events,
        wake_at=None,
        lease_until=utcnow() + timedelta(seconds=30),
        close=close,
        start=run,
    )


def _gold_run(workflow_id: str, **options: Any) -> NewRun:
    return new_run(workflow_id, search_attributes={"tier": "gold"}, **options)


@pytest.fixture
async def store(tmp_path: Path) -> SQLiteStore:
    return await migrated_store(tmp_path / "s.db")


@pytest.fixture(params=["closed-insert", "insert-then-close"])
def start_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways the row is written: inserted closed, and the general path it must match."""
    if request.param == "insert-then-close":
        monkeypatch.setattr(_sqlite_tx, "insert_closed_run", lambda conn, step: None)
    return str(request.param)


_SAME = (
    "status",
    "result",
    "error",
    "next_event_seq",
    "owner",
    "lease_expires_at",
    "wake_at",
    "continued_run_id",
    "input",
    "search_attributes",
    "parked_error",
)


@pytest.mark.parametrize(
    "close",
    [
        RunClose(status="completed", result={"n": 1}, had_children=False),
        RunClose(
            status="failed", error={"type": "ValueError", "message": "no"}, had_children=False
        ),
    ],
    ids=["completed", "failed"],
)
async def test_both_paths_leave_the_same_closed_row(
    store: SQLiteStore, start_path: str, close: RunClose
) -> None:
    run = _gold_run("wf-a")
    statements: list[str] = []
    await store.db.read(lambda conn: conn.set_trace_callback(statements.append))
    await store.commit_step(_closing_start(run, close))
    await store.db.read(lambda conn: conn.set_trace_callback(None))
    updates = [s for s in statements if s.lstrip().startswith("UPDATE")]
    assert bool(updates) == (start_path == "insert-then-close")
    row = row_of(store, run.run_id)
    expected = {
        "status": close.status,
        "result": None if close.result is None else '{"n":1}',
        "error": None if close.error is None else '{"type":"ValueError","message":"no"}',
        "next_event_seq": 3,
        "owner": None,
        "lease_expires_at": None,
        "wake_at": None,
        "continued_run_id": None,
        "input": "[1]",
        "search_attributes": '{"tier":"gold"}',
        "parked_error": None,
    }
    assert {k: row[k] for k in _SAME} == expected
    assert row["closed_at"] is not None
    assert [e.seq for e in await store.load_history(run.run_id)] == [1, 2]
    # Closed: the id is free for the next run, which may itself close at once.
    again = _gold_run("wf-a")
    await store.commit_step(_closing_start(again, close))
    assert row_of(store, again.run_id)["status"] == close.status
    await store.close()


async def test_a_running_run_of_the_id_still_refuses_it(store: SQLiteStore) -> None:
    running = new_run("wf-b", owner=None)
    await store.start_run(running)
    closing = _closing_start(_gold_run("wf-b"), RunClose(status="completed", had_children=False))
    with pytest.raises(WorkflowAlreadyStartedError):
        await store.commit_step(closing)
    use_existing = _closing_start(
        _gold_run("wf-b", id_conflict_policy="use_existing"),
        RunClose(status="completed", had_children=False),
    )
    with pytest.raises(RunExists):
        await store.commit_step(use_existing)
    record = await store.get_run("default", "wf-b")
    assert record is not None and record.run_id == running.run_id
    assert record.status == "running"
    for step in (closing, use_existing):  # neither left a row or an event behind
        assert await store.load_history(step.run_id) == []
    conn = sqlite3.connect(store.db.path)
    count = conn.execute("SELECT count(*) FROM perdure_workflows WHERE workflow_id = 'wf-b'")
    assert count.fetchone()[0] == 1
    conn.close()
    await store.close()


async def test_reject_duplicate_takes_the_general_path(store: SQLiteStore) -> None:
    close = RunClose(status="completed", result=1, had_children=False)
    await store.commit_step(_closing_start(_gold_run("wf-c"), close))
    again = _gold_run("wf-c", id_reuse_policy="reject_duplicate")
    with pytest.raises(WorkflowAlreadyStartedError):
        await store.commit_step(_closing_start(again, close))
    assert await store.load_history(again.run_id) == []
    await store.close()


async def empty(ctx: WorkflowContext) -> str:
    return "done"


async def waiter(ctx: WorkflowContext) -> Any:
    return await ctx.wait_for_signal("go")


async def test_an_app_s_workflow_that_ends_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inserted_closed: list[str] = []
    real = _sqlite_tx.insert_closed_run

    def spy(conn: sqlite3.Connection, step: StepCommit) -> sqlite3.Row | None:
        row = real(conn, step)
        if row is not None:
            inserted_closed.append(row["workflow_id"])
        return row

    monkeypatch.setattr(_sqlite_tx, "insert_closed_run", spy)
    app = perdure.App(f"sqlite:///{tmp_path / 'app.db'}")
    app.workflow(empty)
    app.workflow(waiter)
    async with app.worker():
        handle = await app.start_workflow(empty, workflow_id="quick")
        assert await handle.result() == "done"
        desc = await handle.describe()
        assert desc.status == "completed"
        assert [e.event_type for e in await handle.history()] == [
            "workflow_started",
            "workflow_completed",
        ]
        assert await app.execute_workflow(empty, workflow_id="quick") == "done"  # id reused
        held = await app.start_workflow(waiter, workflow_id="busy")
        with pytest.raises(WorkflowAlreadyStartedError):
            await app.start_workflow(empty, workflow_id="busy")
        await held.signal("go", 7)
        assert await held.result() == 7
    await app.close()
    assert inserted_closed == ["quick", "quick"]  # the refused start took the general path
