"""PostgreSQL steps of a run that stays due leave the run's row alone (commit_step_held):
they append their events, and the row (wake_at "due since", next_event_seq, lease) keeps
its version, a quarter to a third less server CPU a step. A run that was not due, or will not be,
still gets the step's wake_at and its row moved up to the history; fences still hold,
against the history itself, and a worker taking the run over waits for the step's lock;
what clients read (describe, list, perdure.running, terminate) counts the history."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from pg_store_kit import FAR, claimed, new_run, opened, start_with_first_step, step
from pgserver import Databases

from perdure._errors import WorkflowAlreadyStartedError
from perdure._history import EventType
from perdure._store._base import (
    ListFilter,
    RunExists,
    StepCommit,
    StepRejected,
    utcnow,
)
from perdure._store._postgres import PostgresStore

BOTH = pytest.mark.parametrize("group_commit", ["on", "off"])


async def _row(store: PostgresStore, run_id: str) -> dict[str, Any]:
    """The run's row as stored, with its version (xmin changes with every UPDATE)."""
    async with await psycopg.AsyncConnection.connect(
        store.settings.conninfo, autocommit=True
    ) as conn:
        cur = await conn.execute(
            "SELECT next_event_seq, lease_expires_at, wake_at, status, owner,"
            " xmin::text AS version FROM perdure.workflows WHERE run_id = %s",
            (run_id,),
        )
        row = await cur.fetchone()
        assert row is not None
        names = [d.name for d in cur.description or []]
        return dict(zip(names, row, strict=True))


async def _waiting(store: PostgresStore) -> str:
    """A run held by w1 that waits for a message only (no wake-up): not due."""
    run = new_run(wake_at=None, owner="w1", lease_until=utcnow() + timedelta(seconds=30))
    await store.start_run(run)
    return run.run_id


async def _seqs(store: PostgresStore, run_id: str) -> list[int]:
    return [e.seq for e in await store.load_history(run_id)]


@BOTH
async def test_a_run_due_before_and_after_a_step_keeps_its_row(
    postgres: Databases, group_commit: str
) -> None:
    store = await opened(postgres, group_commit)
    try:
        run_id = await claimed(store)
        before = await _row(store, run_id)
        steps = [step(run_id, seq, wake_at=utcnow()) for seq in (1, 2, 3)]
        for s in steps:
            await store.commit_step(s)
        assert all(s.row_kept for s in steps)
        assert await _seqs(store, run_id) == [1, 2, 3]
        assert await _row(store, run_id) == before  # same version: not rewritten
        # What clients read counts the history.
        record = await store.get_run_by_id(run_id)
        assert record is not None and record.next_event_seq == 4
        latest = await store.get_run("default", record.workflow_id)
        assert latest is not None and latest.next_event_seq == 4
        listed = await store.list_runs(ListFilter(namespace="default"))
        assert [r.next_event_seq for r in listed if r.run_id == run_id] == [4]
        async with await psycopg.AsyncConnection.connect(store.settings.conninfo) as conn:
            cur = await conn.execute(
                "SELECT history_length FROM perdure.running WHERE run_id = %s", (run_id,)
            )
            assert await cur.fetchone() == (3,)
    finally:
        await store.close()


@BOTH
async def test_a_full_fence_after_held_steps_moves_the_row_to_the_history(
    postgres: Databases, group_commit: str
) -> None:
    store = await opened(postgres, group_commit)
    try:
        run_id = await claimed(store)
        for seq in (1, 2):
            await store.commit_step(step(run_id, seq, wake_at=utcnow()))
        timer = step(run_id, 3, wake_at=FAR)  # a timer: the run is not due any more
        await store.commit_step(timer)
        assert not timer.row_kept
        row = await _row(store, run_id)
        assert row["next_event_seq"] == 4 and row["wake_at"] == FAR
        assert row["lease_expires_at"] >= timer.lease_until  # type: ignore[operator]
        # Searching (a row column) is a full fence too.
        tagged = step(run_id, 4, wake_at=utcnow(), search_attributes={"k": 1})
        await store.commit_step(tagged)
        assert not tagged.row_kept and (await _row(store, run_id))["next_event_seq"] == 5
    finally:
        await store.close()


