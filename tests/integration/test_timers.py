"""Durable timers: asyncio.sleep, ctx.sleep, cancellation, and time skipping in tests."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import perdure
import perdure.testing
from perdure import WorkflowContext


async def test_asyncio_sleep_is_a_durable_timer(app: perdure.App) -> None:
    @app.workflow
    async def naps(ctx: WorkflowContext) -> float:
        start = ctx.now()
        await asyncio.sleep(0.2)
        return (ctx.now() - start).total_seconds()

    async with app.worker():
        handle = await app.start_workflow(naps)
        elapsed = await handle.result(timeout=20)
    assert elapsed >= 0.2
    types = [e.event_type for e in await handle.history()]
    assert types == ["workflow_started", "timer_started", "timer_fired", "workflow_completed"]


async def test_wait_for_with_timeout_cancels_the_losing_timer(app: perdure.App) -> None:
    @app.workflow
    async def race(ctx: WorkflowContext) -> str:
        try:
            await asyncio.wait_for(ctx.wait_for_signal("never"), 0.1)
        except TimeoutError:
            pass
        sleeper = asyncio.ensure_future(ctx.sleep("1h", name="long"))
        await ctx.sleep("50ms", name="short")
        sleeper.cancel()
        try:
            await sleeper
        except asyncio.CancelledError:
            return "cancelled the long timer"
        return "?"

    async with app.worker():
        handle = await app.start_workflow(race)
        assert await handle.result(timeout=20) == "cancelled the long timer"
    events = await handle.history()
    canceled = [e for e in events if e.event_type == "timer_canceled"]
    assert [e.name for e in canceled] == ["long"]
    await perdure.testing.replay(app, events)


async def test_time_skipping_runs_a_week_of_sleep_in_moments() -> None:
    app = perdure.testing.new_app(time_skipping=True)

    @app.activity
    async def send_email(n: int) -> str:
        return f"email {n}"

    @app.workflow
    async def drip(ctx: WorkflowContext) -> dict[str, object]:
        start = ctx.now()
        sent = []
        for day in range(7):
            sent.append(await ctx.activity(send_email, day))
            await ctx.sleep("1d")
        return {"sent": sent, "days": (ctx.now() - start) / timedelta(days=1)}

    async with app, app.worker():
        result = await app.execute_workflow(drip)
    assert len(result["sent"]) == 7  # type: ignore[arg-type]
    assert result["days"] >= 7


async def test_wait_condition_with_signal_handler(app: perdure.App) -> None:
    @app.workflow
    async def counter(ctx: WorkflowContext, target: int) -> list[int]:
        seen: list[int] = []
        ctx.set_signal_handler("add", seen.append)
        reached = await ctx.wait_condition(lambda: len(seen) >= target, timeout="30s")
        timed_out = not await ctx.wait_condition(lambda: len(seen) > 100, timeout="50ms")
        assert reached and timed_out
        return seen

    async with app.worker():
        handle = await app.start_workflow(counter, 3)
        for i in range(3):
            await handle.signal("add", i)
        assert await handle.result(timeout=20) == [0, 1, 2]
