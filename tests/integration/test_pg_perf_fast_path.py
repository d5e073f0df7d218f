"""PostgreSQL: the one-statement step also starts runs and closes them (group commit).

A run's start goes in the same batch as its first step (an insert that skips a taken
id), and a close without children to close or continue-as-new is part of the step
statement: the parent's inbox and the updates still waiting are handled there too.
These check that the fast path does what the transaction path does.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta

import pytest
from pg_store_kit import T, new_run, opened
from pgserver import Databases

from perdure._errors import WorkflowAlreadyStartedError
from perdure._history import EventType, HistoryEvent
from perdure._store._base import NewRun, RunClose, RunExists, StepCommit, utcnow
from perdure._store._postgres_tx import is_plain


def leased(run: NewRun, worker_id: str = "w1") -> NewRun:
    """As a worker that starts the run itself inserts it: already leased to it."""
    return replace(
        run, owner=worker_id, lease_until=utcnow() + timedelta(seconds=30), created_at=utcnow()
    )


def first_step(run: NewRun, close: RunClose | None = None) -> StepCommit:
    events = [
        HistoryEvent(
            seq=1,
            event_type=EventType.WORKFLOW_STARTED,
            name=T,
            attributes={"z": 1, "a": 2},  # key order must survive
            created_at=utcnow(),
        )
    ]
    return StepCommit(
        namespace="default",
        run_id=run.run_id,
        worker_id=str(run.owner),
        expected_seq=1,
        events=events,
        lease_until=utcnow() + timedelta(seconds=30),
        close=close,
        start=run,
    )


async def test_starts_with_their_first_step_are_grouped(postgres: Databases) -> None:
    store = await opened(postgres)
    try:
        runs = [leased(new_run(f"s-{i}")) for i in range(40)]
        steps = [first_step(r) for r in runs]
        assert all(is_plain(s) for s in steps)
        await asyncio.gather(*(store.commit_step(s) for s in steps))
        assert store._group.writes == 40 and store._group.transactions < 40
        for run in runs:
            record = await store.get_run_by_id(run.run_id)
            assert record is not None and record.owner == "w1" and record.next_event_seq == 2
            (started,) = await store.load_history(run.run_id)
            assert list(started.attributes) == ["z", "a"]
    finally:
        await store.close()


async def test_a_start_whose_id_is_taken_gets_the_id_policies(postgres: Databases) -> None:
    store = await opened(postgres)
    try:
        running, _ = await store.start_run(new_run("taken"))
        closing = first_step(
            leased(new_run("taken")),
            close=RunClose(status="completed", result=7, had_children=False),
        )
        with pytest.raises(WorkflowAlreadyStartedError):
            await store.commit_step(closing)
        # use_existing: the running run's id, nothing written for the newcomer
        newcomer = leased(new_run("taken", id_conflict_policy="use_existing"))
        with pytest.raises(RunExists) as exists:
            await store.commit_step(first_step(newcomer))
        assert exists.value.run_id == running
        assert await store.get_run_by_id(newcomer.run_id) is None
        assert await store.load_history(newcomer.run_id) == []
    finally:
        await store.close()


async def test_two_starts_of_one_id_in_one_batch(postgres: Databases) -> None:
    store = await opened(postgres)
    try:
        a, b = leased(new_run("twin")), leased(new_run("twin"))
        outcomes = await asyncio.gather(
            store.commit_step(first_step(a)),
            store.commit_step(first_step(b)),
            return_exceptions=True,
        )
        assert outcomes[0] is None
        assert isinstance(outcomes[1], WorkflowAlreadyStartedError)
        assert await store.get_run_by_id(b.run_id) is None
    finally:
        await store.close()


async def test_a_start_that_closes_at_once_is_one_batch(postgres: Databases) -> None:
    store = await opened(postgres)
    try:
        run = leased(new_run("quick"))
        await store.commit_step(
            first_step(
                run, close=RunClose(status="completed", result={"b": 1, "a": 2}, had_children=False)
            )
        )
        record = await store.get_run_by_id(run.run_id)
        assert record is not None
        assert (record.status, record.result, record.owner, record.wake_at) == (
            "completed",
            {"b": 1, "a": 2},
            None,
            None,
        )
        assert record.closed_at is not None
        # The id is free again: a new run of it starts.
        again = leased(new_run("quick"))
        await store.commit_step(first_step(again))
    finally:
        await store.close()


async def test_a_closing_child_tells_its_parent_and_rejects_waiting_updates(
    postgres: Databases,
) -> None:
    store = await opened(postgres)
    try:
        parent_id, _ = await store.start_run(new_run("parent"))
        child = leased(
            new_run(
                "it's \\ a child",
                parent_workflow_id="parent",
                parent_run_id=parent_id,
                child_id=3,
            )
        )
        await store.commit_step(first_step(child))
        await store.send_inbox(
            "default", child.workflow_id, None, "update", "u", [{"update_id": "up-1", "args": []}]
        )
        close = RunClose(
            status="failed", error={"type": "ValueError", "message": "no"}, had_children=False
        )
        await store.commit_step(
            StepCommit(
                namespace="default",
                run_id=child.run_id,
                worker_id="w1",
                expected_seq=2,
                events=[],
                close=close,
            )
        )
        (message,) = await store.load_run_inbox(parent_id)
        assert (message.kind, message.name) == ("child_result", T)
        assert message.payload == [
            {
                "child_id": 3,
                "workflow_id": child.workflow_id,
                "run_id": child.run_id,
                "status": "failed",
                "result": None,
                "error": {"type": "ValueError", "message": "no"},
            }
        ]
        reply = await store.take_reply("up-1")
        assert reply == {
            "rejected": True,
            "error": {
                "type": "UpdateRejectedError",
                "message": f"workflow {child.workflow_id!r} closed (failed) first",
            },
        }
        assert await store.load_run_inbox(child.run_id) == []
    finally:
        await store.close()