@BOTH
async def test_a_run_that_was_not_due_gets_the_new_wake_at(
    postgres: Databases, group_commit: str
) -> None:
    store = await opened(postgres, group_commit)
    try:
        waiting = await _waiting(store)
        now = utcnow()
        first = step(waiting, 1, wake_at=now)
        await store.commit_step(first)
        assert not first.row_kept
        row = await _row(store, waiting)
        assert row["wake_at"] == now and row["next_event_seq"] == 2
        second = step(waiting, 2, wake_at=utcnow())  # due before and after now
        await store.commit_step(second)
        assert second.row_kept and (await _row(store, waiting))["wake_at"] == now
    finally:
        await store.close()


@BOTH
async def test_held_steps_are_still_fenced(postgres: Databases, group_commit: str) -> None:
    store = await opened(postgres, group_commit)
    try:
        run_id = await claimed(store)
        await store.commit_step(step(run_id, 1, wake_at=utcnow()))
        with pytest.raises(StepRejected):
            await store.commit_step(step(run_id, 1, wake_at=utcnow()))  # history moved on
        with pytest.raises(StepRejected):
            await store.commit_step(step(run_id, 2, wake_at=utcnow(), worker_id="w2"))
        with pytest.raises(StepRejected):
            await store.commit_step(step(run_id, 1, wake_at=FAR))  # the full fence too
        with pytest.raises(StepRejected):
            await store.commit_step(step(run_id, 1, wake_at=FAR, release=True))
        assert await _seqs(store, run_id) == [1]
        # The row trails by one; the next full fence still finds its place.
        await store.commit_step(step(run_id, 2, release=True, wake_at=utcnow()))
        row = await _row(store, run_id)
        assert row["next_event_seq"] == 3 and row["owner"] is None
        with pytest.raises(StepRejected):  # released: not w1's any more
            await store.commit_step(step(run_id, 3, wake_at=utcnow()))
    finally:
        await store.close()


@BOTH
async def test_a_takeover_waits_for_the_lock_and_fences_the_step_out(
    postgres: Databases, group_commit: str
) -> None:
    store = await opened(postgres, group_commit)
    try:
        run_id = await claimed(store)
        await store.commit_step(step(run_id, 1, wake_at=utcnow()))
        async with await psycopg.AsyncConnection.connect(store.settings.conninfo) as other:
            # Another worker takes the run over; its transaction is still open.
            await other.execute(
                "UPDATE perdure.workflows SET owner = 'w2' WHERE run_id = %s", (run_id,)
            )
            late = asyncio.create_task(store.commit_step(step(run_id, 2, wake_at=utcnow())))
            await asyncio.sleep(0.3)
            assert not late.done()  # FOR SHARE waits for the takeover's row lock
            await other.commit()
            with pytest.raises(StepRejected):
                await late
        assert await _seqs(store, run_id) == [1]
        # The new owner's step goes on from the history.
        mine = step(run_id, 2, wake_at=utcnow(), worker_id="w2")
        await store.commit_step(mine)
        assert mine.row_kept and await _seqs(store, run_id) == [1, 2]
    finally:
        await store.close()


@BOTH
async def test_terminate_appends_after_the_history_not_the_row(
    postgres: Databases, group_commit: str
) -> None:
    store = await opened(postgres, group_commit)
    try:
        run_id = await claimed(store)
        for seq in (1, 2, 3):
            await store.commit_step(step(run_id, seq, wake_at=utcnow()))
        assert (await _row(store, run_id))["next_event_seq"] == 1
        record = await store.get_run_by_id(run_id)
        assert record is not None
        await store.terminate_run("default", record.workflow_id, None, "enough")
        history = await store.load_history(run_id)
        assert [(e.seq, e.event_type) for e in history][-2:] == [
            (3, EventType.MARKER_RECORDED),
            (4, EventType.WORKFLOW_TERMINATED),
        ]
        row = await _row(store, run_id)
        assert row["status"] == "terminated" and row["next_event_seq"] == 5
        with pytest.raises(StepRejected):
            await store.commit_step(step(run_id, 4, wake_at=utcnow()))
    finally:
        await store.close()


SCHEDULED = (EventType.ACTIVITY_SCHEDULED, {"activity_id": 1, "activity_type": "a", "args": []})


