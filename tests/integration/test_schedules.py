"""Schedules on both backends: firing, handles, overlap, catch-up, many workers, bad input.

Tests that need a precise "now" drive a schedule's transaction directly (the store's
``change_schedule`` with ``decide_fires`` at a chosen time): the same code a worker runs.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import perdure
from perdure import ScheduleNotFoundError, WorkflowContext
from perdure._schedules import create_schedule, decide_fires, fire_workflow_id
from perdure._store._base import NewRun

# Far ahead, so that a running worker never finds these schedules due at the real time.
T0 = datetime(2100, 1, 1, tzinfo=UTC)


async def _fire(app: perdure.App, schedule_id: str, now: datetime) -> list[NewRun]:
    """One worker's pass over one schedule, at ``now``."""
    store = await app._get_store()
    found, started = await store.change_schedule(
        app.namespace, schedule_id, lambda rec, status: decide_fires(rec, status, now)
    )
    assert found
    return started


async def _runs(app: perdure.App, prefix: str) -> list[perdure.WorkflowDescription]:
    return [r async for r in app.list_workflows(workflow_id_prefix=prefix)]


async def _wait_for_runs(
    app: perdure.App, prefix: str, count: int, timeout: float = 30
) -> list[Any]:
    async with asyncio.timeout(timeout):
        while len(runs := await _runs(app, prefix)) < count:
            await asyncio.sleep(0.05)
    return runs


def _register(app: perdure.App) -> tuple[Any, Any]:
    @app.workflow(name="tick")
    async def tick(ctx: WorkflowContext, label: str) -> str:
        return f"tick {label}"

    @app.workflow(name="hold")
    async def hold(ctx: WorkflowContext) -> str:
        await ctx.wait_for_signal("go")
        return "done"

    return tick, hold


async def test_interval_schedule_fires_runs_with_fire_time_ids(app: perdure.App) -> None:
    tick, _ = _register(app)
    handle = await app.schedule_workflow(tick, schedule_id="every", interval="1s", args=["x"])
    assert isinstance(handle, perdure.ScheduleHandle)
    async with app.worker(poll_interval="50ms"):
        runs = await _wait_for_runs(app, "every-", 2)
        for run in runs:
            assert await app.get_handle(run.workflow_id).result(timeout=20) == "tick x"
    for run in runs:
        stamp = run.workflow_id.removeprefix("every-")
        fire = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")
        assert run.workflow_id == f"every-{fire:%Y-%m-%dT%H:%M:%SZ}"
        assert run.workflow_type == "tick"
    described = await handle.describe()
    assert len(described.recent_runs) >= 2
    assert {r["workflow_id"] for r in described.recent_runs} >= {r.workflow_id for r in runs}


async def test_handle_pause_unpause_trigger_describe_delete(app: perdure.App) -> None:
    tick, _ = _register(app)
    handle = await app.schedule_workflow(
        tick, schedule_id="daily", cron="0 9 * * *", timezone="Europe/Berlin", args=["d"]
    )
    d = await handle.describe()
    assert isinstance(d, perdure.ScheduleDescription)
    assert (d.schedule_id, d.workflow_type, d.paused) == ("daily", "tick", False)
    assert d.spec == {"cron": "0 9 * * *", "timezone": "Europe/Berlin", "jitter": 0.0}
    assert len(d.next_fire_times) == 5 and d.recent_runs == []
    assert all(
        t.astimezone(perdure._schedules.ZoneInfo("Europe/Berlin")).hour == 9
        for t in d.next_fire_times
    )
    assert d.next_fire_times == sorted(d.next_fire_times)

    await handle.pause()
    await handle.pause()  # idempotent
    assert (await handle.describe()).paused is True
    assert await _fire(app, "daily", datetime.now(UTC) + timedelta(days=3)) == []  # paused

    run = await handle.trigger()  # even when paused
    async with app.worker(poll_interval="50ms"):
        assert await run.result(timeout=20) == "tick d"
    d = await handle.describe()
    assert [r["workflow_id"] for r in d.recent_runs] == [run.workflow_id]
    assert d.recent_runs[0]["trigger"] == "manual" and d.recent_runs[0]["status"] == "completed"

    await handle.unpause()
    await handle.unpause()
    d = await handle.describe()
    assert d.paused is False and d.next_fire_times[0] > datetime.now(UTC)

    await handle.delete()
    await handle.delete()  # idempotent
    for call in (handle.describe(), handle.pause(), handle.unpause(), handle.trigger()):
        with pytest.raises(ScheduleNotFoundError, match="daily"):
            await call
    with pytest.raises(ScheduleNotFoundError):
        await app.get_schedule("never-made").describe()
    assert (await app.get_handle(run.workflow_id).describe()).status == "completed"


