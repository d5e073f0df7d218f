"""Activities and workflows on separate task queues, served by separate workers."""

from __future__ import annotations

import asyncio

import pytest

import perdure
from perdure import ActivityError, RetryPolicy, WorkflowContext


async def test_activity_runs_on_the_worker_of_its_task_queue(database_url: str) -> None:
    # the orchestrator knows the workflow only; the GPU box knows the activity only
    orchestrator = perdure.App(database_url)
    gpu_box = perdure.App(database_url)
    seen_on: list[str] = []

    @gpu_box.activity(name="render", retry=RetryPolicy(initial_interval="50ms"))
    async def render(frame: int) -> str:
        info = perdure.activity.info()
        seen_on.append(info.task_queue)
        if frame == 2 and info.attempt == 1:
            raise RuntimeError("GPU hiccup")
        return f"frame-{frame}.png"

    @orchestrator.workflow(name="film")
    async def film(ctx: WorkflowContext, frames: int) -> list[str]:
        return list(
            await asyncio.gather(
                *(ctx.activity("render", f, task_queue="gpu") for f in range(frames))
            )
        )

    async with orchestrator, gpu_box:
        async with (
            orchestrator.worker(task_queues=["default"]),
            gpu_box.worker(task_queues=["gpu"]),
        ):
            handle = await orchestrator.start_workflow("film", 4)
            assert await handle.result(timeout=30) == [f"frame-{i}.png" for i in range(4)]
        history = await handle.history()
    assert seen_on == ["gpu"] * 5  # 4 frames + one retry, all on the gpu worker
    completed = [e for e in history if e.event_type == "activity_completed"]
    assert sorted(e.attributes["attempt"] for e in completed) == [1, 1, 1, 2]


async def test_remote_activity_failure_reaches_the_workflow(database_url: str) -> None:
    orchestrator = perdure.App(database_url)
    remote = perdure.App(database_url)

    @remote.activity(name="explode", retry=RetryPolicy(maximum_attempts=2, initial_interval="10ms"))
    async def explode() -> None:
        raise ValueError("kaboom")

    @orchestrator.workflow(name="caller")
    async def caller(ctx: WorkflowContext) -> str:
        try:
            await ctx.activity("explode", task_queue="remote")
        except ActivityError as exc:
            return f"{exc.attempt}: {exc.cause}"
        return "?"

    async with orchestrator, remote, orchestrator.worker(), remote.worker(task_queues=["remote"]):
        assert await orchestrator.execute_workflow("caller") == "2: ValueError: kaboom"


async def test_workflow_on_its_own_task_queue(app: perdure.App) -> None:
    @app.workflow
    async def queued(ctx: WorkflowContext) -> str:
        return ctx.info.task_queue

    async with app.worker(task_queues=["other"]):
        handle = await app.start_workflow(queued, task_queue="default")
        with pytest.raises(perdure.TimeoutError):
            await handle.result(timeout=0.5)  # nobody serves "default"
        assert await app.execute_workflow(queued, task_queue="other") == "other"
        await handle.terminate()
