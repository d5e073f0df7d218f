"""Signals, queries and updates: talking to running workflows."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

import perdure
from perdure import (
    QueryFailedError,
    QueryRejectedError,
    UpdateFailedError,
    UpdateRejectedError,
    WorkflowContext,
    WorkflowNotFoundError,
)


async def test_signal_sent_before_the_workflow_waits_is_buffered(app: perdure.App) -> None:
    @app.workflow
    async def approval(ctx: WorkflowContext) -> object:
        await ctx.sleep("200ms")  # the signal arrives during this sleep
        return await ctx.wait_for_signal("approval")

    async with app.worker():
        handle = await app.start_workflow(approval)
        await handle.signal("approval", {"approved": True})
        assert await handle.result(timeout=20) == {"approved": True}


async def test_wait_for_signal_timeout_and_payload_shapes(app: perdure.App) -> None:
    @app.workflow
    async def shapes(ctx: WorkflowContext) -> list[object]:
        missing = await ctx.wait_for_signal("never", timeout="50ms")
        none = await ctx.wait_for_signal("empty")
        several = await ctx.wait_for_signal("pair")
        return [missing, none, list(several)]

    async with app.worker():
        handle = await app.start_workflow(shapes)
        await handle.signal("empty")
        await handle.signal("pair", 1, "two")
        assert await handle.result(timeout=20) == [None, None, [1, "two"]]


async def test_hundred_concurrent_signals_delivered_once_in_order(app: perdure.App) -> None:
    @app.workflow
    async def collector(ctx: WorkflowContext, n: int) -> list[int]:
        got: list[int] = []
        ctx.set_signal_handler("item", got.append)
        await ctx.wait_condition(lambda: len(got) >= n)
        return got

    async with app.worker():
        handle = await app.start_workflow(collector, 100)
        await asyncio.gather(*(handle.signal("item", i) for i in range(100)))
        got = await handle.result(timeout=30)
    assert sorted(got) == list(range(100))  # each exactly once
    history = await handle.history()
    recorded = [e.attributes["args"][0] for e in history if e.event_type == "signal_received"]
    assert recorded == got  # the workflow saw them in the order history recorded them
    await perdure.testing.replay(app, history)


@dataclass
class Address:
    street: str
    city: str


async def test_signal_payload_that_does_not_fit_the_handler_is_dropped(app: perdure.App) -> None:
    @app.workflow
    async def entity(ctx: WorkflowContext) -> str:
        addresses: list[Address] = []

        def on_address(addr: Address) -> None:
            addresses.append(addr)

        ctx.set_signal_handler("address", on_address)
        await ctx.wait_condition(lambda: bool(addresses))
        return addresses[0].city

    async with app.worker():
        handle = await app.start_workflow(entity)
        await handle.signal("address", "not an address")
        await handle.signal("address", {"street": "1 Main St", "city": "Lyon"})
        assert await handle.result(timeout=20) == "Lyon"


async def test_signal_to_unknown_workflow(app: perdure.App) -> None:
    with pytest.raises(WorkflowNotFoundError, match="no-such-id"):
        await app.get_handle("no-such-id").signal("x")


async def test_queries_live_and_after_completion(app: perdure.App) -> None:
    @app.workflow
    async def stateful(ctx: WorkflowContext) -> int:
        count = 0

        def add(n: int) -> None:
            nonlocal count
            count += n

        ctx.set_signal_handler("add", add)
        ctx.set_query_handler("count", lambda: count)
        ctx.set_query_handler("times", lambda factor: count * factor)

        @ctx.query_handler("broken")
        def broken() -> int:
            raise ValueError("no")

        await ctx.wait_for_signal("finish")
        return count

    async with app.worker():
        handle = await app.start_workflow(stateful)
        await handle.signal("add", 5)
        for _ in range(200):
            try:
                if await handle.query("count") == 5:
                    break
            except QueryRejectedError:  # not started yet: no handlers registered
                pass
            await asyncio.sleep(0.02)
        assert await handle.query("times", 3) == 15
        with pytest.raises(QueryRejectedError, match="no query handler 'nope'"):
            await handle.query("nope")
        with pytest.raises(QueryFailedError, match="no"):
            await handle.query("broken")
        await handle.signal("add", 2)
        await handle.signal("finish")
        assert await handle.result(timeout=20) == 7
    # no worker holds the run now: answered by replaying its history
    assert await handle.query("count") == 7


async def test_updates_validated_recorded_and_answered(app: perdure.App) -> None:
    @app.workflow
    async def cart(ctx: WorkflowContext) -> list[str]:
        items: list[str] = []

        def validate(item: str) -> None:
            if not item:
                raise ValueError("empty item")

        async def add_item(item: str) -> int:
            await ctx.sleep("10ms")
            items.append(item)
            return len(items)

        def fail(_: str) -> None:
            raise RuntimeError("handler broke")

        ctx.set_update_handler("add", add_item, validator=validate)
        ctx.set_update_handler("fail", fail)
        await ctx.wait_for_signal("checkout")
        return items

    async with app.worker():
        handle = await app.start_workflow(cart)
        assert await handle.update("add", "apple", timeout=20) == 1
        assert await handle.update("add", "pear", timeout=20) == 2
        with pytest.raises(UpdateRejectedError, match="empty item"):
            await handle.update("add", "", timeout=20)
        with pytest.raises(UpdateRejectedError, match="no update handler 'remove'"):
            await handle.update("remove", "apple", timeout=20)
        with pytest.raises(UpdateFailedError, match="handler broke"):
            await handle.update("fail", "x", timeout=20)
        await handle.signal("checkout")
        assert await handle.result(timeout=20) == ["apple", "pear"]
        history = await handle.history()
    accepted = [e for e in history if e.event_type == "update_accepted"]
    assert [e.name for e in accepted] == ["add", "add", "fail"]  # rejections left no trace
    assert len([e for e in history if e.event_type == "update_completed"]) == 3
    with pytest.raises(UpdateRejectedError, match="completed"):
        await handle.update("add", "late")
    await perdure.testing.replay(app, history)


async def test_signal_with_start(app: perdure.App) -> None:
    @app.workflow
    async def mailbox(ctx: WorkflowContext) -> list[object]:
        got: list[object] = []
        ctx.set_signal_handler("msg", got.append)
        await ctx.wait_condition(lambda: len(got) >= 2)
        return got

    async with app.worker():
        first = await app.signal_with_start(
            mailbox, workflow_id="mb", signal="msg", signal_args=["a"]
        )
        second = await app.signal_with_start(
            mailbox, workflow_id="mb", signal="msg", signal_args=["b"]
        )
        assert first.run_id == second.run_id
        assert await first.result(timeout=20) == ["a", "b"]
