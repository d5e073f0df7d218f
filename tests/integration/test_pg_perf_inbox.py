"""PostgreSQL: messages to runs that wait, by the thousand, cost the same per message.

W6 (10,000 runs waiting for a signal, then each signalled) was superlinear in the runs
held. Each signal found its run by (namespace, workflow_id) three times (the statement's
own check, the inbox triggers' check and wake-up), and each of those statements,
planned once per connection while the table had no statistics, went through
``workflows_due`` (its predicate matched, and its first column is the namespace): every
running run of the namespace was read, three times per signal. The worker's poll read
every run it held to find the few new messages, and each handle awaiting a result was
one pooled round trip.

These tests plan the statements as the store does (generic plans, made while the table
is nearly empty), then fill the table and count the rows a message reads
(``pg_stat_xact_user_tables``: what this transaction read so far, triggers included).
They also check that the messages of a batch, and the steps that close runs on the
messages they took, go out as one statement each, and that concurrent lookups of the
latest runs go out as one query.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from pg_store_kit import claim, count_reads, hold_many, new_run, opened, step
from pgserver import Databases
from psycopg.rows import dict_row

from perdure._store._base import RunClose, StepRejected, utcnow
from perdure._store._postgres import PostgresStore
from perdure._store._postgres_db import _generic_plans
from perdure._store._postgres_tx import inbox_params, merged_message_params

HELD = 2000  # runs waiting for a signal, held by worker w1


async def _connection(store: PostgresStore) -> psycopg.AsyncConnection[dict[str, Any]]:
    """A connection set up as the store's own (each statement planned once, generically)."""
    conn = await psycopg.AsyncConnection.connect(
        store.settings.conninfo, autocommit=True, row_factory=dict_row
    )
    await _generic_plans(conn)
    return conn


async def _rows_read(
    conn: psycopg.AsyncConnection[dict[str, Any]], query: str, params: dict[str, Any]
) -> tuple[int, list[dict[str, Any]]]:
    """The workflows rows that running ``query`` (prepared) read, triggers included,
    and its result rows."""
    counted = (
        "SELECT coalesce(sum(seq_tup_read + coalesce(idx_tup_fetch, 0)), 0) AS n"
        " FROM pg_stat_xact_user_tables WHERE schemaname = 'perdure' AND relname = 'workflows'"
    )
    async with conn.transaction():
        before = (await (await conn.execute(counted)).fetchone() or {"n": 0})["n"]
        rows = await (await conn.execute(query, params, prepare=True)).fetchall()
        after = (await (await conn.execute(counted)).fetchone() or {"n": 0})["n"]
    return int(after - before), rows


async def test_a_signal_reads_its_run_not_every_running_run(postgres: Databases) -> None:
    store = await opened(postgres)
    conn = await _connection(store)
    try:
        # The statements are planned here, while the table holds one run.
        first = new_run("first")
        await store.start_run(first)
        one = store.q["insert_inbox_running"]
        many = store.q["insert_inbox_many"]
        params = inbox_params("default", "first", None, "signal", "go", [0])
        await conn.execute(one, params, prepare=True)
        await conn.execute(many, merged_message_params([params]), prepare=True)

        await hold_many(conn, HELD)

        params = inbox_params("default", "held-7", None, "signal", "go", [1])
        read, rows = await _rows_read(conn, one, params)
        assert [next(iter(r.values())) for r in rows] == [1]
        assert read <= 10, f"one signal read {read} runs of {HELD + 1}"

        batch = [inbox_params("default", f"held-{i}", None, "signal", "go", [i]) for i in range(8)]
        batch.append(inbox_params("default", "nobody", None, "signal", "go", [9]))
        read, rows = await _rows_read(conn, many, merged_message_params(batch))
        assert [r["i"] for r in rows] == list(range(8))  # not the one for no running run
        assert read <= 10 * len(batch), f"{len(batch)} signals read {read} runs"

        items = await store.load_run_inbox("held-run-3")
        assert [(m.kind, m.name, m.payload) for m in items] == [("signal", "go", [3])]
        # The messages made their runs due (the inbox trigger), for a worker that takes
        # them over if w1 is gone.
        row = await (
            await conn.execute(
                "SELECT count(*) AS n FROM perdure.workflows"
                " WHERE workflow_id LIKE 'held-%%' AND wake_at = 'epoch'"
            )
        ).fetchone()
        assert row is not None and row["n"] == 8
    finally:
        await conn.close()
        await store.close()


