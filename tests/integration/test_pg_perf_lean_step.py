"""PostgreSQL: a step that does not close its run takes the lean step statement.

``commit_step_lean`` leaves out everything of a close, and keeps a due run's ``wake_at``
when the step leaves it due (so that the row is updated in place). These check that it
still does everything a step must: fence, history, tasks, inbox, search attributes, the
run's next wake-up, and a takeover once its lease ran out.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import pytest
from pg_store_kit import FAR, T, claimed, opened, step
from pgserver import Databases

from perdure._store import open_store
from perdure._store._base import NewTask, RunClose, StepRejected, utcnow
from perdure._store._postgres import PostgresStore


async def wake_at(store: PostgresStore, run_id: str) -> datetime | None:
    record = await store.get_run_by_id(run_id)
    assert record is not None
    return record.wake_at


@pytest.mark.parametrize("group_commit", ["on", "off"])
async def test_a_run_that_stays_due_keeps_its_wake_at(
    postgres: Databases, group_commit: str
) -> None:
    store = await opened(postgres, group_commit)
    try:
        run_id = await claimed(store)
        due_since = await wake_at(store, run_id)
        assert due_since is not None and due_since <= utcnow()
        # Due before, due after: the row keeps the earlier time (no index entry changes).
        await store.commit_step(step(run_id, 1, wake_at=utcnow()))
        assert await wake_at(store, run_id) == due_since
        # A wake-up in the future, or none, is written as it is.
        await store.commit_step(step(run_id, 2, wake_at=FAR))
        assert await wake_at(store, run_id) == FAR
        await store.commit_step(step(run_id, 3, wake_at=None))
        assert await wake_at(store, run_id) is None
        now = utcnow()
        await store.commit_step(step(run_id, 4, wake_at=now))
        assert await wake_at(store, run_id) == now
        # A later time that is not due yet replaces an earlier one.
        await store.commit_step(step(run_id, 5, wake_at=utcnow() + timedelta(hours=1)))
        later = await wake_at(store, run_id)
        assert later is not None and later > utcnow()
        assert [e.seq for e in await store.load_history(run_id)] == [1, 2, 3, 4, 5]
    finally:
        await store.close()


async def test_a_lean_step_writes_its_own_rows_and_is_fenced(postgres: Databases) -> None:
    store = await opened(postgres)
    try:
        run_id = await claimed(store)
        task = NewTask(
            activity_id=7,
            activity_type="a",
            task_queue="remote",
            scheduled_at=utcnow(),
            visible_at=utcnow(),
        )
        await store.commit_step(
            step(run_id, 1, new_tasks=[task], search_attributes={"color": "red", "n": 1})
        )
        assert [t.activity_id for t in await store.load_tasks(run_id)] == [7]
        record = await store.get_run_by_id(run_id)
        assert record is not None and record.search_attributes == {"color": "red", "n": 1}
        # A message the worker had not read keeps the run due; once consumed it is gone.
        assert record.workflow_id
        await store.send_inbox("default", record.workflow_id, None, "signal", "s", [1])
        await store.commit_step(step(run_id, 2, wake_at=FAR, finished_tasks=[7]))
        assert await store.load_tasks(run_id) == []
        woken = await wake_at(store, run_id)
        assert woken is not None and woken < utcnow()
        (item,) = await store.load_run_inbox(run_id)
        await store.commit_step(
            step(
                run_id,
                3,
                wake_at=FAR,
                consumed_inbox=[item.inbox_id],
                search_attributes={"n": None},
            )
        )
        assert await store.load_run_inbox(run_id) == []
        assert await wake_at(store, run_id) == FAR
        record = await store.get_run_by_id(run_id)
        assert record is not None and record.search_attributes == {"color": "red"}
        events = await store.load_history(run_id)
        assert [list(e.attributes) for e in events] == [["z", "a"]] * 3  # key order kept
        # Fenced: a replayed step, another worker, and a released run are all refused.
        with pytest.raises(StepRejected):
            await store.commit_step(step(run_id, 3))
        with pytest.raises(StepRejected):
            await store.commit_step(step(run_id, 4, worker_id="w2"))
        await store.commit_step(step(run_id, 4, release=True, wake_at=utcnow()))
        with pytest.raises(StepRejected):
            await store.commit_step(step(run_id, 5))
        record = await store.get_run_by_id(run_id)
        assert record is not None and record.owner is None
    finally:
        await store.close()


async def test_a_due_run_whose_lease_ran_out_is_taken_over(postgres: Databases) -> None:
    store = await opened(postgres)
    try:
        run_id = await claimed(store)
        # The step keeps the older wake_at; the run must still count as due for others.
        await store.commit_step(step(run_id, 1, wake_at=utcnow()))
        await store.db.statement(
            lambda conn: conn.execute(
                "UPDATE perdure.workflows SET lease_expires_at = now() - interval '1 second'"
            )
        )
        taken = await store.claim_runs(
            namespace="default",
            worker_id="w2",
            task_queues=["q"],
            workflow_types=[T],
            limit=10,
            lease_until=utcnow() + timedelta(seconds=30),
        )
        assert [r.run_id for r in taken] == [run_id]
        with pytest.raises(StepRejected):
            await store.commit_step(step(run_id, 2))
        await store.commit_step(step(run_id, 2, worker_id="w2"))
    finally:
        await store.close()


async def test_steps_find_their_run_by_its_primary_key(postgres: Databases) -> None:
    """Plans are made once per connection, often while the table is still nearly empty.

    Then PostgreSQL may look a run up by another index that the fence's conditions fit
    (the runs a worker holds, the running runs) and read every run of the worker at each
    step; the statements must find the run by its primary key whatever the statistics.
    """
    url = postgres.url_for(postgres.create(postgres.template("postgres")))
    store = open_store(f"{url}?pool_max_size=1")
    assert isinstance(store, PostgresStore)
    await store.migrate()
    try:
        runs = [await claimed(store) for _ in range(6)]
        for seq in range(1, 8):
            for run_id in runs:  # held steps, then a timer's (the row moves: slim)
                await store.commit_step(step(run_id, seq, wake_at=utcnow() if seq < 7 else FAR))
        for run_id in runs:
            close = RunClose(status="completed", result=1, had_children=False)
            await store.commit_step(step(run_id, 8, close=close))

        async def plans(conn: Any) -> dict[str, str]:
            found = {}
            cur = await conn.execute(
                "SELECT name, statement, cardinality(parameter_types) AS n"
                " FROM pg_prepared_statements WHERE statement LIKE '%fence AS (%'"
            )
            for row in await cur.fetchall():
                nulls = ", ".join(["NULL"] * row["n"])
                explained = await conn.execute(f"EXPLAIN EXECUTE {row['name']}({nulls})")
                plan = "\n".join(r["QUERY PLAN"] for r in await explained.fetchall())
                found[row["statement"][:60]] = plan
            return found

        # Group commit prepares its statements on a connection of its own.
        found = await store._group._links[0].run(plans)
        assert len(found) >= 3  # the held step, the slim step and the closing step
        for statement, plan in found.items():
            scan = next(
                line for line in plan.splitlines() if "Scan" in line and " on workflows" in line
            )
            assert "workflows_pkey" in scan, f"{statement}:\n{plan}"
    finally:
        await store.close()


async def test_lean_steps_committed_together_apply_each_by_its_own_fence(
    postgres: Databases,
) -> None:
    """A group commit sends its lean steps as one statement (commit_steps_lean)."""
    store = await opened(postgres)
    try:
        runs = [await claimed(store) for _ in range(6)]
        signalled = await store.get_run_by_id(runs[2])
        assert signalled is not None
        await store.send_inbox("default", signalled.workflow_id, None, "signal", "s", [1])
        (item,) = await store.load_run_inbox(runs[2])
        task = NewTask(
            activity_id=3, activity_type="a", task_queue="remote", scheduled_at=utcnow(),
            visible_at=utcnow(),
        )  # fmt: skip
        steps = [
            step(runs[0], 1, wake_at=utcnow()),
            step(runs[1], 1, new_tasks=[task], search_attributes={"k": "v"}),
            step(runs[2], 1, consumed_inbox=[item.inbox_id], wake_at=FAR),
            step(runs[3], 1, worker_id="w2"),  # not the owner
            step(runs[4], 2),  # not the run's next seq
            step(runs[5], 1),
            step(runs[5], 1),  # the same step twice: once only
        ]
        before = store._group.transactions
        outcomes = await asyncio.gather(
            *(store.commit_step(s) for s in steps), return_exceptions=True
        )
        assert store._group.transactions - before <= 2
        rejected = [isinstance(o, StepRejected) for o in outcomes]
        assert rejected[:5] == [False, False, False, True, True]
        assert sorted(rejected[5:]) == [False, True]
        for run_id in (runs[0], runs[1], runs[2], runs[5]):
            events = await store.load_history(run_id)
            assert [(e.seq, list(e.attributes)) for e in events] == [(1, ["z", "a"])]
            record = await store.get_run_by_id(run_id)
            assert record is not None and record.next_event_seq == 2
        for run_id in (runs[3], runs[4]):
            assert await store.load_history(run_id) == []
        assert [t.activity_id for t in await store.load_tasks(runs[1])] == [3]
        record = await store.get_run_by_id(runs[1])
        assert record is not None and record.search_attributes == {"k": "v"}
        assert await store.load_run_inbox(runs[2]) == []
        assert await wake_at(store, runs[2]) == FAR
        # Next round, mixed with a closing step and a start: all in order again.
        close = RunClose(status="completed", result=1, had_children=False)
        await asyncio.gather(
            store.commit_step(step(runs[0], 2, close=close)),
            store.commit_step(step(runs[1], 2, finished_tasks=[3])),
            store.commit_step(step(runs[2], 2)),
        )
        record = await store.get_run_by_id(runs[0])
        assert record is not None and record.status == "completed"
        assert await store.load_tasks(runs[1]) == []
        assert [e.seq for e in await store.load_history(runs[2])] == [1, 2]
    finally:
        await store.close()