async def test_creating_an_existing_schedule_id_is_an_error(app: perdure.App) -> None:
    tick, _ = _register(app)
    await app.schedule_workflow(tick, schedule_id="dup", interval="1h", args=["a"])
    with pytest.raises(ValueError, match="'dup' already exists"):
        await app.schedule_workflow(tick, schedule_id="dup", interval="2h", args=["b"])
    d = await app.get_schedule("dup").describe()
    assert d.spec["interval"] == 3600.0 and d.args == ["a"]


async def test_catch_up_starts_missed_fires_in_the_window_oldest_first(app: perdure.App) -> None:
    tick, _ = _register(app)
    await create_schedule(
        app,
        tick,
        schedule_id="cu",
        interval="1h",
        args=["c"],
        overlap="allow_all",
        catchup_window="3h",
        next_fire_at=T0,
    )
    started = await _fire(app, "cu", T0 + timedelta(hours=5, minutes=30))
    # T0+2h and older are more than 3h late: skipped.
    hours = [T0 + timedelta(hours=h) for h in (3, 4, 5)]
    assert [r.workflow_id for r in started] == [fire_workflow_id("cu", t) for t in hours]
    d = await app.get_schedule("cu").describe()
    assert [r["fire_time"] for r in d.recent_runs] == hours
    assert d.next_fire_times[0] == T0 + timedelta(hours=6)
    assert {r.workflow_id for r in await _runs(app, "cu-")} == {r.workflow_id for r in started}
    # Nothing is due again before the next fire.
    assert await _fire(app, "cu", T0 + timedelta(hours=5, minutes=59)) == []


async def test_a_worker_catches_up_after_downtime(app: perdure.App) -> None:
    tick, _ = _register(app)
    now = datetime.now(UTC)
    hour = now.replace(minute=0, second=0, microsecond=0)
    await create_schedule(
        app,
        tick,
        schedule_id="down",
        interval="1h",
        args=["d"],
        overlap="allow_all",
        catchup_window="1h",
        next_fire_at=hour - timedelta(hours=5),
    )
    async with app.worker(poll_interval="50ms"):
        runs = await _wait_for_runs(app, "down-", 1)
        await app.get_handle(runs[0].workflow_id).result(timeout=20)
    # Only the fire less than an hour late ran; the four before it were skipped.
    assert [r.workflow_id for r in await _runs(app, "down-")] == [fire_workflow_id("down", hour)]


async def test_overlap_skip(app: perdure.App) -> None:
    _, hold = _register(app)
    await create_schedule(
        app, hold, schedule_id="sk", interval="1h", overlap="skip", next_fire_at=T0
    )
    first = await _fire(app, "sk", T0)
    assert len(first) == 1
    assert await _fire(app, "sk", T0 + timedelta(hours=1)) == []  # the first still runs
    d = await app.get_schedule("sk").describe()
    assert d.next_fire_times[0] == T0 + timedelta(hours=2)
    async with app.worker(poll_interval="50ms"):
        await app.get_handle(first[0].workflow_id).signal("go")
        await app.get_handle(first[0].workflow_id).result(timeout=20)
    nxt = await _fire(app, "sk", T0 + timedelta(hours=2))
    assert [r.workflow_id for r in nxt] == [fire_workflow_id("sk", T0 + timedelta(hours=2))]


async def test_overlap_allow_all(app: perdure.App) -> None:
    _, hold = _register(app)
    await create_schedule(
        app, hold, schedule_id="aa", interval="1h", overlap="allow_all", next_fire_at=T0
    )
    assert len(await _fire(app, "aa", T0)) == 1
    assert len(await _fire(app, "aa", T0 + timedelta(hours=1))) == 1
    statuses = [r.status for r in await _runs(app, "aa-")]
    assert statuses == ["running", "running"]


