"""Running one activity attempt, with its timeouts, and deciding what comes next."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from perdure import _activity_state
from perdure._activity_state import ActivityInfo, ActivityState
from perdure._converter import to_jsonable
from perdure._errors import ApplicationError, TimeoutError, failure_to_dict
from perdure._registry import ActivityDefinition, ActivityOptions
from perdure._retry import RetryPolicy
from perdure._store._base import ActivityProgress


@dataclass(slots=True)
class PendingActivity:
    """An activity of a held run: scheduled, running, or waiting out a backoff."""

    activity_id: int
    activity_type: str
    label: str
    args: list[Any]
    retry: RetryPolicy | None
    start_to_close: float | None
    schedule_to_close: float | None
    heartbeat_timeout: float | None
    attempt: int
    scheduled_at: datetime
    visible_at: datetime
    heartbeat_details: tuple[Any, ...]  # the last attempt's (shared empty tuple: none)
    task: asyncio.Task[None] | None = None
    state: ActivityState | None = None
    in_attempt: bool = False
    has_row: bool = False  # a task row exists (only after a failed attempt, or remote)

    def progress(self) -> ActivityProgress:
        details = self.state.details if self.state is not None else self.heartbeat_details
        return ActivityProgress(
            activity_id=self.activity_id,
            activity_type=self.activity_type,
            label=self.label,
            attempt=self.attempt,
            scheduled_at=self.scheduled_at,
            heartbeat_details=list(details),
        )

    @classmethod
    def from_scheduled(
        cls, attrs: dict[str, Any], label: str, scheduled_at: datetime
    ) -> PendingActivity:
        return cls(
            activity_id=int(attrs["activity_id"]),
            activity_type=str(attrs["activity_type"]),
            label=label,
            args=attrs.get("args") or [],  # the event's own list: nothing changes it
            retry=RetryPolicy.from_dict(attrs["retry"]) if attrs.get("retry") else None,
            start_to_close=attrs.get("start_to_close_timeout"),
            schedule_to_close=attrs.get("schedule_to_close_timeout"),
            heartbeat_timeout=attrs.get("heartbeat_timeout"),
            attempt=1,
            scheduled_at=scheduled_at,
            visible_at=scheduled_at,
            heartbeat_details=(),
        )

    def end_attempt(self) -> None:
        """Keep the attempt's last heartbeat details; drop its state, which points back
        at this activity (its info builder), so a finished activity is freed at once by
        reference counting instead of waiting for the cyclic garbage collector."""
        state, self.state = self.state, None
        if state is not None and state.details:
            self.heartbeat_details = state.details

    def timeouts_unset(self) -> bool:
        return (
            self.start_to_close is None
            and self.schedule_to_close is None
            and self.heartbeat_timeout is None
        )

    def apply_defaults(self, options: ActivityOptions) -> None:
        """Fill what the call left open with the executing worker's registered defaults."""
        self.retry = self.retry or options.retry or _DEFAULT_RETRY
        if self.start_to_close is None:
            self.start_to_close = options.start_to_close_timeout
        if self.schedule_to_close is None:
            self.schedule_to_close = options.schedule_to_close_timeout
        if self.heartbeat_timeout is None:
            self.heartbeat_timeout = options.heartbeat_timeout

    def cancel(self) -> None:
        if self.state is not None:
            self.state.cancelled = True
        if self.task is not None and not self.task.done():
            self.task.cancel()


class Slots:
    """A FIFO counting limiter; cheaper than asyncio.Semaphore with many waiters."""

    def __init__(self, size: int) -> None:
        self.free = size
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def try_acquire(self) -> bool:
        """Take a slot if one is free now (no coroutine to build on the hot path)."""
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return True
        return False

    async def acquire(self) -> None:
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot came just as we were cancelled: pass it on
            raise

    def release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.free += 1


_DEFAULT_RETRY = RetryPolicy()  # frozen: one instance serves every activity without a policy
_SCALARS = frozenset({int, str, float, bool, type(None)})


@dataclass(slots=True)
class Outcome:
    ok: bool
    value: Any = None
    error: BaseException | None = None


