"""PostgreSQL: the starts of runs whose first steps are committed together go as ONE
statement (``insert_runs``), their lean first steps as another (``commit_steps_lean``).

Pinned by counting the statements group commit sends (not by time). A start whose
workflow id is taken inserts nothing and its step is not applied; the store then applies
the id policies in a transaction of its own, as it does for a start that goes alone.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from pgserver import Databases

from perdure._errors import WorkflowAlreadyStartedError
from perdure._history import EventType, HistoryEvent
from perdure._store import open_store
from perdure._store._base import NewRun, RunClose, StepCommit, utcnow
from perdure._store._postgres import PostgresStore

W = "w1"


async def opened(postgres: Databases) -> PostgresStore:
    store = open_store(postgres.url_for(postgres.create(postgres.template("postgres"))))
    assert isinstance(store, PostgresStore)
    await store.migrate()
    return store


def first_step(workflow_id: str, *, close: bool = False) -> StepCommit:
    now = utcnow()
    run = NewRun(
        namespace="default",
        workflow_id=workflow_id,
        run_id=uuid.uuid4().hex,
        workflow_type="job",
        task_queue="q",
        input=[1, "é"],
        wake_at=now,
        search_attributes={"k": "v"},
        owner=W,
        lease_until=now + timedelta(seconds=30),
        created_at=now,
    )
    events = [
        HistoryEvent(
            seq=1,
            event_type=EventType.WORKFLOW_STARTED,
            name="job",
            attributes={"args": [1, "é"]},
            created_at=now,
        ),
        HistoryEvent(
            seq=2,
            event_type=EventType.WORKFLOW_COMPLETED if close else EventType.TIMER_STARTED,
            name=None,
            attributes={"result": 1} if close else {"timer_id": 1},
            created_at=now,
        ),
    ]
    return StepCommit(
        namespace="default",
        run_id=run.run_id,
        worker_id=W,
        expected_seq=1,
        events=events,
        wake_at=None if close else now + timedelta(hours=1),
        lease_until=now + timedelta(seconds=30),
        close=RunClose(status="completed", result=1, had_children=False) if close else None,
        start=run,
    )


@pytest.mark.parametrize("close", [False, True], ids=["lean", "closing"])
async def test_starts_committed_together_are_one_statement(
    postgres: Databases, close: bool
) -> None:
    store = await opened(postgres)
    try:
        await store.commit_step(first_step("warm-up"))  # connects group commit's link
        taken = "taken"
        await store.commit_step(first_step(taken))
        group = store._group
        before, committed = group.statements, group.transactions
        steps = [first_step(f"wf-{n}", close=close) for n in range(20)]
        steps.insert(7, first_step(taken, close=close))
        outcomes = await asyncio.gather(
            *(store.commit_step(s) for s in steps), return_exceptions=True
        )
        # One transaction for the batch, plus the taken id's own (its id policy fails it).
        assert group.transactions - committed == 1
        # insert_runs, then the steps: one statement if lean, one each if closing.
        assert group.statements - before == (21 + 1 if close else 2)
        assert isinstance(outcomes[7], WorkflowAlreadyStartedError)
        assert all(o is None for k, o in enumerate(outcomes) if k != 7)
        for s in steps[:7] + steps[8:]:
            record = await store.get_run_by_id(s.run_id)
            assert record is not None
            assert record.status == ("completed" if close else "running")
            assert record.owner == (None if close else W)
            assert record.input == [1, "é"] and record.search_attributes == {"k": "v"}
            assert record.next_event_seq == 3
            history = await store.load_history(s.run_id)
            assert [e.seq for e in history] == [1, 2]
        assert await store.get_run_by_id(steps[7].run_id) is None
    finally:
        await store.close()
