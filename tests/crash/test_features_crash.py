"""Signals, updates, children, cancellation and continue-as-new survive a SIGKILLed worker."""

from __future__ import annotations

import textwrap

import pytest

import perdure

APP = textwrap.dedent(
    """
    import asyncio, os
    import perdure
    from perdure import WorkflowContext

    app = perdure.App(os.environ["PERDURE_DATABASE_URL"])

    def record(what):
        with open(os.environ["CRASH_LOG"], "a") as f:
            f.write(f"{what} {os.getpid()}\\n")

    @app.activity(name="gate")
    async def gate(name: str) -> str:
        record(f"gate:{name}")
        await asyncio.sleep(float(os.environ.get("GATE_SECONDS", "60")))
        return name

    @app.activity(name="note")
    async def note(what: str) -> None:
        record(what)

    @app.workflow(name="signalled")
    async def signalled(ctx: WorkflowContext) -> list[object]:
        got = []
        ctx.set_signal_handler("item", got.append)
        await ctx.activity(gate, "signalled")
        await ctx.wait_condition(lambda: len(got) >= 3)
        return got

    @app.workflow(name="updatable")
    async def updatable(ctx: WorkflowContext) -> int:
        total = 0
        async def add(n: int) -> int:
            nonlocal total
            total += n
            return total
        ctx.set_update_handler("add", add)
        await ctx.activity(gate, "updatable")
        await ctx.wait_for_signal("done")
        return total

    @app.workflow(name="kid")
    async def kid(ctx: WorkflowContext, n: int) -> int:
        await ctx.activity(gate, f"kid-{n}")
        return n

    @app.workflow(name="family")
    async def family(ctx: WorkflowContext) -> int:
        results = await asyncio.gather(*(ctx.execute_child(kid, n) for n in range(3)))
        return sum(results)

    @app.workflow(name="saga")
    async def saga(ctx: WorkflowContext) -> str:
        await ctx.activity(note, "booked")
        try:
            await ctx.activity(gate, "saga")
        except asyncio.CancelledError:
            await ctx.activity(note, "compensated")
            raise
        return "done"

    @app.workflow(name="looper")
    async def looper(ctx: WorkflowContext, i: int) -> int:
        if i == 5:
            await ctx.activity(gate, "looper")
        if i < 10:
            ctx.continue_as_new(i + 1)
        return i

    if __name__ == "__main__":
        asyncio.run(app.run_worker(lease_duration="2s", poll_interval="100ms"))
    """
)


@pytest.fixture
def procs(worker_processes):  # type: ignore[no-untyped-def]
    return worker_processes(APP)


async def test_signals_across_a_crash(database_url: str, procs) -> None:  # type: ignore[no-untyped-def]
    async with perdure.App(database_url) as client:
        handle = await client.start_workflow("signalled", workflow_id="s")
        await handle.signal("item", 1)
        first = procs.start()
        await procs.wait_for_line("gate:signalled", first)
        await handle.signal("item", 2)
        procs.kill(first)
        await handle.signal("item", 3)  # sent while no worker is alive
        second = procs.start(GATE_SECONDS="0")
        assert await handle.result(timeout=60) == [1, 2, 3]
        procs.stop(second)
        events = await handle.history()
    assert [e.event_type for e in events].count("signal_received") == 3


async def test_updates_across_a_crash(database_url: str, procs) -> None:  # type: ignore[no-untyped-def]
    async with perdure.App(database_url) as client:
        handle = await client.start_workflow("updatable", workflow_id="u")
        first = procs.start()
        await procs.wait_for_line("gate:updatable", first)
        assert await handle.update("add", 5, timeout=30) == 5
        procs.kill(first)
        second = procs.start(GATE_SECONDS="0")
        assert await handle.update("add", 2, timeout=60) == 7
        await handle.signal("done")
        assert await handle.result(timeout=60) == 7
        procs.stop(second)


async def test_children_across_a_crash(database_url: str, procs) -> None:  # type: ignore[no-untyped-def]
    async with perdure.App(database_url) as client:
        handle = await client.start_workflow("family", workflow_id="fam")
        first = procs.start()
        for n in range(3):
            await procs.wait_for_line(f"gate:kid-{n}", first)
        procs.kill(first)
        second = procs.start(GATE_SECONDS="0")
        assert await handle.result(timeout=60) == 3
        procs.stop(second)
        history = await handle.history()
    assert [e.event_type for e in history].count("child_completed") == 3


async def test_cancellation_across_a_crash(database_url: str, procs) -> None:  # type: ignore[no-untyped-def]
    async with perdure.App(database_url) as client:
        handle = await client.start_workflow("saga", workflow_id="saga")
        first = procs.start()
        await procs.wait_for_line("gate:saga", first)
        procs.kill(first)
        await handle.cancel()
        second = procs.start(GATE_SECONDS="60")
        with pytest.raises(perdure.WorkflowFailedError) as info:
            await handle.result(timeout=60)
        procs.stop(second)
    assert isinstance(info.value.cause, perdure.CancelledError)
    assert procs.lines().count("booked") == 1
    assert procs.lines().count("compensated") == 1


async def test_continue_as_new_across_a_crash(database_url: str, procs) -> None:  # type: ignore[no-untyped-def]
    async with perdure.App(database_url) as client:
        handle = await client.start_workflow("looper", 0, workflow_id="loop")
        first = procs.start()
        await procs.wait_for_line("gate:looper", first)
        procs.kill(first)
        second = procs.start(GATE_SECONDS="0")
        assert await handle.result(timeout=60) == 10
        procs.stop(second)
        runs = [d async for d in client.list_workflows(workflow_id_prefix="loop")]
    assert len(runs) == 11
    assert [r.status for r in runs].count("completed") == 1
