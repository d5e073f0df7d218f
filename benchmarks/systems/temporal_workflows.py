"""Temporal workflow and activity definitions (a module of their own for the sandbox)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    from benchmarks.common import READY

TIMEOUT = timedelta(minutes=5)


@activity.defn
async def noop(i: int) -> int:
    return i


@workflow.defn
class Empty:
    @workflow.run
    async def run(self) -> int:
        return 0


@workflow.defn
class Steps:
    @workflow.run
    async def run(self, n: int) -> int:
        for i in range(n):
            await workflow.execute_activity(noop, i, start_to_close_timeout=TIMEOUT)
        return n


@workflow.defn
class Child:
    @workflow.run
    async def run(self, i: int) -> int:
        return i


@workflow.defn
class FanOut:
    @workflow.run
    async def run(self, n: int) -> int:
        results = await asyncio.gather(
            *(
                workflow.execute_child_workflow(
                    Child.run, i, id=f"{workflow.info().workflow_id}-{i}"
                )
                for i in range(n)
            )
        )
        return sum(results)


@workflow.defn
class Waiter:
    def __init__(self) -> None:
        self.value: int | None = None

    @workflow.signal
    def go(self, value: int) -> None:
        self.value = value

    @workflow.run
    async def run(self) -> int:
        READY.add(workflow.info().workflow_id)
        await workflow.wait_condition(lambda: self.value is not None)
        return int(self.value or 0)


@workflow.defn
class LongHistory:
    def __init__(self) -> None:
        self.value: int | None = None

    @workflow.signal
    def go(self, value: int) -> None:
        self.value = value

    @workflow.run
    async def run(self, n: int) -> int:
        for i in range(n):
            await workflow.execute_activity(noop, i, start_to_close_timeout=TIMEOUT)
        READY.add(workflow.info().workflow_id)
        await workflow.wait_condition(lambda: self.value is not None)
        await workflow.execute_activity(noop, -1, start_to_close_timeout=TIMEOUT)
        return n


WORKFLOWS = [Empty, Steps, Child, FanOut, Waiter, LongHistory]
ACTIVITIES = [noop]
