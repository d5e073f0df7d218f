"""PostgreSQL: a run that its first step ends (a workflow that returns without waiting,
W1's) is inserted closed, start and step in ONE statement (``insert_runs_closed``),
instead of inserted running and updated closed in the same transaction. The row must
come out exactly as the general path leaves it; a start whose workflow id is running
falls back to the step's whole transaction, where the id policies decide; runs with a
parent keep the general path (their parent hears of the close)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import psycopg
import pytest
from pg_store_kit import opened, start_with_first_step
from pgserver import Databases

from perdure._errors import WorkflowAlreadyStartedError
from perdure._history import EventType
from perdure._store import _postgres, _postgres_tx
from perdure._store._base import RunClose, RunExists, StepCommit, utcnow
from perdure._store._postgres import PostgresStore

W = "w1"
COLUMNS = (
    "status, result, error, next_event_seq, owner, lease_expires_at, wake_at, input,"
    " search_attributes, memo, parent_close_policy, continued_run_id, parked_error,"
    " closed_at IS NOT NULL AS closed, created_at"
)


def closing_start(workflow_id: str, close: RunClose, **run: Any) -> StepCommit:
    ended = (
        EventType.WORKFLOW_COMPLETED if close.status == "completed" else EventType.WORKFLOW_FAILED
    )
    run = {"search_attributes": {"tier": "gold"}, "memo": {"m": 1}, **run}
    return start_with_first_step(workflow_id, W, (ended, {"x": 1}), close=close, **run)


async def row(store: PostgresStore, run_id: str) -> dict[str, Any]:
    async with await psycopg.AsyncConnection.connect(store.url.split("?")[0]) as conn:
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        await cur.execute(
            f"SELECT {COLUMNS} FROM {store.schema}.workflows WHERE run_id = %s", (run_id,)
        )
        found = await cur.fetchone()
        assert found is not None
        return dict(found)


@pytest.fixture(params=["inserted-closed", "insert-then-close"])
def start_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways such a run is written: the closed insert, and the general path (insert,
    then the closing step) that it must match."""
    if request.param == "insert-then-close":
        monkeypatch.setattr(_postgres, "closes_at_start", lambda step: False)
    return str(request.param)


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
@pytest.mark.parametrize("group_commit", ["on", "off"])
async def test_both_paths_leave_the_same_closed_row(
    postgres: Databases, start_path: str, close: RunClose, group_commit: str
) -> None:
    store = await opened(postgres, group_commit=group_commit)
    try:
        step = closing_start("wf-a", close)
        await store.commit_step(step)
        got = await row(store, step.run_id)
        assert got["created_at"] == step.start.created_at  # type: ignore[union-attr]
        del got["created_at"]
        assert got == {
            "status": close.status,
            "result": close.result,
            "error": close.error,
            "next_event_seq": 3,
            "owner": None,
            "lease_expires_at": None,
            "wake_at": None,
            "input": [1, "é"],
            "search_attributes": {"tier": "gold"},
            "memo": {"m": 1},
            "parent_close_policy": None,
            "continued_run_id": None,
            "parked_error": None,
            "closed": True,
        }
        history = await store.load_history(step.run_id)
        assert [(e.seq, e.event_type, e.attributes) for e in history] == [
            (e.seq, e.event_type, e.attributes) for e in step.events
        ]
    finally:
        await store.close()


async def test_many_closed_starts_go_as_one_statement(postgres: Databases) -> None:
    store = await opened(postgres)
    close = RunClose(status="completed", result=1, had_children=False)
    try:
        await store.commit_step(closing_start("warm-up", close))  # connects the link
        group = store._group
        before = group.statements
        steps = [closing_start(f"wf-{n}", close) for n in range(30)]
        assert await asyncio.gather(*(store.commit_step(s) for s in steps)) == [None] * 30
        assert group.statements - before == 1
        for s in steps:
            record = await store.get_run_by_id(s.run_id)
            assert record is not None and record.status == "completed" and record.result == 1
            assert [e.seq for e in await store.load_history(s.run_id)] == [1, 2]
    finally:
        await store.close()


async def test_a_running_workflow_id_falls_back_to_the_id_policies(
    postgres: Databases,
) -> None:
    store = await opened(postgres)
    close = RunClose(status="completed", result=1, had_children=False)
    try:
        running = closing_start("busy", close)
        running = dataclasses.replace(running, close=None, wake_at=utcnow())
        running.events[1] = dataclasses.replace(
            running.events[1], event_type=EventType.TIMER_STARTED, attributes={"timer_id": 1}
        )
        await store.commit_step(running)
        refused = closing_start("busy", close)
        with pytest.raises(WorkflowAlreadyStartedError):
            await store.commit_step(refused)  # the default policy: fail
        assert await store.get_run_by_id(refused.run_id) is None
        assert await store.load_history(refused.run_id) == []
        kept = closing_start("busy", close, id_conflict_policy="use_existing")
        with pytest.raises(RunExists) as exists:  # the running run is the answer
            await store.commit_step(kept)
        assert exists.value.run_id == running.run_id
        assert await store.get_run_by_id(kept.run_id) is None
        record = await store.get_run_by_id(running.run_id)
        assert record is not None and record.status == "running"
    finally:
        await store.close()


def test_runs_with_a_parent_or_a_patch_keep_the_general_path() -> None:
    close = RunClose(status="completed", result=1, had_children=False)
    assert _postgres_tx.closes_at_start(closing_start("a", close))
    child = closing_start("b", close, parent_workflow_id="p", parent_run_id="p-run", child_id=1)
    assert not _postgres_tx.closes_at_start(child)
    patched = dataclasses.replace(closing_start("c", close), search_attributes={"k": 1})
    assert not _postgres_tx.closes_at_start(patched)
    still_running = dataclasses.replace(closing_start("d", close), close=None)
    assert not _postgres_tx.closes_at_start(still_running)