async def test_overlap_buffer_one_starts_the_buffered_fire_when_the_run_ends(
    app: perdure.App,
) -> None:
    _, hold = _register(app)
    await create_schedule(
        app, hold, schedule_id="bo", interval="1h", overlap="buffer_one", next_fire_at=T0
    )
    (first,) = await _fire(app, "bo", T0)
    # Two more fires while the first runs: one is buffered, the other dropped.
    assert await _fire(app, "bo", T0 + timedelta(hours=2, minutes=1)) == []
    d = await app.get_schedule("bo").describe()
    assert d.buffered_fire_time == T0 + timedelta(hours=1)
    store = await app._get_store()
    assert await store.due_schedules(app.namespace, T0 + timedelta(hours=2, minutes=2), 10) == []
    async with app.worker(poll_interval="50ms"):
        await app.get_handle(first.workflow_id).signal("go")
        await app.get_handle(first.workflow_id).result(timeout=20)
        # The worker starts the buffered fire (its own fire-time id) once the first ended.
        buffered = fire_workflow_id("bo", T0 + timedelta(hours=1))
        await _wait_for_runs(app, buffered, 1)
    ids = {r.workflow_id for r in await _runs(app, "bo-")}
    assert ids == {first.workflow_id, buffered}
    assert (await app.get_schedule("bo").describe()).buffered_fire_time is None


async def test_overlap_cancel_other_cancels_then_starts(app: perdure.App) -> None:
    _, hold = _register(app)
    await create_schedule(
        app, hold, schedule_id="co", interval="1h", overlap="cancel_other", next_fire_at=T0
    )
    (first,) = await _fire(app, "co", T0)
    assert await _fire(app, "co", T0 + timedelta(hours=1)) == []  # cancel asked; fire waits
    second = fire_workflow_id("co", T0 + timedelta(hours=1))
    async with app.worker(poll_interval="50ms"):
        with pytest.raises(perdure.WorkflowFailedError):
            await app.get_handle(first.workflow_id).result(timeout=20)
        await _wait_for_runs(app, second, 1)
    assert (await app.get_handle(first.workflow_id).describe()).status == "canceled"
    assert (await app.get_handle(second).describe()).status == "running"


async def test_two_workers_never_fire_the_same_time_twice(database_url: str) -> None:
    apps = [perdure.App(database_url) for _ in range(2)]
    for a in apps:
        _register(a)
        await a.migrate()
    try:
        await apps[0].schedule_workflow(
            "tick", schedule_id="race", interval="1s", args=["r"], overlap="allow_all"
        )
        async with apps[0].worker(poll_interval="20ms"), apps[1].worker(poll_interval="20ms"):
            await _wait_for_runs(apps[0], "race-", 4)
        await apps[0].get_schedule("race").pause()
        runs = await _runs(apps[0], "race-")
        counts = Counter(r.workflow_id for r in runs)
        assert max(counts.values()) == 1, counts
        fires = sorted(
            datetime.strptime(w.removeprefix("race-"), "%Y-%m-%dT%H:%M:%SZ") for w in counts
        )
        # Every second between the first and last fire started exactly once.
        assert fires == [fires[0] + timedelta(seconds=i) for i in range(len(fires))]
    finally:
        for a in apps:
            await a.close()


@pytest.mark.parametrize(
    ("options", "bad"),
    [
        ({"cron": "61 * * * *"}, "61 * * * *"),
        ({"cron": "every day"}, "every day"),
        ({"interval": "1 fortnight"}, "1 fortnight"),
        ({"interval": "500ms"}, "500ms"),
        ({"interval": "1h", "jitter": "soon"}, "soon"),
        ({"cron": "0 9 * * *", "timezone": "Mars/Olympus"}, "Mars/Olympus"),
        ({"interval": "1h", "overlap": "sometimes"}, "sometimes"),
        ({"interval": "1h", "catchup_window": "-5m"}, "-5m"),
        ({"cron": "0 9 * * *", "interval": "1h"}, "exactly one"),
        ({}, "exactly one"),
        ({"interval": "1h", "args": "abc"}, "abc"),
    ],
)
async def test_bad_input_is_refused_and_nothing_is_written(
    app: perdure.App, options: dict[str, Any], bad: str
) -> None:
    tick, _ = _register(app)
    options.setdefault("args", ["x"])
    with pytest.raises(ValueError) as err:
        await app.schedule_workflow(tick, schedule_id="bad", **options)
    assert bad in str(err.value)
    store = await app._get_store()
    assert await store.list_schedules(app.namespace) == []


async def test_unknown_workflow_and_bad_args_are_refused(app: perdure.App) -> None:
    tick, _ = _register(app)
    with pytest.raises(ValueError, match="nope"):
        await app.schedule_workflow("nope", schedule_id="x", interval="1h")
    with pytest.raises(TypeError):  # PayloadError
        await app.schedule_workflow(tick, schedule_id="x", interval="1h", args=[object()])
    with pytest.raises(ValueError):
        await app.schedule_workflow(tick, schedule_id="", interval="1h", args=["a"])
    store = await app._get_store()
    assert await store.list_schedules(app.namespace) == []
