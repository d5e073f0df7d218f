"""Cancellation with compensation, termination, and continue-as-new."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

import perdure
from perdure import WorkflowContext, WorkflowFailedError


async def test_cancel_runs_compensation_then_ends_canceled(app: perdure.App) -> None:
    log: list[str] = []

    @app.activity
    async def book_hotel() -> str:
        log.append("book")
        return "H-1"

    @app.activity
    def charge_card() -> None:  # a thread: it notices through is_cancelled()
        log.append("charge:start")
        for _ in range(500):
            time.sleep(0.01)
            perdure.activity.heartbeat()
            if perdure.activity.is_cancelled():
                log.append("charge:noticed-cancel")
                return
        log.append("charge:end")

    @app.activity
    async def cancel_hotel(booking: str) -> None:
        log.append(f"compensate:{booking}")

    @app.workflow
    async def trip(ctx: WorkflowContext) -> str:
        booking = await ctx.activity(book_hotel)
        try:
            await ctx.activity(charge_card)
        except asyncio.CancelledError:
            await ctx.activity(cancel_hotel, booking)
            raise
        return "booked"

    async with app.worker():
        handle = await app.start_workflow(trip)
        while "charge:start" not in log:
            await asyncio.sleep(0.01)
        await handle.cancel("customer changed their mind")
        with pytest.raises(WorkflowFailedError) as info:
            await handle.result(timeout=20)
        assert "customer changed their mind" in str(info.value.cause)
        for _ in range(100):
            if "charge:noticed-cancel" in log:
                break
            await asyncio.sleep(0.02)
    assert isinstance(info.value.cause, perdure.CancelledError)
    assert (await handle.describe()).status == "canceled"
    assert "compensate:H-1" in log
    assert "charge:noticed-cancel" in log and "charge:end" not in log
    types = [e.event_type for e in await handle.history()]
    assert "cancel_requested" in types and "activity_canceled" in types
    assert types[-1] == "workflow_canceled"
    await perdure.testing.replay(app, await handle.history())


async def test_async_activity_gets_cancelled_error(app: perdure.App) -> None:
    seen: list[str] = []

    @app.activity
    async def waits() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    @app.workflow
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.activity(waits)

    async with app.worker():
        handle = await app.start_workflow(wf)
        await asyncio.sleep(0.3)
        await handle.cancel()
        with pytest.raises(WorkflowFailedError):
            await handle.result(timeout=20)
    assert seen == ["cancelled"]


async def test_workflow_logger_is_silent_during_replay(
    app: perdure.App, caplog: pytest.LogCaptureFixture
) -> None:
    @app.workflow(name="chatty")
    async def chatty(ctx: WorkflowContext, n: int) -> None:
        for i in range(n):
            ctx.logger.info("step %d", i)
            await ctx.sleep("1ms")

    async with app.worker():
        with caplog.at_level("INFO", logger="perdure.workflow.chatty"):
            for _ in range(3):
                await app.execute_workflow(chatty, 2)
            latest = await anext(app.list_workflows())
            history = await app.get_handle(latest.workflow_id).history()
            before = len(caplog.records)
            await perdure.testing.replay(app, history)
    assert before == 6
    assert len(caplog.records) == 6  # replay logged nothing
    assert logging.getLogger("perdure.workflow.chatty").filters == []


async def test_workflow_that_catches_cancel_and_returns_completes(app: perdure.App) -> None:
    @app.workflow
    async def stubborn(ctx: WorkflowContext) -> str:
        try:
            await ctx.sleep("1h")
        except asyncio.CancelledError:
            return "cleaned up"
        return "slept"

    async with app.worker():
        handle = await app.start_workflow(stubborn)
        await asyncio.sleep(0.2)
        await handle.cancel()
        assert await handle.result(timeout=20) == "cleaned up"
    assert (await handle.describe()).status == "completed"


async def test_terminate_ends_at_once_without_running_code(app: perdure.App) -> None:
    ran_finally: list[bool] = []

    @app.workflow
    async def long(ctx: WorkflowContext) -> None:
        try:
            await ctx.sleep("1h")
        finally:
            ran_finally.append(True)

    async with app.worker():
        handle = await app.start_workflow(long)
        await asyncio.sleep(0.2)
        await handle.terminate(reason="operator said so")
        with pytest.raises(WorkflowFailedError) as info:
            await handle.result(timeout=20)
        cause = info.value.cause
        assert isinstance(cause, perdure.TerminatedError)
        assert cause.reason == "operator said so"
        history = await handle.history()
    assert history[-1].event_type == "workflow_terminated"
    assert [e.event_type for e in history].count("workflow_terminated") == 1
    assert (await handle.describe()).status == "terminated"
    with pytest.raises(perdure.WorkflowNotFoundError):
        await handle.terminate()


async def test_continue_as_new_chain_of_100_runs(app: perdure.App) -> None:
    @app.workflow
    async def looper(ctx: WorkflowContext, i: int, total: int) -> int:
        await ctx.sleep("1ms")
        if i < 99:
            ctx.continue_as_new(i + 1, total + i)
        return total + i

    async with app.worker():
        first = await app.start_workflow(looper, 0, 0, workflow_id="loop")
        assert await first.result(timeout=60) == sum(range(100))
    runs = [d async for d in app.list_workflows(workflow_id_prefix="loop")]
    assert len(runs) == 100
    assert [d.status for d in runs].count("continued_as_new") == 99
    assert runs[0].status == "completed"
    assert max(d.history_length for d in runs) <= 5  # each run's history stays small
    latest = app.get_handle("loop")
    assert await latest.result() == sum(range(100))


async def test_id_policies(app: perdure.App) -> None:
    @app.workflow
    async def quick(ctx: WorkflowContext, x: int) -> int:
        if x < 0:
            raise ValueError("negative")
        return x

    @app.workflow
    async def blocker(ctx: WorkflowContext) -> None:
        await ctx.wait_for_signal("never")

    async with app.worker():
        running = await app.start_workflow(blocker, workflow_id="b")
        with pytest.raises(perdure.WorkflowAlreadyStartedError, match="already running"):
            await app.start_workflow(blocker, workflow_id="b")
        same = await app.start_workflow(blocker, workflow_id="b", id_conflict_policy="use_existing")
        assert same.run_id == running.run_id
        replaced = await app.start_workflow(
            blocker, workflow_id="b", id_conflict_policy="terminate_existing"
        )
        assert replaced.run_id != running.run_id
        assert (await app.get_handle("b", run_id=running.run_id).describe()).status == "terminated"
        await replaced.terminate()

        await app.execute_workflow(quick, 1, workflow_id="q")
        with pytest.raises(perdure.WorkflowAlreadyStartedError, match="reject_duplicate"):
            await app.start_workflow(quick, 2, workflow_id="q", id_reuse_policy="reject_duplicate")
        with pytest.raises(perdure.WorkflowAlreadyStartedError):
            await app.start_workflow(
                quick, 2, workflow_id="q", id_reuse_policy="allow_duplicate_failed_only"
            )
        failed = await app.start_workflow(quick, -1, workflow_id="f")
        with pytest.raises(WorkflowFailedError):
            await failed.result(timeout=20)
        again = await app.start_workflow(
            quick, 3, workflow_id="f", id_reuse_policy="allow_duplicate_failed_only"
        )
        assert await again.result(timeout=20) == 3


async def test_search_attributes_and_memo(app: perdure.App) -> None:
    @app.workflow
    async def tagged(ctx: WorkflowContext, customer: str) -> None:
        ctx.upsert_search_attributes({"customer": customer, "stage": "new"})
        await ctx.sleep("10ms")
        ctx.upsert_search_attributes({"stage": "done"})

    async with app.worker():
        for c in ["acme", "globex", "acme"]:
            await app.execute_workflow(tagged, c, memo={"note": f"for {c}"})
    acme = [d async for d in app.list_workflows(search_attributes={"customer": "acme"})]
    assert len(acme) == 2
    assert all(d.search_attributes == {"customer": "acme", "stage": "done"} for d in acme)
    assert acme[0].memo == {"note": "for acme"}
    done = [d async for d in app.list_workflows(search_attributes={"stage": "done"}, limit=2)]
    assert len(done) == 2


async def test_no_signal_is_lost_across_continue_as_new(app: perdure.App) -> None:
    @app.workflow(name="tally")
    async def tally(ctx: WorkflowContext, total: int) -> int:
        got: list[int] = []
        ctx.set_signal_handler("add", got.append)
        await ctx.wait_condition(lambda: len(got) >= 1)
        total += sum(got)
        if total < 20:
            ctx.continue_as_new(total)
        return total

    async with app.worker():
        handle = await app.start_workflow(tally, 0, workflow_id="tally")
        await asyncio.gather(*(handle.signal("add", 1) for _ in range(20)))
        assert await handle.result(timeout=30) == 20


async def test_a_second_cancel_does_not_interrupt_compensation(app: perdure.App) -> None:
    steps: list[str] = []

    @app.activity(name="compensate")
    async def compensate() -> None:
        steps.append("compensating")
        await asyncio.sleep(0.3)
        steps.append("compensated")

    @app.workflow(name="careful")
    async def careful(ctx: WorkflowContext) -> None:
        try:
            await ctx.sleep("1h")
        except asyncio.CancelledError:
            await ctx.activity(compensate)
            raise

    async with app.worker():
        handle = await app.start_workflow(careful)
        await asyncio.sleep(0.2)
        await handle.cancel("first")
        while "compensating" not in steps:
            await asyncio.sleep(0.01)
        await handle.cancel("second")
        with pytest.raises(WorkflowFailedError):
            await handle.result(timeout=20)
    assert steps == ["compensating", "compensated"]
    types = [e.event_type for e in await handle.history()]
    assert types.count("cancel_requested") == 2
    assert types.count("activity_completed") == 1
