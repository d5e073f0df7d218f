"""Replay of recorded histories, and what happens when code changes under a run."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

import perdure
import perdure.testing
from perdure import NonDeterminismError, WorkflowContext


def make_app(url: str, *, changed: bool = False) -> perdure.App:
    app = perdure.App(url)

    @app.activity(name="step")
    async def step(name: str) -> str:
        return name.upper()

    @app.workflow(name="pipeline")
    async def pipeline(ctx: WorkflowContext) -> list[str]:
        out = [await ctx.activity(step, "a")]
        if changed:
            await ctx.sleep("10ms", name="inserted-timer")  # a change that breaks old runs
        out += await asyncio.gather(ctx.activity(step, "b"), ctx.activity(step, "c"))
        await ctx.wait_for_signal("go")
        out.append(await ctx.activity(step, "d"))
        return out

    return app


async def test_recorded_history_replays_and_changed_code_is_detected(
    database_url: str, tmp_path: Path
) -> None:
    app = make_app(database_url)
    async with app, app.worker():
        handle = await app.start_workflow("pipeline", workflow_id="p-1")
        await handle.signal("go")
        assert await handle.result(timeout=20) == ["A", "B", "C", "D"]
        history = await handle.history()

    await perdure.testing.replay(make_app(database_url), history)
    path = tmp_path / "history.json"
    path.write_text(json.dumps([e.to_dict() for e in history]))
    await perdure.testing.replay(make_app(database_url), path)

    with pytest.raises(NonDeterminismError) as info:
        await perdure.testing.replay(make_app(database_url, changed=True), history)
    err = info.value
    assert err.workflow_id == "p-1"
    assert err.run_id == handle.run_id
    scheduled = [e for e in history if e.event_type == "activity_scheduled"]
    assert err.position == scheduled[1].seq  # where 'b' was scheduled, the timer now is
    assert err.expected == "timer_started('inserted-timer')"
    assert err.recorded == "activity_scheduled('step')"
    assert "p-1" in str(err) and f"position {err.position}" in str(err)


async def test_changed_code_parks_the_run_until_fixed_code_is_deployed(database_url: str) -> None:
    old = make_app(database_url)
    async with old, old.worker():
        handle = await old.start_workflow("pipeline", workflow_id="p-2")
        for _ in range(200):
            if any(e.event_type == "activity_completed" for e in await handle.history()):
                types = [e.event_type for e in await handle.history()]
                if types.count("activity_completed") == 3:
                    break
            await asyncio.sleep(0.05)
    # the old worker stopped while the run waits for "go"; a deploy changes the code
    new = make_app(database_url, changed=True)
    async with new, new.worker():
        handle = new.get_handle("p-2")  # a handle of the app in use (old is closed)
        await handle.signal("go")
        for _ in range(200):
            desc = await handle.describe()
            if desc.parked_error:
                break
            await asyncio.sleep(0.05)
        assert desc.status == "running"  # parked, not failed
        assert desc.parked_error and "inserted-timer" in desc.parked_error
    # fixed code (the original) is deployed again: the run resumes and finishes
    fixed = make_app(database_url)
    async with fixed, fixed.worker():
        handle = fixed.get_handle("p-2")
        assert await handle.result(timeout=20) == ["A", "B", "C", "D"]
        history = await handle.history()
    assert [e.event_type for e in history].count("workflow_completed") == 1


async def test_failed_history_replays_when_code_fails_the_same_way(app: perdure.App) -> None:
    @app.workflow
    async def doomed(ctx: WorkflowContext, n: int) -> None:
        await ctx.sleep(0.01)
        raise KeyError(n)

    async with app.worker():
        handle = await app.start_workflow(doomed, 7)
        with pytest.raises(perdure.WorkflowFailedError):
            await handle.result(timeout=20)
    await perdure.testing.replay(app, await handle.history())


async def test_patched_takes_old_path_on_replay_and_new_path_for_new_runs(
    database_url: str,
) -> None:
    def build(patched: bool) -> perdure.App:
        app = perdure.App(database_url)

        @app.workflow(name="versioned")
        async def versioned(ctx: WorkflowContext) -> str:
            if patched and ctx.patched("new-greeting"):
                await ctx.sleep(0.01, name="new-step")
                path = "new"
            else:
                await ctx.sleep(0.01, name="old-step")
                path = "old"
            await ctx.wait_for_signal("go")
            return path

        return app

    v1 = build(False)
    async with v1, v1.worker():
        old_run = await v1.start_workflow("versioned", workflow_id="v-old")
        await asyncio.sleep(0.3)
    v2 = build(True)
    async with v2, v2.worker():
        old_run = v2.get_handle("v-old")  # a handle of the app in use (v1 is closed)
        await old_run.signal("go")
        assert await old_run.result(timeout=20) == "old"
        old_history = await old_run.history()
        new_run = await v2.start_workflow("versioned", workflow_id="v-new")
        await new_run.signal("go")
        assert await new_run.result(timeout=20) == "new"
        new_history = await new_run.history()
    assert any(e.event_type == "marker_recorded" and e.name == "new-greeting" for e in new_history)
    await perdure.testing.replay(build(True), new_history)
    await perdure.testing.replay(build(True), old_history)


async def test_replay_rejects_unknown_workflow_type(app: perdure.App) -> None:
    @app.workflow
    async def simple(ctx: WorkflowContext) -> int:
        return 1

    async with app.worker():
        handle = await app.start_workflow(simple)
        await handle.result(timeout=20)
    other = perdure.testing.new_app()
    with pytest.raises(NonDeterminismError, match="not registered"):
        await perdure.testing.replay(other, await handle.history())
