"""Running activities: those of runs this worker holds, and those of its task queues."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from perdure._activity_state import ActivityInfo
from perdure._errors import ApplicationError
from perdure._history import EventType
from perdure._registry import ActivityDefinition
from perdure._store._base import RemoteTask, RunRecord, StepRejected, Store, utcnow
from perdure._worker._activities import (
    Outcome,
    PendingActivity,
    Slots,
    Verdict,
    judge_failure,
    run_attempt,
)
from perdure._worker._run import HeldRun, Input

if TYPE_CHECKING:
    from perdure._app import App
    from perdure._clock import Clock
    from perdure._telemetry import Telemetry

log = logging.getLogger("perdure.worker")


class ActivityExecution:
    """The activity half of a worker (a mixin of ``Worker``)."""

    app: App
    clock: Clock
    worker_id: str
    task_queues: list[str]
    lease_duration: float
    max_concurrent_activities: int
    _activity_slots: Slots
    _remote: set[asyncio.Task[None]]
    _pool: ThreadPoolExecutor | None
    runs: dict[str, HeldRun]
    telemetry: Telemetry | None

    @property
    def store(self) -> Store:
        raise NotImplementedError

    def _running(self) -> bool:
        raise NotImplementedError

    def _stopped(self) -> bool:
        raise NotImplementedError

    def _kick(self, run: HeldRun) -> None:
        raise NotImplementedError

    def _step_here(self, run: HeldRun, task: asyncio.Task[Any] | None) -> bool:
        raise NotImplementedError

    def _handed_over(self, run: HeldRun, task: asyncio.Task[Any] | None) -> PendingActivity | None:
        raise NotImplementedError

    async def _drain(self, run: HeldRun) -> None:
        raise NotImplementedError

    def _forget(self, run: HeldRun) -> None:
        raise NotImplementedError

    def _drop(self, run: HeldRun, why: str) -> None:
        raise NotImplementedError

    def _count_activity(self) -> None:
        raise NotImplementedError

    def _lease_safe(self, run: HeldRun) -> bool:
        raise NotImplementedError

    async def _lease_renewed(self) -> None:
        raise NotImplementedError

    async def _flush_heartbeats(self) -> None:
        for run in list(self.runs.values()):
            for act in list(run.activities.values()):
                state = act.state
                if state is not None and state.dirty:
                    state.dirty = False
                    await self.store.save_heartbeat(run.run_id, act.progress())
                    act.has_row = True

    # -- activities of task queues (their runs live elsewhere) ------------
    async def _claim_activities(self) -> None:
        types = list(self.app._registry.activities)
        capacity = self.max_concurrent_activities - len(self._remote)
        if not types or capacity <= 0:
            return
        tasks = await self.store.claim_activity_tasks(
            namespace=self.app.namespace,
            worker_id=self.worker_id,
            task_queues=self.task_queues,
            activity_types=types,
            limit=min(capacity, 64),
            lease_until=utcnow() + timedelta(seconds=self.lease_duration),
        )
        for task in tasks:
            job = asyncio.create_task(self._run_remote(task))
            self._remote.add(job)
            job.add_done_callback(self._remote.discard)

    async def _run_remote(self, task: RemoteTask) -> None:
        """Run one claimed attempt; report the outcome, or give the task back for a retry."""
        act = PendingActivity.from_scheduled(
            {
                **task.options,
                "activity_id": task.activity_id,
                "activity_type": task.activity_type,
                "args": task.args,
            },
            task.label,
            task.scheduled_at,
        )
        act.attempt = task.attempt
        act.heartbeat_details = tuple(task.heartbeat_details)
        defn = self.app._registry.activities[task.activity_type]
        act.apply_defaults(defn.options)
        await self._activity_slots.acquire()
        act.in_attempt = True
        now = self.clock.now()
        info = partial(
            self._activity_info,
            task.namespace,
            task.workflow_id,
            task.run_id,
            task.workflow_type,
            task.task_queue,
            act,
            now,
        )
        try:
            outcome = await (
                run_attempt(act, defn, info, self._pool_(), now)
                if self.telemetry is None
                else self._traced_attempt(task, act, defn, info, now)
            )
        finally:
            self._activity_slots.release()
        act.end_attempt()
        base = {
            "activity_id": act.activity_id,
            "activity_type": act.activity_type,
            "attempt": act.attempt,
        }
        if outcome.ok:
            await self._persist(
                self.store.finish_remote_task,
                task,
                self.worker_id,
                {**base, "status": "completed", "result": outcome.value},
            )
            return
        assert outcome.error is not None
        verdict = judge_failure(act, outcome.error, self.clock.now())
        if verdict.final:
            status = "timed_out" if verdict.timed_out else "failed"
            await self._persist(
                self.store.finish_remote_task,
                task,
                self.worker_id,
                {**base, "status": status, "error": verdict.failure},
            )
            return
        assert verdict.retry_at is not None
        await self._persist(
            self.store.retry_remote_task,
            task,
            self.worker_id,
            attempt=act.attempt + 1,
            visible_at=verdict.retry_at,
            heartbeat_details=list(act.heartbeat_details),
            last_failure=verdict.failure,
        )

    async def _persist(self, write: Callable[..., Awaitable[Any]], *args: Any, **kw: Any) -> None:
        """Record an activity's outcome, retrying while the database is away."""
        delay = 0.1
        while True:
            try:
                await write(*args, **kw)
                return
            except Exception:
                if self._stopped():
                    raise
                log.warning("could not record an activity outcome yet; retrying", exc_info=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # -- activities ------------------------------------------------------
    async def _traced_attempt(
        self,
        run: RunRecord | RemoteTask,
        act: PendingActivity,
        defn: ActivityDefinition,
        info: Callable[[], ActivityInfo],
        now: datetime,
    ) -> Outcome:
        """One attempt of ``act`` of ``run``, in a span of the run's trace."""
        assert self.telemetry is not None
        with self.telemetry.activity_attempt(
            run_id=run.run_id,
            workflow_id=run.workflow_id,
            workflow_type=run.workflow_type,
            activity_type=act.activity_type,
            activity_id=act.activity_id,
            attempt=act.attempt,
            task_queue=run.task_queue,
            due_at=act.visible_at,
            now=now,
        ) as attempt:
            outcome = await run_attempt(act, defn, info, self._pool_(), now)
            if outcome.error is not None:
                attempt.failed(outcome.error)
            return outcome

    def _launch_activity(self, run: HeldRun, act: PendingActivity) -> None:
        self._count_activity()
        act.task = asyncio.create_task(self._run_activity(run, act))

    def _activity_definition(self, run: HeldRun, activity_type: str) -> ActivityDefinition | None:
        return self.app._registry.activities.get(activity_type) or run.runner.adhoc_activities.get(
            activity_type
        )

    async def _run_activity(self, run: HeldRun, act: PendingActivity) -> None:
        """Run ``act`` to its end; then, in this same task, its run's step and the next
        activity that step hands over (one coroutine, not a chain, per step)."""
        me = asyncio.current_task()
        try:
            while not run.closed:
                now = self.clock.now()
                delay = (act.visible_at - now).total_seconds()
                if delay > 0:
                    await asyncio.sleep(delay)
                    now = self.clock.now()
                if not self._running():
                    return
                defn = self._activity_definition(run, act.activity_type)
                if defn is None:
                    error: BaseException | None = ApplicationError(
                        f"activity type {act.activity_type!r} is not registered on this worker",
                        type="ActivityNotRegistered",
                        non_retryable=True,
                    )
                    outcome_ok, value = False, None
                else:
                    act.apply_defaults(defn.options)
                    if not self._activity_slots.try_acquire():
                        await self._activity_slots.acquire()
                        now = self.clock.now()
                    if not self._lease_safe(run):
                        # A late renewal: another worker may be taking the run over and
                        # would run this attempt too. Start it only once the lease is ours.
                        self._activity_slots.release()
                        await self._lease_renewed()
                        continue
                    act.in_attempt = True
                    info = partial(self._info, run, act, now)
                    try:
                        outcome = await (
                            run_attempt(act, defn, info, self._pool_(), now)
                            if self.telemetry is None
                            else self._traced_attempt(run.record, act, defn, info, now)
                        )
                    finally:
                        act.in_attempt = False
                        self._activity_slots.release()
                    outcome_ok, value = outcome.ok, outcome.value
                    error = outcome.error
                act.end_attempt()
                retry = self._settle_attempt(run, act, outcome_ok, value, error)
                if retry is not None:
                    assert retry.retry_at is not None
                    act.attempt += 1
                    act.visible_at = retry.retry_at
                    await self.store.retry_activity(
                        run_id=run.run_id,
                        worker_id=self.worker_id,
                        activity=act.progress(),
                        visible_at=act.visible_at,
                        last_failure=retry.failure,
                    )
                    act.has_row = True
                    continue
                if not self._step_here(run, me):
                    return
                try:
                    await self._drain(run)
                finally:
                    next_act = self._handed_over(run, me)
                if next_act is None:
                    return
                act = next_act
        except asyncio.CancelledError:
            pass
        except StepRejected:
            self._forget(run)
        except Exception as exc:  # e.g. the database is away while recording a retry
            self._drop(run, f"activity {act.label!r} could not be recorded: {exc!r}")

    def _settle_attempt(
        self,
        run: HeldRun,
        act: PendingActivity,
        ok: bool,
        value: Any,
        error: BaseException | None,
    ) -> Verdict | None:
        """Make a finished activity the run's next input; or, if it must be tried again,
        the verdict that says when."""
        if ok:
            self._finish_activity(
                run, act, EventType.ACTIVITY_COMPLETED, {"result": value}, kick=False
            )
            return None
        if error is None:  # an Outcome(ok=False) always carries its error; never seen
            error = RuntimeError("activity attempt failed")
        verdict = judge_failure(act, error, self.clock.now())
        if not verdict.final:
            return verdict
        self._finish_activity(
            run,
            act,
            EventType.ACTIVITY_TIMED_OUT if verdict.timed_out else EventType.ACTIVITY_FAILED,
            {"error": verdict.failure},
            kick=False,
        )
        return None

    def _finish_activity(
        self,
        run: HeldRun,
        act: PendingActivity,
        event_type: str,
        attrs: dict[str, Any],
        *,
        kick: bool = True,
    ) -> None:
        if run.closed or run.activities.get(act.activity_id) is not act:
            return
        del run.activities[act.activity_id]
        run.inputs.append(
            Input(
                event_type,
                act.label,
                {
                    "activity_id": act.activity_id,
                    "activity_type": act.activity_type,
                    "attempt": act.attempt,
                    **attrs,
                },
                finished_activity=act.activity_id if act.has_row else None,
            )
        )
        if kick:
            self._kick(run)

    def _info(self, run: HeldRun, act: PendingActivity, started_at: datetime) -> ActivityInfo:
        rec = run.record
        return self._activity_info(
            rec.namespace,
            rec.workflow_id,
            rec.run_id,
            rec.workflow_type,
            rec.task_queue,
            act,
            started_at,
        )

    def _activity_info(
        self,
        namespace: str,
        workflow_id: str,
        run_id: str,
        workflow_type: str,
        task_queue: str,
        act: PendingActivity,
        started_at: datetime,
    ) -> ActivityInfo:
        return ActivityInfo(
            namespace=namespace,
            workflow_id=workflow_id,
            run_id=run_id,
            workflow_type=workflow_type,
            activity_id=act.activity_id,
            activity_type=act.activity_type,
            attempt=act.attempt,
            task_queue=task_queue,
            scheduled_at=act.scheduled_at,
            started_at=started_at,
            heartbeat_details=act.heartbeat_details,
        )

    def _pool_(self) -> ThreadPoolExecutor:
        assert self._pool is not None
        return self._pool
