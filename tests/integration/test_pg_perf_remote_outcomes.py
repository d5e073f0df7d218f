"""PostgreSQL: the outcome of an activity run by a worker that does not hold its run (a
task queue of its own) is ONE statement sent by group commit: the task's row deleted and
the outcome put in the run's inbox, together. Activities that finish together then share
a transaction instead of one pooled transaction each. Pinned by counting group commit's
transactions (not by time)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from pg_store_kit import claim, new_run, opened, step
from pgserver import Databases

from perdure._store._base import NewTask, RemoteTask, utcnow
from perdure._store._postgres import PostgresStore


async def remote_tasks(store: PostgresStore, runs: int, worker_id: str) -> list[RemoteTask]:
    """``runs`` runs (held by w1), each with one activity on queue "far", claimed by
    ``worker_id``."""
    for n in range(runs):
        await store.start_run(new_run(f"r-{n}"))
    ids = await claim(store, "w1")
    assert len(ids) == runs
    now = utcnow()
    task = NewTask(
        activity_id=1, activity_type="far", task_queue="far", scheduled_at=now, visible_at=now
    )
    for run_id in ids:
        await store.commit_step(step(run_id, 1, new_tasks=(task,)))
    tasks = await store.claim_activity_tasks(
        namespace="default",
        worker_id=worker_id,
        task_queues=["far"],
        activity_types=["far"],
        limit=100,
        lease_until=utcnow() + timedelta(seconds=30),
    )
    assert len(tasks) == runs
    return tasks


async def test_outcomes_finished_together_share_a_transaction(postgres: Databases) -> None:
    store = await opened(postgres)
    try:
        tasks = await remote_tasks(store, 20, "act")
        group = store._group
        before, writes = group.transactions, group.writes
        done = await asyncio.gather(
            *(
                store.finish_remote_task(t, "act", {"status": "completed", "result": n})
                for n, t in enumerate(tasks)
            )
        )
        assert done == [True] * 20
        # By group commit, in one or two batches (the first may go alone), not twenty
        # transactions.
        assert group.writes - writes == 20
        assert group.transactions - before <= 2
        for n, t in enumerate(tasks):
            (item,) = await store.load_run_inbox(t.run_id)
            assert (item.kind, item.name) == ("activity_result", t.label)
            assert item.payload == [{"status": "completed", "result": n}]
            assert await store.load_tasks(t.run_id) == []
    finally:
        await store.close()


async def test_a_task_that_is_not_the_workers_reports_nothing(postgres: Databases) -> None:
    store = await opened(postgres)
    try:
        (task,) = await remote_tasks(store, 1, "act")
        outcome = {"status": "completed", "result": 1}
        assert not await store.finish_remote_task(task, "someone-else", outcome)
        assert await store.load_run_inbox(task.run_id) == []
        assert len(await store.load_tasks(task.run_id)) == 1  # still there, still act's
        assert await store.finish_remote_task(task, "act", outcome)
        assert not await store.finish_remote_task(task, "act", outcome)  # once only
        assert len(await store.load_run_inbox(task.run_id)) == 1
    finally:
        await store.close()
