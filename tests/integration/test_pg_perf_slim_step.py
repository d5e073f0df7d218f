"""PostgreSQL: a lean step sent alone with no task rows and no messages goes out slim
(or held, when the run's row has nothing to change: test_pg_perf_held_step.py).

``commit_step_slim`` is ``commit_step_lean`` without its task and inbox statements (the
server's setup of statements that find nothing to do). These check which steps take it,
with group commit on and off, and that such a step still does what a step must: fence,
history, search attributes, release, and waking for a message that arrived meanwhile.
"""

from __future__ import annotations

from typing import Any

import pytest
from pg_store_kit import FAR, claimed, step
from pg_store_kit import opened as migrated
from pgserver import Databases

from perdure._store._base import NewTask, StepRejected, utcnow
from perdure._store._postgres import PostgresStore
from perdure._store._postgres_db import Conn, RawQuery


async def opened(postgres: Databases, group_commit: str) -> tuple[PostgresStore, list[str]]:
    """A migrated store, and the list that records which statement each lone step took."""
    store = await migrated(postgres, group_commit)
    queries = (
        ("slim", store._slim_query),
        ("lean", store._lean_query),
        ("held", store._held_query),
    )
    names = {id(q): n for n, q in queries}
    sent: list[str] = []
    if group_commit == "off":
        alone = store._alone

        async def recorded(statements: list[tuple[RawQuery, dict[str, Any]]], conn: Conn) -> Any:
            sent.extend(names.get(id(q), "other") for q, _ in statements)
            return await alone(statements, conn)

        store._alone = recorded  # type: ignore[method-assign]
    else:
        link = store._group._links[0]
        first = link.first

        async def recorded_first(conn: Conn, query: RawQuery, params: dict[str, Any]) -> Any:
            if id(query) in names:  # a step (signals go through the link too)
                sent.append(names[id(query)])
            return await first(conn, query, params)

        link.first = recorded_first  # type: ignore[method-assign]
    return store, sent


@pytest.mark.parametrize("group_commit", ["on", "off"])
async def test_which_lone_steps_go_slim(postgres: Databases, group_commit: str) -> None:
    store, sent = await opened(postgres, group_commit)
    try:
        run_id = await claimed(store)
        await store.commit_step(step(run_id, 1, wake_at=utcnow()))
        task = NewTask(
            activity_id=7,
            activity_type="a",
            task_queue="remote",
            scheduled_at=utcnow(),
            visible_at=utcnow(),
        )
        await store.commit_step(step(run_id, 2, new_tasks=[task]))  # adds a task row
        await store.commit_step(step(run_id, 3, finished_tasks=[7]))  # deletes one
        record = await store.get_run_by_id(run_id)
        assert record is not None
        await store.send_inbox("default", record.workflow_id, None, "signal", "s", [1])
        (item,) = await store.load_run_inbox(run_id)
        await store.commit_step(step(run_id, 4, consumed_inbox=[item.inbox_id]))
        await store.commit_step(step(run_id, 5, search_attributes={"n": 1}))
        # The first stays due, with nothing of the row to change: its events only
        # (test_pg_perf_held_step.py); the last changes a search attribute.
        assert sent == ["held", "lean", "lean", "lean", "slim"]
        assert await store.load_tasks(run_id) == []
        assert await store.load_run_inbox(run_id) == []
    finally:
        await store.close()


@pytest.mark.parametrize("group_commit", ["on", "off"])
async def test_a_slim_step_does_what_a_step_must(postgres: Databases, group_commit: str) -> None:
    store, sent = await opened(postgres, group_commit)
    try:
        run_id = await claimed(store)
        due_since = (await store.get_run_by_id(run_id)).wake_at  # type: ignore[union-attr]
        await store.commit_step(step(run_id, 1, wake_at=utcnow(), search_attributes={"c": "r"}))
        record = await store.get_run_by_id(run_id)
        assert record is not None
        assert record.wake_at == due_since  # due before and after: kept as it was
        assert record.search_attributes == {"c": "r"}
        await store.commit_step(step(run_id, 2, wake_at=FAR, search_attributes={"c": None}))
        record = await store.get_run_by_id(run_id)
        assert record is not None and record.wake_at == FAR and record.search_attributes == {}
        # A message that arrived and was not consumed keeps the run due.
        await store.send_inbox("default", record.workflow_id, None, "signal", "s", [1])
        await store.commit_step(step(run_id, 3, wake_at=FAR))
        woken = await store.get_run_by_id(run_id)
        assert woken is not None and woken.wake_at is not None and woken.wake_at < utcnow()
        events = await store.load_history(run_id)
        assert [(e.seq, list(e.attributes)) for e in events] == [(s, ["z", "a"]) for s in (1, 2, 3)]
        # Fenced: a replayed step, another worker, and a released run are refused.
        with pytest.raises(StepRejected):
            await store.commit_step(step(run_id, 3))
        with pytest.raises(StepRejected):
            await store.commit_step(step(run_id, 4, worker_id="w2"))
        await store.commit_step(step(run_id, 4, release=True, wake_at=utcnow()))
        with pytest.raises(StepRejected):
            await store.commit_step(step(run_id, 5))
        record = await store.get_run_by_id(run_id)
        assert record is not None and record.owner is None and record.next_event_seq == 5
        assert sent and set(sent) == {"slim"}
    finally:
        await store.close()
