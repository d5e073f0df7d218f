"""A run held by a worker: its runner, its pending inputs, timers and activities."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from perdure._store._base import RunRecord
from perdure._worker._activities import PendingActivity
from perdure._workflow._runner import WorkflowRunner


@dataclass(slots=True)
class Input:
    """Something to tell the run at its next step."""

    event_type: str
    name: str | None
    attributes: dict[str, Any]
    inbox_id: int | None = None
    finished_activity: int | None = None


@dataclass(slots=True)
class HeldRun:
    record: RunRecord
    runner: WorkflowRunner
    next_seq: int
    inputs: list[Input] = field(default_factory=list)
    inbox_seen: set[int] = field(default_factory=set)
    timers: dict[int, tuple[datetime, asyncio.TimerHandle | None]] = field(default_factory=dict)
    activities: dict[int, PendingActivity] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    drain_task: asyncio.Task[None] | None = None
    # A finished activity's task that is taking the run's step (``Worker._step_here``)
    # runs the step's one new activity itself: no new task, no extra loop turn.
    takes_handoff: bool = False
    handoff: PendingActivity | None = None
    closed: bool = False
    starting: bool = False  # its start-and-first-step transaction has not committed yet
    # Monotonic time before which the database lease has surely not run out: counted from
    # just before the claim, step commit or renewal that last set it (so never too late).
    lease_bound: float = 0.0
    last_used: float = field(default_factory=time.monotonic)

    @property
    def run_id(self) -> str:
        return self.record.run_id

    def wake_at(self) -> datetime | None:
        """When another worker must pick this run up if we vanish."""
        times = [fire_at for fire_at, _ in self.timers.values()]
        times += [a.visible_at for a in self.activities.values()]
        return min(times) if times else None

    def needs_drain(self) -> bool:
        """Inputs wait and no task is draining them."""
        return (
            bool(self.inputs)
            and (self.drain_task is None or self.drain_task.done())
            and not self.closed
        )

    def idle(self) -> bool:
        return (
            not self.inputs
            and not self.activities
            and (self.drain_task is None or self.drain_task.done())
        )

    def forget(self) -> None:
        """Stop everything this worker does for the run (it is closed, lost or evicted)."""
        self.closed = True
        for _, handle in self.timers.values():
            if handle is not None:
                handle.cancel()
        self.timers.clear()
        for act in self.activities.values():
            act.cancel()
        self.activities.clear()
        self.runner.evict()
