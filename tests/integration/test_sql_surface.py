"""The SQL surface operators rely on: readable tables, views, plain INSERTs that act."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

import perdure
from perdure import RetryPolicy, WorkflowContext
from perdure._store._queries import migration_files


@pytest.fixture
def sqlite_app(tmp_path: Path) -> perdure.App:
    return perdure.App(f"sqlite:///{tmp_path / 'ops.db'}")


def query(app: perdure.App, sql: str) -> list[sqlite3.Row]:
    path = app.database_url[len("sqlite:///") :]
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute(sql).fetchall()


def execute(app: perdure.App, sql: str) -> None:
    path = app.database_url[len("sqlite:///") :]
    with sqlite3.connect(path) as conn:
        conn.execute(sql)


async def test_views_answer_operator_questions(sqlite_app: perdure.App) -> None:
    app = sqlite_app

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

    async with app, app.worker():
        await app.execute_workflow(pay, 5, workflow_id="ok")
        bad = await app.start_workflow(pay, -1, workflow_id="bad")
        with pytest.raises(perdure.WorkflowFailedError):
            await bad.result(timeout=20)
        waiting = await app.start_workflow(wait, workflow_id="waiting")
        await asyncio.sleep(0.3)
        running = query(app, "SELECT workflow_id, parked FROM perdure_running")
        assert [(r["workflow_id"], r["parked"]) for r in running] == [("waiting", 0)]
        failed = query(app, "SELECT workflow_id, error_type, error_message FROM perdure_failed")
        assert [tuple(r) for r in failed] == [("bad", "ActivityError", "activity 'charge' failed")]
        slow = query(
            app, "SELECT activity, outcome, attempts, seconds FROM perdure_slowest_activities"
        )
        # Slowest first; the completed call slept 50 ms (the failed one's two attempts
        # may take longer on a loaded machine, so no order between them is assumed).
        assert [r["seconds"] for r in slow] == sorted((r["seconds"] for r in slow), reverse=True)
        outcomes = {r["outcome"]: r for r in slow}
        assert outcomes["activity_completed"]["activity"] == "charge"
        assert outcomes["activity_completed"]["seconds"] >= 0.05
        assert {(r["outcome"], r["attempts"]) for r in slow} == {
            ("activity_completed", 1),
            ("activity_failed", 2),
        }
        assert query(app, "SELECT * FROM perdure_stuck") == []
        # a plain SQL INSERT signals the workflow
        execute(
            app,
            "INSERT INTO perdure_inbox (workflow_id, kind, name, payload)"
            " VALUES ('waiting', 'signal', 'go', '[]')",
        )
        await waiting.result(timeout=20)


async def test_plain_sql_insert_cancels_a_workflow(sqlite_app: perdure.App) -> None:
    app = sqlite_app

    @app.workflow(name="sleeper")
    async def sleeper(ctx: WorkflowContext) -> None:
        await ctx.sleep("1h")

    async with app, app.worker():
        handle = await app.start_workflow(sleeper, workflow_id="zzz")
        await asyncio.sleep(0.2)
        execute(app, "INSERT INTO perdure_inbox (workflow_id, kind) VALUES ('zzz', 'cancel')")
        with pytest.raises(perdure.WorkflowFailedError):
            await handle.result(timeout=20)
    assert (await handle.describe()).status == "canceled"


async def test_fresh_schema_equals_all_migrations_applied(tmp_path: Path) -> None:
    app = perdure.App(f"sqlite:///{tmp_path / 'm.db'}")
    await app.migrate()
    await app.migrate()  # idempotent
    await app.close()
    versions = query(app, "SELECT version FROM perdure_schema_version ORDER BY version")
    assert [r["version"] for r in versions] == [v for v, _, _ in migration_files("sqlite")]
    names = {r["name"] for r in query(app, "SELECT name FROM sqlite_master")}
    for table in ["workflows", "history", "tasks", "inbox", "workers", "replies"]:
        assert f"perdure_{table}" in names
    for view in ["running", "failed", "stuck", "slowest_activities", "queue_backlog"]:
        assert f"perdure_{view}" in names


async def test_plain_sql_message_to_a_workflow_that_is_not_running_is_refused(
    sqlite_app: perdure.App,
) -> None:
    await sqlite_app.migrate()
    with pytest.raises(sqlite3.IntegrityError, match="no running workflow"):
        execute(
            sqlite_app,
            "INSERT INTO perdure_inbox (workflow_id, kind) VALUES ('nobody', 'cancel')",
        )
    assert query(sqlite_app, "SELECT * FROM perdure_inbox") == []
    await sqlite_app.close()