async def run_attempt(
    act: PendingActivity,
    defn: ActivityDefinition,
    info: Callable[[], ActivityInfo],
    pool: ThreadPoolExecutor,
    now: datetime,
) -> Outcome:
    """Run one attempt; never raises (except cancellation of the caller)."""
    state = ActivityState(info, act.heartbeat_details)
    act.state = state
    try:
        args = defn.signature.decode_args(act.args, kind="activity")
    except Exception as exc:
        return Outcome(
            False, error=ApplicationError(str(exc), type=type(exc).__name__, non_retryable=True)
        )
    if defn.is_async and act.timeouts_unset():
        # The hot path: no timeouts to watch, so no extra task; the caller's task is ours.
        token = _activity_state.current.set(state)
        try:
            value = await defn.fn(*args)
        except Exception as exc:
            return Outcome(False, error=exc)
        finally:
            _activity_state.current.reset(token)
        return _success(defn, value)
    ctx = contextvars.copy_context()
    ctx.run(_activity_state.current.set, state)
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Any]
    if defn.is_async:
        fut = loop.create_task(_call_async(defn, args), context=ctx)
    else:
        fut = loop.run_in_executor(pool, ctx.run, defn.fn, *args)
    started = time.monotonic()
    remaining_s2c = None
    if act.schedule_to_close is not None:
        remaining_s2c = act.schedule_to_close - (now - act.scheduled_at).total_seconds()
    try:
        expired = await _watch(fut, act, state, started, remaining_s2c)
        if expired is not None:
            state.cancelled = True
            fut.cancel()
            return Outcome(
                False,
                error=TimeoutError(
                    f"activity {act.activity_type!r} attempt {act.attempt} hit its "
                    f"{expired} timeout",
                    timeout_type=expired,
                ),
            )
        try:
            value = fut.result()
        except asyncio.CancelledError:
            return Outcome(
                False, error=ApplicationError("activity was cancelled", type="CancelledError")
            )
        except Exception as exc:
            return Outcome(False, error=exc)
        return _success(defn, value)
    except asyncio.CancelledError:
        state.cancelled = True
        fut.cancel()
        raise


async def _watch(
    fut: asyncio.Future[Any],
    act: PendingActivity,
    state: ActivityState,
    started: float,
    remaining_s2c: float | None,
) -> str | None:
    """Wait for the attempt; return the kind of timeout that expired first, if any."""
    while True:
        tick = time.monotonic()
        waits: list[tuple[float, str]] = []
        if act.start_to_close is not None:
            waits.append((started + act.start_to_close - tick, "start_to_close"))
        if remaining_s2c is not None:
            waits.append((started + remaining_s2c - tick, "schedule_to_close"))
        if act.heartbeat_timeout is not None:
            waits.append((state.last_heartbeat + act.heartbeat_timeout - tick, "heartbeat"))
        expired = [kind for left, kind in waits if left <= 0]
        if expired:
            return expired[0]
        timeout = min(left for left, _ in waits) if waits else None
        done, _ = await asyncio.wait({fut}, timeout=timeout)
        if done:
            return None


def _success(defn: ActivityDefinition, value: Any) -> Outcome:
    if type(value) in _SCALARS:
        return Outcome(True, value=value)  # to_jsonable would return it unchanged
    try:
        return Outcome(True, value=to_jsonable(value, what=f"result of {defn.name!r}"))
    except TypeError as exc:
        return Outcome(
            False, error=ApplicationError(str(exc), type="PayloadError", non_retryable=True)
        )


async def _call_async(defn: ActivityDefinition, args: list[Any]) -> Any:
    return await defn.fn(*args)


@dataclass(frozen=True, slots=True)
class Verdict:
    """After a failed attempt: give up (``final``), or retry at ``retry_at``."""

    final: bool
    timed_out: bool
    failure: dict[str, Any]
    retry_at: datetime | None = None


def judge_failure(act: PendingActivity, error: BaseException, now: datetime) -> Verdict:
    failure = failure_to_dict(error)
    timed_out = isinstance(error, TimeoutError)
    policy = act.retry or RetryPolicy()
    if isinstance(error, ApplicationError) and error.non_retryable:
        return Verdict(True, timed_out, failure)
    if policy.is_non_retryable(str(failure["type"])):
        return Verdict(True, timed_out, failure)
    if policy.attempts_exhausted(act.attempt):
        return Verdict(True, timed_out, failure)
    retry_at = now + timedelta(seconds=policy.delay_after(act.attempt))
    if act.schedule_to_close is not None and retry_at >= act.scheduled_at + timedelta(
        seconds=act.schedule_to_close
    ):
        error = TimeoutError(
            f"activity {act.activity_type!r} ran out of its schedule_to_close timeout "
            f"after {act.attempt} attempt(s)",
            timeout_type="schedule_to_close",
            cause=error,
        )
        return Verdict(True, True, failure_to_dict(error))
    return Verdict(False, timed_out, failure, retry_at)
