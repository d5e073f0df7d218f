"""Bad input gets a clear error at the call that passed it, and loses nothing."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import perdure
from perdure import RetryPolicy, WorkflowContext


@dataclass
class Order:
    order_id: str
    quantity: int


def register(app: perdure.App) -> None:
    @app.workflow(name="takes-order")
    async def takes_order(ctx: WorkflowContext, order: Order) -> int:
        return order.quantity

    @app.workflow(name="echo")
    async def echo(ctx: WorkflowContext, value: object) -> object:
        return value


async def assert_nothing_written(app: perdure.App) -> None:
    assert [d async for d in app.list_workflows()] == []


async def test_unknown_workflow_type(app: perdure.App) -> None:
    register(app)
    with pytest.raises(ValueError, match=r"unknown workflow type 'take-order'.*takes-order"):
        await app.start_workflow("take-order", Order("o", 1))
    await assert_nothing_written(app)


async def test_unregistered_function(app: perdure.App) -> None:
    async def not_a_workflow(ctx: WorkflowContext) -> None: ...

    with pytest.raises(ValueError, match="not a registered workflow"):
        await app.start_workflow(not_a_workflow)
    await assert_nothing_written(app)


async def test_wrong_number_of_arguments(app: perdure.App) -> None:
    register(app)
    with pytest.raises(TypeError, match=r"workflow 'takes-order'.*2 argument"):
        await app.start_workflow("takes-order", Order("o", 1), "extra")
    with pytest.raises(TypeError, match="missing a required argument"):
        await app.start_workflow("takes-order")
    await assert_nothing_written(app)


async def test_argument_of_the_wrong_type(app: perdure.App) -> None:
    register(app)
    with pytest.raises(TypeError, match=r"argument 'order'.*does not match its type Order"):
        await app.start_workflow("takes-order", {"order_id": "o"})
    await assert_nothing_written(app)


async def test_unserializable_argument(app: perdure.App) -> None:
    register(app)
    with pytest.raises(TypeError, match=r"argument 'value' of workflow 'echo' is not serializable"):
        await app.start_workflow("echo", object())
    with pytest.raises(TypeError, match="not valid JSON"):  # NaN is not JSON
        await app.start_workflow("echo", float("nan"))
    await assert_nothing_written(app)


async def test_oversized_payload(app: perdure.App) -> None:
    register(app)
    with pytest.raises(TypeError, match="over the 2097152-byte limit"):
        await app.start_workflow("echo", "x" * (3 * 1024 * 1024))
    await assert_nothing_written(app)


@pytest.mark.parametrize("text", ["5 minutes", "1x", "", "-3s", "h1"])
def test_malformed_durations(text: str) -> None:
    app = perdure.testing.new_app()
    with pytest.raises(ValueError, match="malformed"):
        app.activity(start_to_close_timeout=text)
    with pytest.raises(ValueError, match=repr(text).replace("(", r"\(")):
        RetryPolicy(initial_interval=text)


async def test_malformed_duration_in_workflow_fails_it_clearly(app: perdure.App) -> None:
    @app.workflow
    async def naps(ctx: WorkflowContext) -> None:
        await ctx.sleep("forever")

    async with app.worker():
        handle = await app.start_workflow(naps)
        with pytest.raises(perdure.WorkflowFailedError) as info:
            await handle.result(timeout=20)
    cause = info.value.cause
    assert isinstance(cause, perdure.ApplicationError)
    assert cause.type == "ValueError" and "'forever'" in cause.message


async def test_wrong_activity_arguments_fail_the_workflow_clearly(app: perdure.App) -> None:
    @app.activity
    async def add(a: int, b: int) -> int:  # registered as its qualname
        return a + b

    @app.workflow
    async def bad_call(ctx: WorkflowContext) -> int:
        return await ctx.activity(add, 1)

    async with app.worker():
        handle = await app.start_workflow(bad_call)
        with pytest.raises(perdure.WorkflowFailedError) as info:
            await handle.result(timeout=20)
    cause = info.value.cause
    assert isinstance(cause, perdure.ApplicationError)
    assert cause.type == "TypeError" and "add' called with 1 argument(s)" in cause.message


SQLISH = "order-1'; DROP TABLE perdure_workflows; --"


async def test_sql_looking_ids_are_plain_text(app: perdure.App) -> None:
    register(app)
    async with app.worker():
        handle = await app.start_workflow("echo", SQLISH, workflow_id=SQLISH)
        assert await handle.result(timeout=20) == SQLISH
    again = app.get_handle(SQLISH)
    assert (await again.describe()).workflow_id == SQLISH
    found = [d.workflow_id async for d in app.list_workflows(workflow_id_prefix="order-1'; DROP")]
    assert found == [SQLISH]
    assert [d async for d in app.list_workflows(workflow_id_prefix="order-1' OR '1'='1")] == []


@pytest.mark.parametrize("bad", ["", "a\x00b", "x" * 1001])
async def test_invalid_workflow_ids(app: perdure.App, bad: str) -> None:
    register(app)
    with pytest.raises(ValueError, match="workflow_id"):
        await app.start_workflow("echo", 1, workflow_id=bad)
    await assert_nothing_written(app)


def test_malformed_database_urls() -> None:
    with pytest.raises(ValueError, match="unsupported database URL"):
        perdure.App("mysql://localhost/db")
    with pytest.raises(ValueError, match="malformed SQLite URL"):
        perdure.App("sqlite://relative.db")


@pytest.mark.parametrize("io", ["loop", "thread"])
async def test_unopenable_sqlite_database_is_an_error_not_a_hang(tmp_path: Path, io: str) -> None:
    app = perdure.App(f"sqlite:///{tmp_path}/no/such/dir/db.sqlite?io={io}")
    register(app)
    try:
        for _ in range(2):  # the second call tries again and fails the same way
            with pytest.raises(sqlite3.OperationalError, match="cannot open the SQLite database"):
                await asyncio.wait_for(app.start_workflow("echo", 1), 10)
        (tmp_path / "no/such/dir").mkdir(parents=True)  # fixed: the same app works now
        handle = await asyncio.wait_for(app.start_workflow("echo", 1), 10)
        async with app.worker():
            assert await handle.result(timeout=20) == 1
    finally:
        await app.close()


async def test_bad_id_policies(app: perdure.App) -> None:
    register(app)
    with pytest.raises(ValueError, match="id_reuse_policy"):
        await app.start_workflow("echo", 1, id_reuse_policy="sometimes")
    with pytest.raises(ValueError, match="id_conflict_policy"):
        await app.start_workflow("echo", 1, id_conflict_policy="whatever")


async def test_undecodable_signal_inserted_with_sql_is_kept_not_delivered(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db.sqlite"
    app = perdure.App(f"sqlite:///{path}")

    @app.workflow
    async def waits(ctx: WorkflowContext) -> object:
        return await ctx.wait_for_signal("data")

    async with app, app.worker():
        handle = await app.start_workflow(waits, workflow_id="w-undecodable")
        await asyncio.sleep(0.3)
        with sqlite3.connect(path) as conn:
            conn.execute(
                "INSERT INTO perdure_inbox (workflow_id, kind, name, payload)"
                " VALUES ('w-undecodable', 'signal', 'data', '{not json')"
            )
        for _ in range(100):
            if any(e.event_type == "signal_received" for e in await handle.history()):
                break
            await asyncio.sleep(0.05)
        event = next(e for e in await handle.history() if e.event_type == "signal_received")
        assert event.attributes["undecodable_payload"] == "{not json"
        assert (await handle.describe()).status == "running"  # the workflow is unharmed
        await handle.signal("data", {"ok": True})
        assert await handle.result(timeout=20) == {"ok": True}


async def test_search_attribute_filters_take_any_key_and_match_the_json_type(
    app: perdure.App,
) -> None:
    @app.workflow(name="tagged")
    async def tagged(ctx: WorkflowContext, attrs: dict[str, Any]) -> None:
        ctx.upsert_search_attributes(attrs)

    odd = {'say "hi"': 1, "x'; DROP TABLE perdure_workflows;--": "y", "code": "42"}
    nested = {"n": {"a": [1, 2]}, "flag": True}
    async with app.worker():
        await app.execute_workflow(tagged, odd, workflow_id="odd")
        await app.execute_workflow(tagged, nested, workflow_id="nested")

    async def found(**attrs: Any) -> list[str]:
        return [d.workflow_id async for d in app.list_workflows(search_attributes=attrs)]

    for key, value in odd.items():
        assert await found(**{key: value}) == ["odd"], key
    assert await found(code=42) == []  # the string "42" is not the number 42
    assert await found(n={"a": [1, 2]}, flag=True) == ["nested"]
    assert await found(n={"a": [1]}) == []
