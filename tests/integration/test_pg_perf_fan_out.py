"""PostgreSQL: a fan-out's children go in as one statement, and resuming them reads once.

A step that starts many children inserts them with ONE ``insert_runs`` statement when a
plain insert decides their starts (a child whose id is taken then takes the one-by-one
path, which applies its id policies). A worker resuming many claimed runs at once reads
their histories, tasks and inboxes as one query per kind (``ByRun``). These check both
do exactly what the one-by-one paths did.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from pg_store_kit import claim, count_reads, new_run, opened
from pgserver import Databases

from perdure._history import EventType, HistoryEvent
from perdure._store._base import NewRun, NewTask, StepCommit, utcnow
from perdure._store._postgres_db import Conn


def event(seq: int, **attributes: Any) -> HistoryEvent:
    return HistoryEvent(
        seq=seq,
        event_type=EventType.MARKER_RECORDED,
        name=None,
        attributes=attributes,
        created_at=utcnow(),
    )


async def test_children_go_in_as_one_statement_and_taken_ids_keep_their_policies(
    postgres: Databases,
) -> None:
    store = await opened(postgres)
    try:
        parent = new_run(arg=0)
        await store.start_run(parent)
        (parent_id,) = await claim(store)
        taken = new_run("taken", arg=0)
        await store.start_run(taken)  # running: a child with this id conflicts
        one_by_one: list[str] = []
        start_child = store.tx.start_child

        async def counted(conn: Conn, step: StepCommit, child: NewRun) -> None:
            one_by_one.append(child.workflow_id)
            await start_child(conn, step, child)

        store.tx.start_child = counted  # type: ignore[method-assign]

        def child(i: int, workflow_id: str | None = None, **kw: Any) -> NewRun:
            return new_run(
                workflow_id or f"child-{i}",
                arg=i,
                parent_workflow_id=parent.workflow_id,
                parent_run_id=parent_id,
                parent_close_policy="terminate",
                child_id=i,
                **kw,
            )

        children = [child(i) for i in range(50)]
        children.insert(10, child(50, "taken"))  # fails: the parent hears of it
        children.insert(20, child(51, "taken", id_conflict_policy="use_existing"))
        children.append(child(52, "child-3"))  # taken by a sibling of the same step
        await store.commit_step(
            StepCommit(
                namespace="default",
                run_id=parent_id,
                worker_id="w1",
                expected_seq=1,
                events=[event(1)],
                children=children,
                lease_until=utcnow() + timedelta(seconds=30),
            )
        )
        assert one_by_one == ["taken", "taken", "child-3"]
        for c in children[:10] + children[11:20] + children[21:-1]:
            record = await store.get_run_by_id(c.run_id)
            assert record is not None and record.status == "running"
            assert (record.workflow_id, record.input, record.child_id) == (
                c.workflow_id,
                c.input,
                c.child_id,
            )
            assert (record.parent_run_id, record.owner) == (parent_id, None)
        for c in (children[10], children[20], children[-1]):
            assert await store.get_run_by_id(c.run_id) is None
        told = await store.load_run_inbox(parent_id)
        assert [(i.kind, i.payload[0]["child_id"], i.payload[0]["status"]) for i in told] == [
            ("child_result", 50, "failed"),
            ("child_result", 52, "failed"),
        ]
    finally:
        await store.close()


async def test_concurrent_reads_of_many_runs_are_one_query_each(postgres: Databases) -> None:
    store = await opened(postgres)
    try:
        runs = [new_run(arg=0) for _ in range(12)]
        for run in runs:
            await store.start_run(run)
        run_ids = await claim(store)
        assert sorted(run_ids) == sorted(r.run_id for r in runs)
        # Some history, task rows and messages, different for each run.
        for n, run_id in enumerate(run_ids):
            record = await store.get_run_by_id(run_id)
            assert record is not None
            tasks = [
                NewTask(
                    activity_id=a,
                    activity_type="a",
                    task_queue="remote",
                    scheduled_at=utcnow(),
                    visible_at=utcnow(),
                )
                for a in range(n % 3)
            ]
            await store.commit_step(
                StepCommit(
                    namespace="default",
                    run_id=run_id,
                    worker_id="w1",
                    expected_seq=1,
                    events=[event(s, n=n, s=s) for s in range(1, 1 + n % 4)],
                    new_tasks=tasks,
                    lease_until=utcnow() + timedelta(seconds=30),
                )
                if n % 4
                else StepCommit(
                    namespace="default",
                    run_id=run_id,
                    worker_id="w1",
                    expected_seq=1,
                    events=[],
                    new_tasks=tasks,
                    lease_until=utcnow() + timedelta(seconds=30),
                )
            )
            for k in range(n % 2 + n % 3):
                await store.send_inbox("default", record.workflow_id, None, "signal", "s", [k])

        async def one_by_one(run_id: str) -> tuple[list[Any], list[Any], list[Any]]:
            async def read(conn: Conn) -> tuple[list[Any], list[Any], list[Any]]:
                key = {"run_id": run_id}
                history = await (await conn.execute(store.q["load_history"], key)).fetchall()
                tasks = await (await conn.execute(store.q["load_tasks"], key)).fetchall()
                inbox = await (await conn.execute(store.q["run_inbox"], key)).fetchall()
                return history, tasks, inbox

            return await store.db.read(read)

        expected = [await one_by_one(r) for r in run_ids]
        with pytest.MonkeyPatch.context() as patch:
            reads = count_reads(store, patch)
            got = await asyncio.gather(
                *(
                    asyncio.gather(
                        store.load_history(r), store.load_tasks(r), store.load_run_inbox(r)
                    )
                    for r in run_ids + run_ids[:3]  # a run asked for twice gets its rows twice
                )
            )
            assert reads() == 3
        for (history, tasks, inbox), (rows_h, rows_t, rows_i) in zip(
            got, expected + expected[:3], strict=True
        ):
            assert [(e.seq, e.attributes) for e in history] == [
                (r["seq"], r["attributes"]) for r in rows_h
            ]
            assert [(t.run_id, t.activity_id) for t in tasks] == [
                (r["run_id"], r["activity_id"]) for r in rows_t
            ]
            assert [(i.inbox_id, i.payload) for i in inbox] == [
                (r["inbox_id"], r["payload"]) for r in rows_i
            ]
        assert any(len(h) > 1 for h, _, _ in got) and any(len(t) > 1 for _, t, _ in got)
        assert any(len(i) > 1 for _, _, i in got) and any(not h for h, _, _ in got)
        # A run with nothing, and a run that does not exist, read as empty.
        assert await store.load_history("nope") == []
        assert await store.load_run_inbox("nope") == []
    finally:
        await store.close()


async def test_a_step_with_many_events_appends_them_as_one_statement(
    postgres: Databases,
) -> None:
    store = await opened(postgres)
    try:
        parent = new_run(arg=0)
        await store.start_run(parent)
        (parent_id,) = await claim(store)
        # The one-by-one statement must not be used: it would fail here.
        store.tx.q = {**store.tx.q, "append_event": "SELECT perdure.no_such_function()"}
        events = [event(s, z=s, a=[s, {"b": None}], text="é'\"\\") for s in range(1, 6)]
        events[2] = replace(events[2], name="named")
        await store.commit_step(
            StepCommit(
                namespace="default",
                run_id=parent_id,
                worker_id="w1",
                expected_seq=1,
                events=events,
                children=[new_run(parent_run_id=parent_id, child_id=1, arg=0)],
                lease_until=utcnow() + timedelta(seconds=30),
            )
        )
        loaded = await store.load_history(parent_id)
        assert [(e.seq, e.event_type, e.name, e.attributes, e.created_at) for e in loaded] == [
            (e.seq, e.event_type, e.name, e.attributes, e.created_at) for e in events
        ]
        assert [list(e.attributes) for e in loaded] == [["z", "a", "text"]] * 5
    finally:
        await store.close()
