"""The PostgreSQL store and its CockroachDB variant, below the engine.

``cockroach`` runs the CockroachDB store against PostgreSQL (see conftest.py): polled
wake-ups, no trigger, no advisory lock, and injected serialization failures (40001)
that must be retried without anyone noticing.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from pg_store_kit import claim
from pgserver import Databases

import perdure
from perdure import RetryPolicy, WorkflowContext
from perdure._history import EventType, HistoryEvent
from perdure._store import open_store
from perdure._store._base import NewRun, NewTask, RunClose, StepCommit, StepRejected, Store, utcnow
from perdure._store._postgres import PostgresStore
from perdure._store._queries import migration_files

both = pytest.mark.parametrize("database_url", ["postgres", "cockroach"], indirect=True)
postgres_only = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
T = "job"  # the workflow type of the runs made here


def new_run(workflow_id: str, **kw: Any) -> NewRun:
    return NewRun(
        namespace="default",
        workflow_id=workflow_id,
        run_id=uuid.uuid4().hex,
        workflow_type=T,
        task_queue="q",
        input=[1, "two"],
        wake_at=utcnow(),
        **kw,
    )


def event(seq: int, attributes: dict[str, Any] | None = None) -> HistoryEvent:
    return HistoryEvent(
        seq=seq,
        event_type=EventType.WORKFLOW_STARTED if seq == 1 else EventType.MARKER_RECORDED,
        name=None,
        attributes=attributes or {"n": seq},
        created_at=utcnow(),
    )


async def opened(url: str) -> Store:
    store = open_store(url)
    await store.migrate()
    return store


def step(run_id: str, worker_id: str, seq: int, **kw: Any) -> StepCommit:
    return StepCommit(
        namespace="default",
        run_id=run_id,
        worker_id=worker_id,
        expected_seq=seq,
        events=[event(seq)],
        lease_until=utcnow() + timedelta(seconds=30),
        **kw,
    )


@both
@pytest.mark.parametrize("group_commit", ["on", "off"])
async def test_commit_step_is_fenced_by_owner_and_sequence(
    database_url: str, group_commit: str
) -> None:
    store = await opened(f"{database_url}?group_commit={group_commit}")
    try:
        run_id, created = await store.start_run(new_run("fenced"))
        assert created
        assert await claim(store, "w1") == [run_id]
        assert await claim(store, "w2") == []  # leased
        first = step(
            run_id,
            "w1",
            1,
            new_tasks=[
                NewTask(
                    activity_id=2,
                    activity_type="a",
                    task_queue=None,
                    scheduled_at=utcnow(),
                    visible_at=utcnow(),
                )
            ],
        )
        await store.commit_step(first)
        with pytest.raises(StepRejected):
            await store.commit_step(first)  # the history moved on: seq 1 is taken
        with pytest.raises(StepRejected):
            await store.commit_step(step(run_id, "w2", 2))  # not the owner
        await store.commit_step(step(run_id, "w1", 2, finished_tasks=[2]))
        assert [e.seq for e in await store.load_history(run_id)] == [1, 2]
        assert await store.load_tasks(run_id) == []
        await store.commit_step(
            step(run_id, "w1", 3, close=RunClose(status="completed", result={"ok": True}))
        )
        record = await store.get_run("default", "fenced")
        assert record is not None
        assert (record.status, record.result, record.owner) == ("completed", {"ok": True}, None)
        assert record.next_event_seq == 4
        with pytest.raises(StepRejected):
            await store.commit_step(step(run_id, "w1", 4))  # closed
    finally:
        await store.close()


@both
async def test_two_stores_never_claim_the_same_run(database_url: str) -> None:
    a, b = await opened(database_url), await opened(database_url)
    try:
        for i in range(40):
            await a.start_run(new_run(f"wf-{i}"))
        batches = await asyncio.gather(
            *(claim(store, f"w{i}", limit=7) for i, store in enumerate([a, b] * 4))
        )
        ids = [run_id for batch in batches for run_id in batch]
        assert len(ids) == len(set(ids)) == 40
    finally:
        await a.close()
        await b.close()


@postgres_only
async def test_claims_skip_rows_locked_by_others(database_url: str) -> None:
    store = await opened(database_url)
    try:
        for i in range(3):
            await store.start_run(new_run(f"wf-{i}"))
        other = await psycopg.AsyncConnection.connect(database_url)
        async with other, other.transaction():
            await other.execute(
                "SELECT 1 FROM perdure.workflows WHERE workflow_id = 'wf-0' FOR UPDATE"
            )
            claimed = await asyncio.wait_for(claim(store, "w1"), 5)  # does not wait
            assert len(claimed) == 2
        assert len(await claim(store, "w1")) == 1
    finally:
        await store.close()


@both
async def test_concurrent_starts_of_one_id_make_one_run(database_url: str) -> None:
    stores = [await opened(database_url) for _ in range(4)]
    try:
        outcomes = await asyncio.gather(
            *(stores[i % 4].start_run(new_run("only-one")) for i in range(12)),
            return_exceptions=True,
        )
        created = [o for o in outcomes if isinstance(o, tuple)]
        assert len(created) == 1, outcomes
        assert all(
            isinstance(o, perdure.WorkflowAlreadyStartedError) for o in outcomes if o not in created
        )
    finally:
        for store in stores:
            await store.close()


@pytest.mark.parametrize("kind", ["postgres", "cockroach"])
async def test_migrations_are_concurrent_and_idempotent(
    postgres: Databases, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if kind == "cockroach":
        monkeypatch.setenv("PERDURE_TEST_COCKROACH_EMULATION", "1")
    name = postgres.create()  # empty
    url = postgres.url_for(name, "cockroachdb" if kind == "cockroach" else "postgresql")
    stores = [open_store(url) for _ in range(6)]
    try:
        await asyncio.gather(*(s.migrate() for s in stores))
        again = await opened(url)
        await again.close()
    finally:
        for store in stores:
            await store.close()
    async with await psycopg.AsyncConnection.connect(postgres.url_for(name)) as conn:
        cur = await conn.execute("SELECT version, name FROM perdure.schema_version ORDER BY 1")
        assert await cur.fetchall() == [(v, n) for v, n, _ in migration_files(kind)]
        cur = await conn.execute(
            "SELECT table_type, table_name FROM information_schema.tables"
            " WHERE table_schema = 'perdure' ORDER BY 1, 2"
        )
        found = await cur.fetchall()
    tables = ["history", "inbox", "replies", "schedules", "schema_version", "tasks", "workers"]
    tables.append("workflows")
    views = ["activity_durations", "failed", "queue_backlog", "running", "slowest_activities"]
    views.append("stuck")
    assert found == [("BASE TABLE", t) for t in tables] + [("VIEW", v) for v in views]


async def test_a_schema_of_its_own(postgres: Databases) -> None:
    url = postgres.url_for(postgres.create())
    a, b = await opened(f"{url}?schema=team_a"), await opened(f"{url}?schema=team_b")
    try:
        await a.start_run(new_run("shared-id"))
        assert await b.get_run("default", "shared-id") is None
        await b.start_run(new_run("shared-id"))  # no conflict across schemas
    finally:
        await a.close()
        await b.close()
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute("SELECT count(*) FROM team_a.workflows")
        assert await cur.fetchone() == (1,)
        cur = await conn.execute("SELECT to_regclass('perdure.workflows')")
        assert await cur.fetchone() == (None,)


@both
async def test_history_keeps_the_key_order_it_was_given(database_url: str) -> None:
    # jsonb would return {"a", "mm", "zz"}; a workflow iterating the dict on replay would
    # then take another path than it did the first time.
    store = await opened(database_url)
    try:
        run_id, _ = await store.start_run(new_run("ordered"))
        await claim(store, "w1")
        attributes = {"zz": 1, "a": {"y": 1, "b": 2}, "mm": [3]}
        await store.commit_step(replace(step(run_id, "w1", 1), events=[event(1, attributes)]))
        [loaded] = await store.load_history(run_id)
        assert list(loaded.attributes) == ["zz", "a", "mm"]
        assert list(loaded.attributes["a"]) == ["y", "b"]
    finally:
        await store.close()


@postgres_only
async def test_notifications_wake_listeners(database_url: str) -> None:
    store = await opened(database_url)
    other = await opened(database_url)
    woken = asyncio.Event()
    try:
        await store.listen(woken.set)

        async def wakes(action: Any, timeout: float = 5) -> bool:
            woken.clear()
            await action
            try:
                await asyncio.wait_for(woken.wait(), timeout)
            except TimeoutError:
                return False
            return True

        assert await wakes(other.start_run(new_run("pushed")))
        [run_id] = await claim(other, "w1")
        assert not await wakes(other.commit_step(step(run_id, "w1", 1)), 0.5)  # still held
        assert await wakes(other.send_inbox("default", "pushed", None, "signal", "s", [1]))
        assert await wakes(other.release_run(run_id, "w1", utcnow()))
        assert isinstance(store, PostgresStore)
        await store.unlisten(woken.set)
    finally:
        await store.close()
        await other.close()


@both
async def test_plain_sql_insert_into_the_inbox_signals_a_workflow(
    app: perdure.App, database_url: str
) -> None:
    @app.workflow
    async def approval(ctx: WorkflowContext) -> Any:
        return await ctx.wait_for_signal("approval")

    conninfo = database_url.replace("cockroachdb://", "postgresql://", 1)
    async with app.worker(poll_interval="50ms"):
        held = await app.start_workflow(approval, workflow_id="order-1")
        await asyncio.sleep(0.3)
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
            await conn.execute(
                "INSERT INTO perdure.inbox (workflow_id, kind, name, payload)"
                """ VALUES ('order-1', 'signal', 'approval', '[{"approved": true}]')"""
            )
        assert await held.result(timeout=20) == {"approved": True}

    # A run no worker holds: the insert makes it due, and the next worker delivers it.
    async with app.worker(poll_interval="50ms"):
        idle = await app.start_workflow(approval, workflow_id="order-2")
        await asyncio.sleep(0.3)
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT owner FROM perdure.workflows WHERE workflow_id = 'order-2'"
        )
        assert await cur.fetchone() == (None,)
        await conn.execute(
            "INSERT INTO perdure.inbox (workflow_id, kind, name, payload)"
            """ VALUES ('order-2', 'signal', 'approval', '"yes"')"""
        )
    async with app.worker(poll_interval="50ms"):
        assert await idle.result(timeout=20) == "yes"


@pytest.mark.parametrize("database_url", ["cockroach"], indirect=True)
async def test_serialization_failures_are_retried_transparently(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERDURE_TEST_COCKROACH_FAULT_RATE", "0.5")
    app = perdure.App(database_url)

    @app.activity
    async def double(x: int) -> int:
        return 2 * x

    @app.workflow
    async def chain(ctx: WorkflowContext, n: int) -> int:
        for _ in range(n):
            n = await ctx.activity(double, n)
        return n

    try:
        async with app.worker(poll_interval="20ms"):
            results = await asyncio.gather(*(app.execute_workflow(chain, 3) for _ in range(10)))
        assert results == [24] * 10
        store = await app._get_store()
        assert isinstance(store, PostgresStore)
        # Half of some 60 transactions fail: fewer than 5 would be a one-in-a-billion draw.
        assert store.db.injected >= 5
        # Stopping the worker may cancel its poll and lease loops between an injected
        # failure and its retry (nothing is lost: they were stopping anyway).
        assert store.db.retries >= store.db.injected - 2
    finally:
        await app.close()


async def test_a_cockroach_url_must_point_at_cockroachdb(postgres: Databases) -> None:
    store = open_store(postgres.url_for(postgres.create(), "cockroachdb"))
    try:
        with pytest.raises(ValueError, match="not CockroachDB"):
            await store.migrate()
    finally:
        await store.close()


async def test_group_commit_puts_concurrent_steps_in_one_transaction(
    postgres: Databases,
) -> None:
    store = await opened(postgres.url_for(postgres.create(postgres.template("postgres"))))
    assert isinstance(store, PostgresStore)
    try:
        ids = [(await store.start_run(new_run(f"g-{i}")))[0] for i in range(50)]
        started = store._group.writes  # (a client's starts go by group commit too)
        assert len(await claim(store, "w1")) == 50
        await asyncio.gather(*(store.commit_step(step(r, "w1", 1)) for r in ids))
        bad = store.commit_step(step(ids[0], "w1", 1))  # rejected alone, others commit
        outcomes = await asyncio.gather(
            bad, *(store.commit_step(step(r, "w1", 2)) for r in ids[1:]), return_exceptions=True
        )
        assert isinstance(outcomes[0], StepRejected) and outcomes[1:] == [None] * 49
        assert store._group.writes - started == 100
        assert store._group.transactions - started < 50
    finally:
        await store.close()


@both
async def test_operator_views(app: perdure.App, database_url: str) -> None:
    @app.activity(name="charge", retry=RetryPolicy(maximum_attempts=2, initial_interval="10ms"))
    async def charge(amount: int) -> int:
        if amount < 0:
            raise ValueError("negative amount")
        await asyncio.sleep(0.05)
        return amount

    @app.workflow(name="pay")
    async def pay(ctx: WorkflowContext, amount: int) -> int:
        return await ctx.activity(charge, amount)

    @app.workflow(name="wait")
    async def wait(ctx: WorkflowContext) -> None:
        await ctx.wait_for_signal("go")

    conninfo = database_url.replace("cockroachdb://", "postgresql://", 1)

    async def rows(sql: str) -> list[tuple[Any, ...]]:
        async with await psycopg.AsyncConnection.connect(conninfo) as conn:
            return await (await conn.execute(sql)).fetchall()

    async with app.worker(poll_interval="50ms"):
        await app.execute_workflow(pay, 5, workflow_id="ok")
        bad = await app.start_workflow(pay, -1, workflow_id="bad")
        with pytest.raises(perdure.WorkflowFailedError):
            await bad.result(timeout=20)
        await app.start_workflow(wait, workflow_id="waiting")
        await asyncio.sleep(0.3)
        assert await rows("SELECT workflow_id, parked FROM perdure.running") == [("waiting", False)]
        assert await rows("SELECT workflow_id, error_type, error_message FROM perdure.failed") == [
            ("bad", "ActivityError", "activity 'charge' failed")
        ]
        slow = await rows(
            "SELECT activity, outcome, attempts, seconds FROM perdure.slowest_activities"
        )
        assert slow[0][:2] == ("charge", "activity_completed") and slow[0][3] >= 0.05
        assert {(r[1], r[2]) for r in slow} == {("activity_completed", 1), ("activity_failed", 2)}
        assert await rows("SELECT * FROM perdure.stuck") == []
        backlog = await rows("SELECT kind, due FROM perdure.queue_backlog")
        assert all(due >= 0 for _, due in backlog)


@postgres_only
async def test_a_message_for_no_running_workflow_is_refused(database_url: str) -> None:
    store = await opened(database_url)
    try:
        with pytest.raises(perdure.WorkflowNotFoundError):
            await store.send_inbox("default", "nobody", None, "signal", "s", [])
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            with pytest.raises(psycopg.errors.NoDataFound, match="no running workflow"):
                await conn.execute(
                    "INSERT INTO perdure.inbox (workflow_id, kind) VALUES ('nobody', 'cancel')"
                )
    finally:
        await store.close()


@postgres_only
async def test_another_process_start_and_signal_wake_the_worker_at_once(
    database_url: str,
) -> None:
    # Two App objects stand for two processes: no in-process shortcut, and a poll
    # interval far longer than the test may take.
    worker_app, client = perdure.App(database_url), perdure.App(database_url)
    for a in (worker_app, client):

        @a.workflow(name="wait")
        async def wait(ctx: WorkflowContext) -> Any:
            return await ctx.wait_for_signal("go")

    try:
        async with worker_app.worker(poll_interval="60s"):
            await asyncio.sleep(0.2)
            handle = await client.start_workflow("wait", workflow_id="pushed")
            await asyncio.sleep(0.3)
            await handle.signal("go", 42)
            assert await handle.result(timeout=5) == 42
    finally:
        await worker_app.close()
        await client.close()


async def test_a_user_without_create_migrates_into_a_schema_made_for_it(
    postgres: Databases,
) -> None:
    name = postgres.create()
    role = f"{name}_app"
    async with await psycopg.AsyncConnection.connect(
        postgres.url_for(name), autocommit=True
    ) as admin:
        await admin.execute(f"CREATE ROLE {role} LOGIN")
        await admin.execute(f"REVOKE CREATE ON DATABASE {name} FROM PUBLIC")
        await admin.execute(f"CREATE SCHEMA jobs AUTHORIZATION {role}")
    url = postgres.url_for(name).replace("//postgres@", f"//{role}@", 1)
    store = await opened(f"{url}?schema=jobs")
    try:
        run_id, _ = await store.start_run(new_run("limited"))
        record = await store.get_run("default", "limited")
        assert record is not None and record.run_id == run_id
    finally:
        await store.close()


@postgres_only
async def test_libpq_parameters_in_the_url_reach_the_server(database_url: str) -> None:
    # "options" holds spaces: they must reach libpq as %20, which it decodes (not "+").
    store = await opened(f"{database_url}?options=-c%20statement_timeout%3D4321&schema=perdure")
    try:
        assert isinstance(store, PostgresStore)
        row = await store._one("SHOW statement_timeout", ())
        assert row is not None and row["statement_timeout"] == "4321ms"
    finally:
        await store.close()
