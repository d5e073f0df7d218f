"""Child workflows: in parallel, failures, signals, parent-close policies."""

from __future__ import annotations

import asyncio

import pytest

import perdure
from perdure import ChildWorkflowError, WorkflowContext


async def test_ten_children_in_parallel_one_fails(app: perdure.App) -> None:
    @app.workflow(name="child")
    async def child(ctx: WorkflowContext, n: int) -> int:
        await ctx.sleep("20ms")
        if n == 7:
            raise ValueError(f"child {n} is unlucky")
        assert ctx.info.parent is not None
        return n * 10

    @app.workflow(name="parent")
    async def parent(ctx: WorkflowContext) -> dict[str, object]:
        results = await asyncio.gather(
            *(ctx.execute_child(child, i, workflow_id=f"child-{i}") for i in range(10)),
            return_exceptions=True,
        )
        ok = [r for r in results if isinstance(r, int)]
        failed = [r for r in results if isinstance(r, ChildWorkflowError)]
        assert len(failed) == 1
        return {
            "ok": ok,
            "failed_id": failed[0].workflow_id,
            "cause": str(failed[0].cause),
        }

    async with app.worker():
        handle = await app.start_workflow(parent, workflow_id="parent-1")
        result = await handle.result(timeout=30)
    assert result == {
        "ok": [0, 10, 20, 30, 40, 50, 60, 80, 90],
        "failed_id": "child-7",
        "cause": "ValueError: child 7 is unlucky",
    }
    child_desc = await app.get_handle("child-3").describe()
    assert (child_desc.parent_workflow_id, child_desc.parent_run_id) == ("parent-1", handle.run_id)
    history = await handle.history()
    assert [e.event_type for e in history].count("child_started") == 10
    assert [e.event_type for e in history].count("child_completed") == 9
    assert [e.event_type for e in history].count("child_failed") == 1
    await perdure.testing.replay(app, history)


async def test_child_handle_signal_and_already_started(app: perdure.App) -> None:
    @app.workflow(name="waiter")
    async def waiter(ctx: WorkflowContext) -> object:
        return await ctx.wait_for_signal("go")

    @app.workflow(name="boss")
    async def boss(ctx: WorkflowContext) -> list[object]:
        handle = await ctx.start_child(waiter, workflow_id="the-waiter")
        await handle.signal("go", "went")
        first = await handle.result()
        try:
            await ctx.execute_child(waiter, workflow_id="busy")
        except ChildWorkflowError as exc:
            return [first, type(exc.cause).__name__]
        return [first, "no error"]

    async with app.worker():
        busy = await app.start_workflow(waiter, workflow_id="busy")
        result = await app.execute_workflow(boss)
        assert result == ["went", "WorkflowAlreadyStartedError"]
        await busy.signal("go", 1)
        assert await busy.result(timeout=20) == 1


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("terminate", "terminated"), ("request_cancel", "canceled"), ("abandon", "running")],
)
async def test_parent_close_policy(app: perdure.App, policy: str, expected: str) -> None:
    @app.workflow(name="forever")
    async def forever(ctx: WorkflowContext) -> None:
        await ctx.wait_for_signal("never")

    @app.workflow(name="short-parent")
    async def short_parent(ctx: WorkflowContext, policy: str) -> str:
        await ctx.start_child(forever, workflow_id=f"kid-{policy}", parent_close_policy=policy)
        return "parent done"

    async with app.worker():
        assert await app.execute_workflow(short_parent, policy) == "parent done"
        kid = app.get_handle(f"kid-{policy}")
        for _ in range(200):
            if (await kid.describe()).status == expected:
                break
            await asyncio.sleep(0.02)
        assert (await kid.describe()).status == expected
        if expected == "running":
            await kid.terminate(reason="test cleanup")


async def test_bad_parent_close_policy_fails_clearly(app: perdure.App) -> None:
    @app.workflow(name="noop")
    async def noop(ctx: WorkflowContext) -> None:
        return None

    @app.workflow(name="bad-parent")
    async def bad_parent(ctx: WorkflowContext) -> None:
        await ctx.start_child(noop, parent_close_policy="sometimes")

    async with app.worker():
        handle = await app.start_workflow(bad_parent)
        with pytest.raises(perdure.WorkflowFailedError, match="parent_close_policy"):
            await handle.result(timeout=20)


async def test_parents_fanning_out_at_once_each_gather_their_own_children(
    app: perdure.App,
) -> None:
    # Children's results go to their parents' inboxes while the parents step: on
    # PostgreSQL two group-commit batches are in flight at once, and a batch that
    # meets the other's row locks the other way round is retried (a deadlock), never
    # lost or mixed up.
    @app.workflow
    async def leaf(ctx: WorkflowContext, parent: int, i: int) -> int:
        return parent * 1000 + i

    @app.workflow
    async def parent(ctx: WorkflowContext, p: int, n: int) -> list[int]:
        return list(await asyncio.gather(*(ctx.execute_child(leaf, p, i) for i in range(n))))

    async with app.worker():
        handles = [await app.start_workflow(parent, p, 40) for p in range(6)]
        results = await asyncio.gather(*(h.result(timeout=120) for h in handles))
    assert results == [[p * 1000 + i for i in range(40)] for p in range(6)]
