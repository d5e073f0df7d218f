"""The worker: claims due runs, drives them step by step, runs their activities.

A run is *held* by one worker at a time (a lease on its row, renewed in the
background). While held, it stays in memory (the sticky cache): each step
feeds new inputs to the live runner and commits the resulting events in one
fenced transaction, so a run with 10,000 steps never replays to take one more.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from types import TracebackType
from typing import TYPE_CHECKING, Any

from perdure._durations import Duration, to_seconds
from perdure._errors import (
    NonDeterminismError,
    UpdateRejectedError,
    failure_to_dict,
)
from perdure._history import EventType, HistoryEvent
from perdure._schedules import fire_due_schedules
from perdure._store._base import (
    InboxItem,
    NewRun,
    RunExists,
    RunRecord,
    StepCommit,
    StepRejected,
    Store,
    utcnow,
)
from perdure._worker._activities import PendingActivity, Slots
from perdure._worker._executor import ActivityExecution
from perdure._worker._plan import Plan, plan_step, task_rows, wake_after
from perdure._worker._run import HeldRun, Input
from perdure._workflow._runner import ParentInfo, WorkflowInfo, WorkflowRunner

if TYPE_CHECKING:
    from perdure._app import App
    from perdure._telemetry import Telemetry

log = logging.getLogger("perdure.worker")


@dataclass(slots=True)
class WorkerStats:
    """Counters for tests and metrics: how much work the sticky cache saved."""

    runs_adopted: int = 0
    runs_evicted: int = 0
    events_replayed: int = 0
    steps_committed: int = 0
    activities_started: int = 0
    # Activity attempts that waited for the lease loop (a late renewal): none while a
    # worker's own steps keep its leases fresh.
    lease_waits: int = 0


_ACTIVITY_OUTCOMES = {
    "completed": EventType.ACTIVITY_COMPLETED,
    "failed": EventType.ACTIVITY_FAILED,
    "timed_out": EventType.ACTIVITY_TIMED_OUT,
}


def _last_used(run: HeldRun) -> float:
    return run.last_used


class WorkerState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


_RUNNING = WorkerState.RUNNING  # read per activity and per start: an enum's class
# attribute goes through its metaclass's __getattr__ hook in Python 3.11


class Worker(ActivityExecution):
    """Runs workflows and activities of one App. Use ``async with app.worker(...)``."""

    def __init__(
        self,
        app: App,
        *,
        task_queues: list[str] | None = None,
        max_concurrent_workflows: int = 1000,
        max_concurrent_activities: int = 100,
        lease_duration: Duration = "30s",
        graceful_shutdown_timeout: Duration = "10s",
        poll_interval: Duration = "200ms",
        telemetry: Telemetry | None = None,
    ) -> None:
        if max_concurrent_workflows < 1 or max_concurrent_activities < 1:
            raise ValueError("max_concurrent_workflows and max_concurrent_activities must be >= 1")
        self.app = app
        self.task_queues = list(task_queues or [app.default_task_queue])
        self.max_concurrent_workflows = max_concurrent_workflows
        self.max_concurrent_activities = max_concurrent_activities
        self.lease_duration = to_seconds(lease_duration, what="lease_duration")
        self.graceful_shutdown_timeout = to_seconds(
            graceful_shutdown_timeout, what="graceful_shutdown_timeout"
        )
        self.poll_interval = to_seconds(poll_interval, what="poll_interval")
        self.telemetry = telemetry
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.state = WorkerState.STOPPED
        self.runs: dict[str, HeldRun] = {}
        self._store: Store | None = None
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._activity_slots = Slots(max_concurrent_activities)
        self._pool: ThreadPoolExecutor | None = None
        self._adopting: set[asyncio.Task[None]] = set()
        self._remote: set[asyncio.Task[None]] = set()
        self._adopting_ids: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._hand_backs: dict[str, tuple[datetime | None, str]] = {}
        self.clock = app._clock
        self.stats = WorkerStats()
        self._skip_check_pending = False
        self._inbox_mark = 0
        self._inbox_full_at = 0.0
        self._renewed = asyncio.Event()  # set (and replaced) after every renewal attempt
        self._claims_in_flight = 0
        self._handing_back: set[str] = set()
        self._claims_done = 0

    # -- lifecycle -------------------------------------------------------
    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def store(self) -> Store:
        assert self._store is not None, "worker not started"
        return self._store

    async def start(self) -> None:
        if self.state != WorkerState.STOPPED:
            raise RuntimeError(f"worker is {self.state}")
        self.state = WorkerState.STARTING
        self._store = await self.app._get_store()
        self._pool = ThreadPoolExecutor(
            max_workers=self.max_concurrent_activities, thread_name_prefix="perdure-activity"
        )
        await self.store.register_worker(
            worker_id=self.worker_id,
            namespace=self.app.namespace,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            task_queues=self.task_queues,
        )
        types = list(self.app._registry.workflows)
        if types:
            await self.store.unpark_runs(self.app.namespace, types)
        self.app._workers.add(self)
        await self.store.listen(self.wake)  # pushed wake-ups (PostgreSQL NOTIFY); no-op elsewhere
        self.state = WorkerState.RUNNING
        self._loops = [
            asyncio.create_task(self._poll_loop(), name="perdure-poll"),
            asyncio.create_task(self._lease_loop(), name="perdure-lease"),
        ]

    async def stop(self) -> None:
        """Stop claiming, let activities finish (up to the grace period), hand runs back."""
        if self.state != WorkerState.RUNNING:
            return
        self.state = WorkerState.DRAINING
        self.app._workers.discard(self)
        await self.store.unlisten(self.wake)
        poll = self._loops[0]
        poll.cancel()
        await asyncio.gather(poll, *self._adopting, return_exceptions=True)
        running = []
        for run in self.runs.values():
            for act in run.activities.values():
                if act.task is None or act.task.done():
                    continue
                if act.in_attempt:
                    running.append(act.task)
                else:
                    act.task.cancel()  # waiting out a backoff: the database keeps it
        if running:
            await asyncio.wait(running, timeout=self.graceful_shutdown_timeout)
        if self._remote:
            await asyncio.wait(list(self._remote), timeout=self.graceful_shutdown_timeout)
            for job in list(self._remote):
                job.cancel()
        drains = [r.drain_task for r in self.runs.values() if r.drain_task is not None]
        if drains:
            await asyncio.wait(drains, timeout=self.graceful_shutdown_timeout)
        for run in list(self.runs.values()):
            await self._release(run)
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        try:
            await self.store.release_tasks(self.worker_id)
            await self.store.deregister_worker(self.worker_id)
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
            self.state = WorkerState.STOPPED

    def _running(self) -> bool:
        return self.state is _RUNNING

    def _stopped(self) -> bool:
        return self.state == WorkerState.STOPPED

    def _count_activity(self) -> None:
        self.stats.activities_started += 1

    def wake(self) -> None:
        """Something changed in the database: look for work now, not at the next poll."""
        self._wake.set()

    # -- background loops ------------------------------------------------
    async def _poll_loop(self) -> None:
        backoff = self.poll_interval
        while self.state == WorkerState.RUNNING:
            try:
                self._wake.clear()
                await self._claim()
                await self._pull_inbox()
                await self._claim_activities()
                await self._fire_schedules()
                backoff = self.poll_interval
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("worker %s: polling failed; retrying", self.worker_id)
                backoff = min(backoff * 2, 5.0)
            try:
                await asyncio.wait_for(self._wake.wait(), backoff)
            except TimeoutError:
                pass

    async def _fire_schedules(self) -> None:
        await fire_due_schedules(self)  # schedules live in their own module

    @property
    def _lease_margin(self) -> float:
        """Headroom kept on every lease: renewals come every quarter of it, and clocks of
        different machines may disagree by up to this much."""
        return self.lease_duration / 4

    def _lease_safe(self, run: HeldRun) -> bool:
        """Whether no other worker can have taken the run: its lease has headroom left."""
        return time.monotonic() < run.lease_bound - self._lease_margin

    async def _lease_renewed(self) -> None:
        """Wait for the next renewal attempt of the lease loop."""
        self.stats.lease_waits += 1
        await self._renewed.wait()

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(self._lease_margin)
            try:
                await self._renew()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("worker %s: lease renewal failed", self.worker_id)
            finally:
                self._renewed.set()
                self._renewed = asyncio.Event()

    async def _renew(self) -> None:
        await self._retry_hand_backs()
        claims_done, claiming = self._claims_done, self._claims_in_flight
        known = self._known_runs()  # a run that closes during the renewal is no stray
        # Only runs held before the renewal began can be judged by it: one claimed or
        # started meanwhile may be missing from what it read. (A run whose start is
        # still committing is not in the database yet.)
        before = [r for r in self.runs.values() if not r.starting and not r.closed]
        began = time.monotonic()
        held = await self.store.renew_leases(
            self.worker_id, utcnow() + timedelta(seconds=self.lease_duration)
        )
        for run in before:
            run_id = run.run_id
            if run.closed or self.runs.get(run_id) is not run:
                continue
            renewed = held.get(run_id)
            if renewed is None:
                log.warning("worker %s lost the lease of run %s", self.worker_id, run_id)
                self._forget(run)
            elif renewed:
                run.lease_bound = max(run.lease_bound, began + self.lease_duration)
            # Held but not renewed: locked by our own step (its commit extends the lease)
            # or by a worker taking it over (the next renewal shows the new owner). Until
            # then its lease_bound runs down and no new activity attempt starts.
        if claiming == 0 and self._claims_in_flight == 0 and self._claims_done == claims_done:
            strays = held.keys() - known - self._known_runs()
            for run_id in strays:
                # E.g. a hand-back that met an outage and was given up: without this our
                # renewals would keep the run leased forever while nobody works on it.
                log.warning(
                    "worker %s: releasing run %s it held but did not run", self.worker_id, run_id
                )
                self._hand_back_later(run_id, utcnow())
        await self._flush_heartbeats()
        await self.store.register_worker(
            worker_id=self.worker_id,
            namespace=self.app.namespace,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            task_queues=self.task_queues,
        )

    def _known_runs(self) -> set[str]:
        """Runs this worker holds, is adopting or is handing back."""
        return self.runs.keys() | self._adopting_ids | self._hand_backs.keys() | self._handing_back

    async def _hand_back(self, run_id: str, wake_at: datetime | None, park: str = "") -> None:
        """Give a run we dropped back to the database: park it, or make it claimable.

        If the database is away, keep trying from the lease loop: until then our
        lease renewals would otherwise keep a run nobody here works on.
        """
        self._handing_back.add(run_id)
        try:
            if park:
                await self.store.park_run(run_id, self.worker_id, park)
            else:
                await self.store.release_run(run_id, self.worker_id, wake_at)
        except Exception:
            log.warning("could not hand back run %s yet; will retry", run_id, exc_info=True)
            self._hand_backs[run_id] = (wake_at, park)
        else:
            self._hand_backs.pop(run_id, None)
        finally:
            self._handing_back.discard(run_id)

    async def _retry_hand_backs(self) -> None:
        for run_id, (wake_at, park) in list(self._hand_backs.items()):
            await self._hand_back(run_id, wake_at, park)
        if self._hand_backs:
            raise RuntimeError(f"{len(self._hand_backs)} run(s) still to hand back")

    def _drop(self, run: HeldRun, why: str) -> None:
        """Forget a run after an unexpected failure and hand it back for a clean replay."""
        log.error("dropping run %s: %s", run.run_id, why)
        self._forget(run)
        self._hand_back_later(run.run_id, utcnow())

    def _hand_back_later(self, run_id: str, wake_at: datetime | None) -> None:
        task = asyncio.get_running_loop().create_task(self._hand_back(run_id, wake_at))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- claiming and adopting runs --------------------------------------
    async def _claim(self) -> None:
        capacity = self.max_concurrent_workflows - len(self.runs) - len(self._adopting)
        types = list(self.app._registry.workflows)
        if not types:
            return
        victims: list[HeldRun] = []
        if capacity <= 0:
            # Full: runs that only wait (for a signal, a timer) may make room for due
            # work. Claim first, then evict as many idle runs as we got new ones.
            victims = sorted((r for r in self.runs.values() if r.idle()), key=_last_used)
            capacity = min(len(victims), 64)
            if capacity <= 0:
                return
        claimed_at = time.monotonic()
        limit = min(capacity, 64)
        self._claims_in_flight += 1
        try:
            # Small batches: each claimed run costs a few reads to adopt, and a flood of
            # them must not keep the lease renewals waiting for a connection.
            records = await self.store.claim_runs(
                namespace=self.app.namespace,
                worker_id=self.worker_id,
                task_queues=self.task_queues,
                workflow_types=types,
                limit=limit,
                lease_until=utcnow() + timedelta(seconds=self.lease_duration),
            )
            if len(records) == limit:
                self._wake.set()  # more may be due: claim again without waiting for a poll
            for record in records:
                if record.run_id in self.runs or record.run_id in self._adopting_ids:
                    continue  # ours already: the claim only refreshed its lease
                self._adopting_ids.add(record.run_id)
                task = asyncio.create_task(self._adopt(record, claimed_at))
                self._adopting.add(task)
                task.add_done_callback(self._adopting.discard)
        finally:
            self._claims_in_flight -= 1
            self._claims_done += 1
        for victim in victims[: len(records)]:
            if victim.idle() and self.runs.get(victim.run_id) is victim:
                self.stats.runs_evicted += 1
                await self._release(victim)

    def can_adopt(self, run: NewRun) -> bool:
        return (
            self.state is _RUNNING
            and run.task_queue in self.task_queues
            and run.workflow_type in self.app._registry.workflows
            and len(self.runs) + len(self._adopting) < self.max_concurrent_workflows
        )

    def lease_new_run(self, run: NewRun) -> NewRun:
        """Mark a run about to be inserted as held by this worker from the start."""
        now = utcnow()
        run.owner = self.worker_id
        run.lease_until = now + timedelta(seconds=self.lease_duration)
        run.created_at = now
        return run

    async def start_here(self, new_run: NewRun) -> tuple[str, bool]:
        """Start a run leased to this worker and take its first step, in ONE commit.

        Returns (run_id, created); with id_conflict_policy="use_existing" and a run
        already running, that run's id and False.
        """
        record = new_run.record()
        held = HeldRun(record=record, runner=self._runner_for(record), next_seq=1)
        self._start_input(held)
        held.starting = True
        self.runs[record.run_id] = held
        try:
            async with held.lock:
                inputs, held.inputs = held.inputs, []
                await self._step(held, inputs, start=new_run)
            held.starting = False
        except BaseException as exc:
            if self.runs.get(record.run_id) is held:
                del self.runs[record.run_id]
            held.forget()
            if isinstance(exc, RunExists):
                return exc.run_id, False
            raise
        self.stats.runs_adopted += 1
        self._kick(held)
        return record.run_id, True

    def _runner_for(self, record: RunRecord) -> WorkflowRunner:
        defn = self.app._registry.workflows[record.workflow_type]
        parent = (
            ParentInfo(workflow_id=record.parent_workflow_id, run_id=record.parent_run_id)
            if record.parent_workflow_id and record.parent_run_id
            else None
        )
        info = WorkflowInfo(
            workflow_id=record.workflow_id,
            run_id=record.run_id,
            workflow_type=record.workflow_type,
            task_queue=record.task_queue,
            namespace=record.namespace,
            parent=parent,
        )
        return WorkflowRunner(defn, info, self.app._registry)

    def _hold(self, record: RunRecord, runner: WorkflowRunner, history_length: int) -> HeldRun:
        self.stats.runs_adopted += 1
        self.stats.events_replayed += history_length
        run = HeldRun(record=record, runner=runner, next_seq=history_length + 1)
        self.runs[record.run_id] = run
        return run

    def _start_input(self, run: HeldRun) -> None:
        record = run.record
        run.inputs.append(
            Input(
                EventType.WORKFLOW_STARTED,
                record.workflow_type,
                {
                    "args": record.input,
                    "workflow_id": record.workflow_id,
                    "run_id": record.run_id,
                    "workflow_type": record.workflow_type,
                    "task_queue": record.task_queue,
                    "parent_workflow_id": record.parent_workflow_id,
                    "parent_run_id": record.parent_run_id,
                },
            )
        )

    async def _adopt(self, record: RunRecord, claimed_at: float) -> None:
        """Bring a claimed run into memory: replay its history, resume what was pending."""
        try:
            await self._adopt_claimed(record, claimed_at)
        finally:
            self._adopting_ids.discard(record.run_id)

    async def _adopt_claimed(self, record: RunRecord, claimed_at: float) -> None:
        runner = self._runner_for(record)
        try:
            # Three reads at once: on PostgreSQL each is a round trip on its own connection.
            history, tasks, inbox = await asyncio.gather(
                self.store.load_history(record.run_id),
                self.store.load_tasks(record.run_id),
                self.store.load_run_inbox(record.run_id),
            )
            runner.replay(history)
        except NonDeterminismError as exc:
            log.error("%s", exc)
            runner.evict()
            await self._hand_back(record.run_id, None, park=str(exc))
            return
        except Exception:
            log.exception("could not resume run %s; handing it back", record.run_id)
            runner.evict()
            await self._hand_back(record.run_id, utcnow())
            return
        run = self._hold(record, runner, len(history))
        run.lease_bound = claimed_at + self.lease_duration
        if not history:
            self._start_input(run)
        for timer_id, (handle, _) in runner.pending_timers.items():
            self._arm_timer(run, timer_id, datetime.fromtimestamp(handle.when(), tz=UTC))
        rows = {task.activity_id: task for task in tasks}
        for event in history:
            activity_id = int(event.attributes.get("activity_id") or 0)
            if (
                event.event_type != EventType.ACTIVITY_SCHEDULED
                or activity_id not in runner.pending_activities
                or event.attributes.get("task_queue") is not None
            ):
                continue  # finished, canceled, or another task queue's to run
            act = PendingActivity.from_scheduled(
                event.attributes, event.name or "", event.created_at
            )
            row = rows.get(activity_id)
            if row is not None:  # it failed before: resume its retry state
                act.attempt = row.attempt
                act.visible_at = row.visible_at
                act.heartbeat_details = tuple(row.heartbeat_details)
                act.has_row = True
            run.activities[act.activity_id] = act
            self._launch_activity(run, act)
        self._take_inbox(run, inbox)
        self._kick(run)

    # -- inputs ----------------------------------------------------------
    async def _pull_inbox(self) -> None:
        if not self.runs:
            return
        # Only new rows on most polls; a full look now and then catches rows whose
        # ids were taken before rows that committed earlier (PostgreSQL sequences).
        now = asyncio.get_running_loop().time()
        full = now >= self._inbox_full_at
        if full:
            self._inbox_full_at = now + 2.0
        items = await self.store.owned_inbox(self.worker_id, 0 if full else self._inbox_mark)
        if items:
            self._inbox_mark = max(self._inbox_mark, max(i.inbox_id for i in items))
        by_run: dict[str, list[InboxItem]] = {}
        for item in items:
            by_run.setdefault(item.run_id, []).append(item)
        for run_id, run_items in by_run.items():
            run = self.runs.get(run_id)
            if run is not None:
                self._take_inbox(run, run_items)
                self._kick(run)

    def _take_inbox(self, run: HeldRun, items: list[InboxItem]) -> None:
        for item in items:
            if item.inbox_id in run.inbox_seen:
                continue
            run.inbox_seen.add(item.inbox_id)
            if item.kind == "signal":
                attrs: dict[str, Any] = {"args": item.payload}
                if item.undecodable is not None:
                    log.error(
                        "signal %r for run %s has a payload that is not JSON; it is kept in "
                        "the history and not delivered: %r",
                        item.name,
                        run.run_id,
                        item.undecodable[:200],
                    )
                    attrs["undecodable_payload"] = item.undecodable
                run.inputs.append(
                    Input(EventType.SIGNAL_RECEIVED, item.name, attrs, inbox_id=item.inbox_id)
                )
            elif item.kind == "update":
                body = item.payload[0] if item.payload and isinstance(item.payload[0], dict) else {}
                run.inputs.append(
                    Input(
                        EventType.UPDATE_ACCEPTED,
                        item.name,
                        {"update_id": str(body.get("update_id")), "args": body.get("args") or []},
                        inbox_id=item.inbox_id,
                    )
                )
            elif item.kind == "child_result":
                body = item.payload[0] if item.payload and isinstance(item.payload[0], dict) else {}
                completed = body.get("status") == "completed"
                run.inputs.append(
                    Input(
                        EventType.CHILD_COMPLETED if completed else EventType.CHILD_FAILED,
                        item.name,
                        body,
                        inbox_id=item.inbox_id,
                    )
                )
            elif item.kind == "activity_result":
                body = item.payload[0] if item.payload and isinstance(item.payload[0], dict) else {}
                run.inputs.append(
                    Input(
                        _ACTIVITY_OUTCOMES.get(str(body.pop("status", "")), "activity_failed"),
                        item.name,
                        body,
                        inbox_id=item.inbox_id,
                    )
                )
            elif item.kind == "cancel":
                run.inputs.append(
                    Input(
                        EventType.CANCEL_REQUESTED,
                        None,
                        {"reason": item.payload[0] if item.payload else None},
                        inbox_id=item.inbox_id,
                    )
                )

    def _kick(self, run: HeldRun) -> None:
        run.last_used = asyncio.get_running_loop().time()
        if run.needs_drain():
            run.drain_task = asyncio.create_task(self._drain(run))

    def _step_here(self, run: HeldRun, task: asyncio.Task[Any] | None) -> bool:
        """``_kick`` from a task that has nothing left to do (a finished activity's).

        True: that task is now the run's drain; it runs ``_drain`` itself, then
        ``_handed_over``. The step runs in that task instead of a new one, and so does the
        first activity the step schedules: a task and a turn of the event loop less per
        step of a sequential workflow.
        """
        run.last_used = asyncio.get_running_loop().time()
        if not run.needs_drain():
            return False
        run.drain_task = task  # the calling task (asked once per task, not per step)
        run.takes_handoff = True
        return True

    def _handed_over(self, run: HeldRun, task: asyncio.Task[Any] | None) -> PendingActivity | None:
        """After the drain of ``_step_here``: the activity this task runs next, if any."""
        run.takes_handoff = False
        if run.drain_task is task:
            run.drain_task = None  # this task now runs an activity, not the run's steps
        act, run.handoff = run.handoff, None
        if act is None or run.closed or run.activities.get(act.activity_id) is not act:
            return None  # canceled, or the run ended, before the drain was over
        act.task = task
        return act

    async def _drain(self, run: HeldRun) -> None:
        async with run.lock:
            while run.inputs and not run.closed:
                inputs, run.inputs = run.inputs, []
                try:
                    await self._step(run, inputs)
                except StepRejected:
                    log.info("run %s moved on elsewhere; dropping it", run.run_id)
                    self._forget(run)
                except NonDeterminismError as exc:
                    log.error("%s; run parked until fixed code is deployed", exc)
                    self._forget(run)
                    await self._hand_back(run.run_id, None, park=str(exc))
                except Exception:
                    # The commit's outcome is unknown (e.g. the connection broke): the
                    # database holds the truth, so drop our copy and replay from it.
                    log.exception("step of run %s failed; handing the run back", run.run_id)
                    self._forget(run)
                    await self._hand_back(run.run_id, utcnow())
        self._schedule_skip_check()

    # -- one step --------------------------------------------------------
    async def _step(
        self, run: HeldRun, inputs: list[Input], *, start: NewRun | None = None
    ) -> None:
        began = time.monotonic()
        now = self.clock.now()
        seq = run.next_seq
        events: list[HistoryEvent] = []
        consumed: list[int] = []
        finished: list[int] = []
        rejected: dict[str, dict[str, Any]] = {}
        for inp in inputs:
            if run.runner.closed:
                # The run ended earlier in this step. Its messages stay in the inbox
                # for the next run (continue-as-new) instead of being lost.
                if inp.inbox_id is not None:
                    run.inbox_seen.discard(inp.inbox_id)
                continue
            if inp.inbox_id is not None:
                consumed.append(inp.inbox_id)
            if inp.finished_activity is not None:
                finished.append(inp.finished_activity)
            if inp.event_type == EventType.UPDATE_ACCEPTED:
                try:
                    run.runner.validate_update(str(inp.name), inp.attributes["args"])
                except UpdateRejectedError as exc:
                    rejected[inp.attributes["update_id"]] = {
                        "rejected": True,
                        "error": failure_to_dict(exc),
                    }
                    continue  # a rejected update leaves no trace in history
            event = HistoryEvent(
                seq=seq,
                event_type=inp.event_type,
                name=inp.name,
                attributes=inp.attributes,
                created_at=now,
            )
            seq += 1
            events.append(event)
            for command in run.runner.feed(event):
                events.append(
                    HistoryEvent(
                        seq=seq,
                        event_type=command.event_type,
                        name=command.name,
                        attributes=command.attributes,
                        created_at=now,
                    )
                )
                seq += 1
        plan = plan_step(run, events, now)
        for update_id, rejection in rejected.items():
            plan.reply(update_id, rejection)
        if plan.close is not None:
            _fail_pending_updates(run, plan, plan.close.status)
        new_tasks, finished = task_rows(plan, finished)
        wake = wake_after(run, plan, now)
        commit = StepCommit(
            namespace=run.record.namespace,
            run_id=run.run_id,
            worker_id=self.worker_id,
            expected_seq=run.next_seq,
            events=events,
            new_tasks=new_tasks,
            finished_tasks=finished,
            consumed_inbox=consumed,
            wake_at=wake,
            lease_until=utcnow() + timedelta(seconds=self.lease_duration),
            close=plan.close,
            children=plan.children,
            messages=plan.messages,
            replies=plan.replies,
            search_attributes=plan.search_attributes or None,
            continue_as_new=plan.continue_as_new,
            start=start,
        )
        if self.telemetry is None:
            await self.store.commit_step(commit)
        else:
            await self._timed_commit(run, commit, self.telemetry)
        run.next_seq = seq
        if not commit.row_kept:  # else the lease is as the lease loop last renewed it
            run.lease_bound = max(run.lease_bound, began + self.lease_duration)
        self.stats.steps_committed += 1
        for inbox_id in consumed:
            run.inbox_seen.discard(inbox_id)
        self._apply(run, plan)

    async def _timed_commit(self, run: HeldRun, commit: StepCommit, telemetry: Telemetry) -> None:
        began = time.perf_counter()
        await self.store.commit_step(commit)
        telemetry.step_committed(time.perf_counter() - began, run.record.workflow_type)

    def _apply(self, run: HeldRun, plan: Plan) -> None:
        """Act on a committed step: start activities and timers, or let the run go."""
        for reply_id in plan.replies:
            self.app._reply_ready(reply_id)
        if plan.children or plan.messages or plan.continue_as_new is not None:
            self.app._wake_workers()
        if plan.close is not None:
            self._forget(run)
            self.app._run_closed(run.run_id, plan.close)
            if self.telemetry is not None:
                rec = run.record
                self.telemetry.run_closed(
                    run_id=rec.run_id,
                    workflow_id=rec.workflow_id,
                    workflow_type=rec.workflow_type,
                    task_queue=rec.task_queue,
                    status=plan.close.status,
                    created_at=rec.created_at,
                    closed_at=utcnow(),
                )
            return
        for timer_id in plan.canceled_timers:
            entry = run.timers.pop(timer_id, None)
            if entry is not None and entry[1] is not None:
                entry[1].cancel()
        for timer_id, fire_at in plan.new_timers:
            if timer_id not in plan.canceled_timers:
                self._arm_timer(run, timer_id, fire_at)
        for activity_id in plan.canceled_activities:
            act = run.activities.pop(activity_id, None)
            if act is not None:
                act.cancel()
        for act in plan.new_activities:
            if act.activity_id not in plan.canceled_activities:
                run.activities[act.activity_id] = act
                if run.takes_handoff and run.handoff is None:
                    self._count_activity()
                    run.handoff = act  # the draining task runs it once the drain is over
                else:
                    self._launch_activity(run, act)

    def _forget(self, run: HeldRun) -> None:
        if self.runs.get(run.run_id) is run:
            del self.runs[run.run_id]
        if not run.closed:
            run.forget()

    async def _release(self, run: HeldRun) -> None:
        wake = run.wake_at()
        self._forget(run)
        if run.inputs:
            wake = utcnow()
        await self._hand_back(run.run_id, wake)

    # -- timers ----------------------------------------------------------
    def _arm_timer(self, run: HeldRun, timer_id: int, fire_at: datetime) -> None:
        delay = max(0.0, (fire_at - self.clock.now()).total_seconds())
        handle = asyncio.get_running_loop().call_later(delay, self._timer_fired, run, timer_id)
        run.timers[timer_id] = (fire_at, handle)
        self._schedule_skip_check()

    def _schedule_skip_check(self) -> None:
        if self.clock.skipping and not self._skip_check_pending:
            self._skip_check_pending = True
            asyncio.get_running_loop().call_later(0.02, self._maybe_skip_time)

    def _maybe_skip_time(self) -> None:
        """Time-skipping (tests): when every held run waits on timers only, fire the next."""
        self._skip_check_pending = False
        if self.state != WorkerState.RUNNING:
            return
        due: list[tuple[datetime, int, HeldRun]] = []
        for run in self.runs.values():
            busy = (
                run.inputs
                or run.activities
                or (run.drain_task is not None and not run.drain_task.done())
            )
            if busy or self._adopting:
                self._schedule_skip_check()
                return
            due += [(fire_at, timer_id, run) for timer_id, (fire_at, _) in run.timers.items()]
        if not due:
            return
        fire_at, timer_id, run = min(due, key=lambda d: d[0])
        self.clock.advance_to(fire_at)
        handle = run.timers[timer_id][1]
        if handle is not None:
            handle.cancel()
        self._timer_fired(run, timer_id)

    def _timer_fired(self, run: HeldRun, timer_id: int) -> None:
        entry = run.timers.pop(timer_id, None)
        if entry is None or run.closed:
            return
        name = run.runner.pending_timers.get(timer_id, (None, None))[1]
        run.inputs.append(Input(EventType.TIMER_FIRED, name, {"timer_id": timer_id}))
        self._kick(run)


def _fail_pending_updates(run: HeldRun, plan: Plan, status: str) -> None:
    """A run that closes answers the updates still running in it with a failure."""
    for update_id in run.runner.pending_updates:
        plan.reply(
            update_id,
            {
                "error": {
                    "type": "UpdateFailedError",
                    "message": f"workflow closed ({status}) before the update finished",
                }
            },
        )
