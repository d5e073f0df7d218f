"""Workflows with activities, timers, retries and timeouts, on every backend."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from dataclasses import dataclass

import pytest

import perdure
from perdure import ActivityError, ApplicationError, RetryPolicy, WorkflowContext


async def test_three_activities_and_a_timer(app: perdure.App) -> None:
    @app.activity
    async def reserve(item: str) -> str:
        return f"reserved:{item}"

    @app.activity
    def charge(amount: int) -> dict[str, int]:  # plain def runs in the worker's thread pool
        return {"charged": amount}

    @app.activity
    async def ship(item: str) -> str:
        return f"shipped:{item}"

    @app.workflow(name="order")
    async def order(ctx: WorkflowContext, item: str, amount: int) -> dict[str, object]:
        r = await ctx.activity(reserve, item)
        c = await ctx.activity(charge, amount)
        await ctx.sleep("100ms", name="cool-off")
        s = await ctx.activity(ship, item)
        return {"reserve": r, "charge": c, "ship": s}

    async with app.worker():
        handle = await app.start_workflow(order, "book", 42, workflow_id="order-1")
        result = await handle.result(timeout=20)
    assert result == {
        "reserve": "reserved:book",
        "charge": {"charged": 42},
        "ship": "shipped:book",
    }
    types = [e.event_type for e in await handle.history()]
    assert types == [
        "workflow_started",
        "activity_scheduled",
        "activity_completed",
        "activity_scheduled",
        "activity_completed",
        "timer_started",
        "timer_fired",
        "activity_scheduled",
        "activity_completed",
        "workflow_completed",
    ]
    desc = await handle.describe()
    assert desc.status == perdure.WorkflowStatus.COMPLETED
    assert desc.workflow_type == "order"
    assert desc.history_length == 10


async def test_parallel_activities_with_gather(app: perdure.App) -> None:
    running = 0
    peak = 0

    @app.activity
    async def slow_square(x: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.2)
        running -= 1
        return x * x

    @app.workflow
    async def fan_out(ctx: WorkflowContext, n: int) -> list[int]:
        return list(await asyncio.gather(*(ctx.activity(slow_square, i) for i in range(n))))

    async with app.worker():
        result = await app.execute_workflow(fan_out, 8)
    assert result == [i * i for i in range(8)]
    assert peak == 8  # they really ran at the same time


async def test_retries_with_backoff_until_success(app: perdure.App) -> None:
    attempts: list[tuple[int, float]] = []

    @app.activity(retry=RetryPolicy(initial_interval="100ms", backoff_coefficient=2.0))
    async def flaky() -> str:
        info = perdure.activity.info()
        attempts.append((info.attempt, time.monotonic()))
        if info.attempt < 4:
            raise ConnectionError(f"attempt {info.attempt} failed")
        return "ok"

    @app.workflow
    async def wf(ctx: WorkflowContext) -> str:
        return await ctx.activity(flaky)

    async with app.worker():
        handle = await app.start_workflow(wf)
        assert await handle.result(timeout=20) == "ok"
    assert [a for a, _ in attempts] == [1, 2, 3, 4]
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(attempts)]
    # backoff doubles: 0.1s, 0.2s, 0.4s (lower bounds only: machines are noisy)
    assert gaps[0] >= 0.09 and gaps[1] >= 0.19 and gaps[2] >= 0.39
    completed = [e for e in await handle.history() if e.event_type == "activity_completed"]
    assert completed[0].attributes["attempt"] == 4


async def test_maximum_attempts_then_failure(app: perdure.App) -> None:
    @app.activity(retry=RetryPolicy(initial_interval="10ms", maximum_attempts=3))
    async def always_fails() -> None:
        raise ValueError("nope")

    @app.workflow
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.activity(always_fails)

    async with app.worker():
        handle = await app.start_workflow(wf)
        with pytest.raises(perdure.WorkflowFailedError) as info:
            await handle.result(timeout=20)
    cause = info.value.cause
    assert isinstance(cause, ActivityError)
    assert cause.attempt == 3
    assert isinstance(cause.cause, ApplicationError)
    assert cause.cause.type == "ValueError"
    assert cause.cause.message == "nope"
    assert "ValueError: nope" in (cause.cause.traceback or "")


class ValidationError(Exception):
    pass


@pytest.mark.parametrize("how", ["by_class_name", "application_error"])
async def test_non_retryable_error_fails_the_workflow(app: perdure.App, how: str) -> None:
    calls = 0

    @app.activity(
        retry=RetryPolicy(initial_interval="10ms", non_retryable_errors=["ValidationError"])
    )
    async def validate(order: dict[str, int]) -> None:
        nonlocal calls
        calls += 1
        if how == "by_class_name":
            raise ValidationError(f"bad quantity {order['qty']}")
        raise ApplicationError(
            "card declined", {"code": 51}, type="CardDeclined", non_retryable=True
        )

    @app.workflow
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.activity(validate, {"qty": -1})

    async with app.worker():
        handle = await app.start_workflow(wf)
        with pytest.raises(perdure.WorkflowFailedError) as info:
            await handle.result(timeout=20)
    assert calls == 1
    err = info.value
    assert err.status == "failed"
    assert isinstance(err.cause, ActivityError)
    root = err.cause.cause
    assert isinstance(root, ApplicationError)
    if how == "by_class_name":
        assert (root.type, root.message) == ("ValidationError", "bad quantity -1")
    else:
        assert (root.type, root.message, root.details) == (
            "CardDeclined",
            "card declined",
            ({"code": 51},),
        )
    assert (await handle.describe()).status == "failed"


async def test_workflow_catches_activity_error(app: perdure.App) -> None:
    @app.activity(retry=RetryPolicy(maximum_attempts=1))
    async def broken() -> None:
        raise RuntimeError("down")

    @app.workflow
    async def wf(ctx: WorkflowContext) -> str:
        try:
            await ctx.activity(broken)
        except ActivityError as exc:
            return f"recovered from {exc.cause}"
        return "unreachable"

    async with app.worker():
        assert await app.execute_workflow(wf) == "recovered from RuntimeError: down"


async def test_start_to_close_timeout_is_retried(app: perdure.App) -> None:
    @app.activity(start_to_close_timeout="200ms", retry=RetryPolicy(initial_interval="10ms"))
    async def sometimes_hangs() -> int:
        attempt = perdure.activity.info().attempt
        if attempt == 1:
            await asyncio.sleep(30)
        return attempt

    @app.workflow
    async def wf(ctx: WorkflowContext) -> int:
        return await ctx.activity(sometimes_hangs)

    async with app.worker():
        assert await app.execute_workflow(wf) == 2


async def test_schedule_to_close_timeout_gives_up(app: perdure.App) -> None:
    @app.activity
    async def hangs() -> None:
        await asyncio.sleep(30)

    @app.workflow
    async def wf(ctx: WorkflowContext) -> str:
        try:
            await ctx.activity(
                hangs,
                start_to_close_timeout="100ms",
                schedule_to_close_timeout="500ms",
                retry=RetryPolicy(initial_interval="50ms"),
            )
        except ActivityError as exc:
            assert isinstance(exc.cause, perdure.TimeoutError)
            return exc.cause.timeout_type
        return "no timeout"

    async with app.worker():
        handle = await app.start_workflow(wf)
        assert await handle.result(timeout=20) == "schedule_to_close"
    assert "activity_timed_out" in [e.event_type for e in await handle.history()]


async def test_heartbeat_timeout_and_details_reach_next_attempt(app: perdure.App) -> None:
    seen: list[tuple[int, tuple[object, ...]]] = []

    @app.activity(heartbeat_timeout="300ms", retry=RetryPolicy(initial_interval="10ms"))
    def copy_files(n: int) -> int:  # a sync activity: heartbeats from a thread
        info = perdure.activity.info()
        seen.append((info.attempt, info.heartbeat_details))
        start = int(info.heartbeat_details[0]) if info.heartbeat_details else 0
        for i in range(start, n):
            perdure.activity.heartbeat(i)
            if info.attempt == 1 and i == 3:
                time.sleep(1.0)  # stops heartbeating: the attempt times out
                return -1
        return start

    @app.workflow
    async def wf(ctx: WorkflowContext) -> int:
        return await ctx.activity(copy_files, 10)

    async with app.worker():
        assert await app.execute_workflow(wf) == 3
    assert seen[0] == (1, ())
    assert seen[1] == (2, (3,))


async def test_activity_cancellation_flag_on_timeout(app: perdure.App) -> None:
    flags: list[bool] = []

    @app.activity(start_to_close_timeout="200ms", retry=RetryPolicy(maximum_attempts=1))
    def cooperative() -> None:
        for _ in range(100):
            time.sleep(0.02)
            if perdure.activity.is_cancelled():
                flags.append(True)
                return

    @app.workflow
    async def wf(ctx: WorkflowContext) -> str:
        try:
            await ctx.activity(cooperative)
        except ActivityError:
            return "timed out"
        return "finished"

    async with app.worker():
        assert await app.execute_workflow(wf) == "timed out"
        await asyncio.sleep(0.2)
    assert flags == [True]


@dataclass
class Order:
    order_id: str
    quantity: int


async def test_dataclass_arguments_and_results(app: perdure.App) -> None:
    @app.activity
    async def double(order: Order) -> Order:
        assert isinstance(order, Order)
        return Order(order.order_id, order.quantity * 2)

    @app.workflow
    async def wf(ctx: WorkflowContext, order: Order) -> Order:
        assert isinstance(order, Order)
        return await ctx.activity(double, order)

    async with app.worker():
        result = await app.execute_workflow(wf, Order("o-1", 3))
    assert result == Order("o-1", 6)


async def test_side_effect_random_uuid_are_recorded(app: perdure.App) -> None:
    @app.workflow
    async def wf(ctx: WorkflowContext) -> dict[str, object]:
        token = await ctx.side_effect(lambda: "tok-123")
        return {
            "token": token,
            "r": ctx.random().randint(0, 10**9),
            "u": str(ctx.uuid4()),
            "now_tz": ctx.now().tzinfo is not None,
        }

    async with app.worker():
        handle = await app.start_workflow(wf)
        result = await handle.result(timeout=20)
    assert result["token"] == "tok-123" and result["now_tz"] is True
    markers = [e for e in await handle.history() if e.event_type == "marker_recorded"]
    assert markers[0].attributes["value"] == "tok-123"


async def test_the_scheduled_event_records_only_the_options_set(app: perdure.App) -> None:
    @app.activity
    async def plain(i: int) -> int:
        return i

    @app.activity(start_to_close_timeout="5s")
    async def bounded(i: int) -> int:
        return i

    @app.workflow
    async def options_wf(ctx: WorkflowContext) -> int:
        total = await ctx.activity(plain, 1)
        total += await ctx.activity(bounded, 2)
        total += await ctx.activity(plain, 3, retry=RetryPolicy(maximum_attempts=2))
        return int(total)

    async with app.worker():
        handle = await app.start_workflow(options_wf)
        assert await handle.result(timeout=20) == 6
    scheduled = [
        e.attributes for e in await handle.history() if e.event_type == "activity_scheduled"
    ]
    assert {k: v for k, v in scheduled[0].items() if k != "activity_type"} == {
        "activity_id": 1,
        "args": [1],
    }
    assert {k: v for k, v in scheduled[1].items() if k != "activity_type"} == {
        "activity_id": 2,
        "args": [2],
        "start_to_close_timeout": 5.0,
    }
    assert set(scheduled[2]) == {"activity_id", "activity_type", "args", "retry"}
    assert scheduled[2]["retry"]["maximum_attempts"] == 2


async def test_a_history_with_explicit_null_options_replays(app: perdure.App) -> None:
    """Histories written before the options were left out when unset still replay."""
    from perdure._worker._activities import PendingActivity
    from perdure.testing import replay

    @app.activity
    async def plain(i: int) -> int:
        return i

    @app.workflow
    async def nulls_wf(ctx: WorkflowContext) -> int:
        return int(await ctx.activity(plain, 1))

    async with app.worker():
        handle = await app.start_workflow(nulls_wf)
        assert await handle.result(timeout=20) == 1
    history = await handle.history()
    nulls = dict.fromkeys(
        (
            "task_queue",
            "retry",
            "start_to_close_timeout",
            "schedule_to_close_timeout",
            "heartbeat_timeout",
        )
    )
    old = [
        dataclasses.replace(e, attributes={**e.attributes, **nulls})
        if e.event_type == "activity_scheduled"
        else e
        for e in history
    ]
    await replay(app, old)
    scheduled = next(e for e in old if e.event_type == "activity_scheduled")
    new = next(e for e in history if e.event_type == "activity_scheduled")
    relaunched = PendingActivity.from_scheduled(scheduled.attributes, "plain", new.created_at)
    assert relaunched == PendingActivity.from_scheduled(new.attributes, "plain", new.created_at)