async def test_a_poll_reads_the_new_messages_not_every_run_held(postgres: Databases) -> None:
    store = await opened(postgres)
    conn = await _connection(store)
    try:
        query = store.q["owned_inbox"]
        await conn.execute(query, {"worker_id": "w1", "after_id": 0}, prepare=True)
        await hold_many(conn, HELD)
        await store.send_inbox("default", "held-5", None, "signal", "go", [5])
        await store.send_inbox("default", "held-6", None, "signal", "go", [6])
        mark = max(m.inbox_id for m in await store.load_run_inbox("held-run-5"))

        read, rows = await _rows_read(conn, query, {"worker_id": "w1", "after_id": mark})
        assert [(r["run_id"], r["payload"]) for r in rows] == [("held-run-6", [6])]
        assert read <= 10, f"a poll for one new message read {read} runs of {HELD}"

        read, rows = await _rows_read(conn, query, {"worker_id": "w1", "after_id": 0})
        assert [r["run_id"] for r in rows] == ["held-run-5", "held-run-6"]
        assert read <= 20, f"a full poll of two messages read {read} runs of {HELD}"

        read, rows = await _rows_read(conn, query, {"worker_id": "w2", "after_id": 0})
        assert rows == []  # another worker's runs
    finally:
        await conn.close()
        await store.close()


async def test_runs_closing_on_the_messages_they_took_close_together(
    postgres: Databases,
) -> None:
    store = await opened(postgres)
    try:
        runs = [new_run(f"waiter-{i}") for i in range(30)]
        for run in runs:
            await store.start_run(run)
        run_ids = await claim(store, "w1")
        assert sorted(run_ids) == sorted(r.run_id for r in runs)
        sent, statements = store._group.writes, store._group.statements
        await asyncio.gather(
            *(store.send_inbox("default", r.workflow_id, None, "signal", "go", [1]) for r in runs)
        )
        assert store._group.writes - sent == len(runs)
        assert store._group.statements - statements < len(runs) // 2  # merged, not one each

        taken = {r.run_id: [m.inbox_id for m in await store.load_run_inbox(r.run_id)] for r in runs}
        assert all(len(ids) == 1 for ids in taken.values())
        lease = utcnow() + timedelta(seconds=30)
        lost = runs[0].run_id  # its step expects another history: fenced off

        def closing(run_id: str) -> Any:
            return step(
                run_id,
                2 if run_id == lost else 1,
                lease_until=lease,
                consumed_inbox=taken[run_id],
                close=RunClose(status="completed", result=7, had_children=False),
            )

        statements = store._group.statements
        outcomes = await asyncio.gather(
            *(store.commit_step(closing(r.run_id)) for r in runs), return_exceptions=True
        )
        assert isinstance(outcomes[0], StepRejected)
        assert outcomes[1:] == [None] * (len(runs) - 1)
        assert store._group.statements - statements < len(runs) // 2

        for run in runs[1:]:
            record = await store.get_run_by_id(run.run_id)
            assert record is not None and record.status == "completed" and record.result == 7
            assert await store.load_run_inbox(run.run_id) == []  # taken, gone
        # The fenced-off step took nothing: its run still runs, its message still waits.
        assert [m.inbox_id for m in await store.load_run_inbox(lost)] == taken[lost]
    finally:
        await store.close()


async def test_latest_runs_asked_for_together_are_one_query(
    postgres: Databases, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await opened(postgres)
    try:
        runs = [new_run(f"wf-{i}") for i in range(50)]
        for run in runs:
            await store.start_run(run)
        await store.terminate_run("default", "wf-3", None, "done")
        again = new_run("wf-3")  # a newer run of the same id: the latest one counts
        await store.start_run(again)

        reads = count_reads(store, monkeypatch)
        found = await asyncio.gather(
            *(store.get_run("default", f"wf-{i}") for i in range(50)),
            store.get_run("default", "nobody"),
            store.get_run("other", "wf-1"),
        )
        assert reads() <= 4, reads()  # not 52
        assert [r.run_id if r else None for r in found[:50]] == [
            again.run_id if i == 3 else runs[i].run_id for i in range(50)
        ]
        assert found[50] is None and found[51] is None
    finally:
        await store.close()


async def test_runs_asked_for_by_id_together_are_one_query(
    postgres: Databases, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Handles from ``start_workflow`` know their run id: awaiting a thousand results in a
    process without the worker read each run once; together, in one query."""
    store = await opened(postgres)
    try:
        runs = [new_run(f"wf-{i}") for i in range(50)]
        for run in runs:
            await store.start_run(run)
        await store.terminate_run("default", "wf-7", None, "done")

        reads = count_reads(store, monkeypatch)
        found = await asyncio.gather(
            *(store.get_run("default", f"wf-{i}", runs[i].run_id) for i in range(50)),
            store.get_run("default", "wf-1", runs[2].run_id),  # another workflow's run
            store.get_run("other", "wf-1", runs[1].run_id),  # another namespace
            store.get_run("default", "wf-1", "no-such-run"),
        )
        assert reads() <= 3, reads()  # not 53
        assert [r.run_id if r else None for r in found[:50]] == [r.run_id for r in runs]
        assert found[7] is not None and found[7].status == "terminated"
        assert found[50] is None and found[51] is None and found[52] is None
    finally:
        await store.close()