def _scheduling_start(workflow_id: str, **run: Any) -> StepCommit:
    """A run leased to w1 with its first step, which schedules an activity: due from the
    step on (as a worker's step computes it, after the start's own wake-up)."""
    first = start_with_first_step(workflow_id, "w1", SCHEDULED, **run)
    return dataclasses.replace(first, wake_at=utcnow())


@BOTH
async def test_a_run_started_with_its_first_step_is_inserted_and_held(
    postgres: Databases, group_commit: str
) -> None:
    """A worker's own start (W3): the insert, then the first step's events only."""
    store = await opened(postgres, group_commit)
    try:
        first = _scheduling_start("held-start")
        await store.commit_step(first)
        assert not first.row_kept  # the insert wrote the lease: the worker counts on it
        run_id = first.run_id
        assert await _seqs(store, run_id) == [1, 2]
        row = await _row(store, run_id)
        assert row["next_event_seq"] == 1 and row["owner"] == "w1"  # trails
        record = await store.get_run_by_id(run_id)
        assert record is not None and record.next_event_seq == 3
        second = step(run_id, 3, wake_at=utcnow())
        await store.commit_step(second)
        assert second.row_kept and await _seqs(store, run_id) == [1, 2, 3]
    finally:
        await store.close()


@BOTH
async def test_a_held_start_on_a_running_id_falls_back_to_the_id_policies(
    postgres: Databases, group_commit: str
) -> None:
    store = await opened(postgres, group_commit)
    try:
        running = _scheduling_start("busy-held")
        await store.commit_step(running)
        refused = _scheduling_start("busy-held")
        with pytest.raises(WorkflowAlreadyStartedError):
            await store.commit_step(refused)  # the default policy: fail
        assert await store.get_run_by_id(refused.run_id) is None
        assert await store.load_history(refused.run_id) == []
        kept = _scheduling_start("busy-held", id_conflict_policy="use_existing")
        with pytest.raises(RunExists) as exists:  # the running run is the answer
            await store.commit_step(kept)
        assert exists.value.run_id == running.run_id
        assert await _seqs(store, running.run_id) == [1, 2]  # untouched
    finally:
        await store.close()


@BOTH
async def test_a_start_not_due_at_once_takes_the_full_step(
    postgres: Databases, group_commit: str
) -> None:
    """A first step that sleeps (its run due later) moves the fresh row on."""
    store = await opened(postgres, group_commit)
    try:
        timer = (EventType.TIMER_STARTED, {"timer_id": 1})
        first = start_with_first_step("sleeps", "w1", timer, wake_at=FAR)
        await store.commit_step(first)
        assert not first.row_kept
        row = await _row(store, first.run_id)
        assert row["next_event_seq"] == 3 and row["wake_at"] == FAR
    finally:
        await store.close()


async def test_held_steps_committed_together_are_one_statement(postgres: Databases) -> None:
    """A group commit sends its held steps as one ``commit_steps_held``: each applies by
    its own fence; one whose run was not due is sent again as a lean step, which moves
    its row; one that lost its fence is rejected; the others keep their rows."""
    store = await opened(postgres)
    try:
        runs = [await claimed(store) for _ in range(8)]
        waiting = await _waiting(store)  # not due: the held fence misses it
        before = {run_id: await _row(store, run_id) for run_id in runs}
        steps = [step(run_id, 1, wake_at=utcnow()) for run_id in runs]
        steps.append(step(waiting, 1, wake_at=utcnow()))
        stale = step(runs[0], 5, wake_at=utcnow())  # its copy is ahead of the history
        statements = store._group.statements
        outcomes = await asyncio.gather(
            *(store.commit_step(s) for s in [*steps, stale]), return_exceptions=True
        )
        assert outcomes[:-1] == [None] * len(steps)
        assert isinstance(outcomes[-1], StepRejected)
        assert store._group.statements - statements < len(steps) // 2  # merged
        for s in steps[:-1]:
            assert s.row_kept and await _seqs(store, s.run_id) == [1]
            assert await _row(store, s.run_id) == before[s.run_id]  # not rewritten
        assert not steps[-1].row_kept  # sent again alone: the row moved on
        row = await _row(store, waiting)
        assert row["next_event_seq"] == 2 and row["wake_at"] == steps[-1].wake_at
        assert await _seqs(store, waiting) == [1]
    finally:
        await store.close()
