"""A hand-stepped asyncio event loop for one workflow run.

The workflow coroutine and every task it creates run here, never on the
worker's real loop. The runner calls ``run_once`` after feeding an event; it
drains ready callbacks until every task is blocked. Timers requested through
``call_later``/``call_at`` (``asyncio.sleep``, ``asyncio.timeout``) become
durable timers via the ``timer_factory`` the runner supplies.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
from collections.abc import Callable, Coroutine
from typing import Any


class DurableTimerHandle(asyncio.TimerHandle):
    """Returned by ``call_later``; cancelling it cancels the durable timer."""

    def __init__(
        self,
        when: float,
        callback: Callable[..., Any],
        args: tuple[Any, ...],
        loop: WorkflowLoop,
        context: contextvars.Context | None,
        on_cancel: Callable[[], None],
    ) -> None:
        super().__init__(when, callback, args, loop, context=context)
        self._on_cancel = on_cancel
        self._fired = False

    def cancel(self) -> None:
        # asyncio.sleep cancels its handle in a finally block, fired or not.
        if not self.cancelled() and not self._fired:
            self._on_cancel()
        super().cancel()

    def fire(self) -> None:
        if not self.cancelled():
            self._fired = True
            self._run()


TimerFactory = Callable[
    [float, Callable[..., Any], tuple[Any, ...], contextvars.Context | None], asyncio.TimerHandle
]


def _closed_timer_factory(
    delay: float,
    callback: Callable[..., Any],
    args: tuple[Any, ...],
    context: contextvars.Context | None,
) -> asyncio.TimerHandle:
    raise RuntimeError("the workflow's loop is closed: it can start no timer")


class WorkflowLoop(asyncio.AbstractEventLoop):
    def __init__(self, timer_factory: TimerFactory) -> None:
        self._ready: collections.deque[asyncio.Handle] = collections.deque()
        self._timer_factory = timer_factory
        self._now = 0.0
        self._closed = False
        self.unhandled: list[dict[str, Any]] = []
        # asyncio.all_tasks() scans every task of the process; keep our own, cheaply.
        self.tasks: set[asyncio.Task[Any]] = set()

    # -- driving ---------------------------------------------------------
    def set_time(self, now: float) -> None:
        self._now = now

    def run_once(self) -> None:
        """Run ready callbacks until none is left (every task blocked or done)."""
        previous = asyncio.events._get_running_loop()
        asyncio.events._set_running_loop(self)
        try:
            while self._ready:
                handle = self._ready.popleft()
                if not handle._cancelled:
                    handle._run()
        finally:
            asyncio.events._set_running_loop(previous)

    # -- the part of AbstractEventLoop that asyncio's own code uses -------
    def time(self) -> float:
        return self._now

    def call_soon(  # type: ignore[override]
        self,
        callback: Callable[..., Any],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        handle = asyncio.Handle(callback, args, self, context=context)
        self._ready.append(handle)
        return handle

    def call_later(  # type: ignore[override]
        self,
        delay: float,
        callback: Callable[..., Any],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        return self._timer_factory(max(0.0, delay), callback, args, context)

    def call_at(  # type: ignore[override]
        self,
        when: float,
        callback: Callable[..., Any],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        return self.call_later(when - self._now, callback, *args, context=context)

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.Future(loop=self)

    def create_task(  # type: ignore[override]
        self,
        coro: Coroutine[Any, Any, Any],
        *,
        name: str | None = None,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.Task(coro, loop=self, name=name, context=context)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        pass

    def get_debug(self) -> bool:
        return False

    def is_running(self) -> bool:
        return asyncio.events._get_running_loop() is self

    def is_closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        # The factory is a method of the runner, which holds this loop: drop it so a
        # finished run is freed by reference counting, not by the cyclic collector.
        self._timer_factory = _closed_timer_factory

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        # "Task was destroyed but it is pending" and friends: kept for the runner to
        # inspect, never printed from inside a replay.
        self.unhandled.append(context)

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        self.unhandled.append(context)

    def get_exception_handler(self) -> None:
        return None

    def run_in_executor(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        raise RuntimeError("workflow code cannot run threads; do blocking work in an activity")
