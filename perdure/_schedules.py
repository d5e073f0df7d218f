"""Schedules: start a workflow on a cron or interval spec (Temporal's semantics).

Everything schedules decide lives here, as plain functions of a schedule's row and a
time: parsing specs, the next fire times, jitter, catch-up and the overlap policies.
The store runs those decisions inside one transaction per schedule (its row locked),
so a fire's runs and the schedule's next fire time are written together, exactly once.

A fire's workflow id is ``f"{schedule_id}-{fire_time:%Y-%m-%dT%H:%M:%SZ}"`` (the nominal
time, before jitter) and is started with ``id_reuse_policy="reject_duplicate"``: the same
fire can never start twice, whichever worker fires it.
"""

from __future__ import annotations

import hashlib
import math
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from perdure._client import WorkflowHandle
from perdure._durations import Duration, to_seconds
from perdure._errors import ScheduleNotFoundError
from perdure._ids import random_uuid
from perdure._store._base import (
    NewRun,
    ScheduleChange,
    ScheduleRecord,
    utcnow,
)

if TYPE_CHECKING:
    from perdure._app import App
    from perdure._worker._worker import Worker

OVERLAP_POLICIES = ("skip", "buffer_one", "allow_all", "cancel_other")
DEFAULT_CATCHUP_WINDOW = 365 * 86400.0  # Temporal's default: one year
MAX_RECENT_RUNS = 10
MAX_FIRES_PER_CHANGE = 1000  # missed fires looked at in one transaction (the rest: next poll)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# -- specs -----------------------------------------------------------------
def parse_spec(
    *,
    cron: str | None,
    interval: Duration | None,
    timezone: str | None,
    jitter: Duration | None,
) -> dict[str, Any]:
    """The spec as stored (JSON); ``ValueError`` naming the bad text."""
    if (cron is None) == (interval is None):
        raise ValueError("give exactly one of cron= or interval=")
    jitter_s = to_seconds(jitter or 0, what="jitter")
    if cron is not None:
        if not isinstance(cron, str) or not cron.strip():
            raise ValueError(f"malformed cron expression: {cron!r}")
        tz = timezone or "UTC"
        zone = _zone(tz)
        try:
            CronSim(cron, datetime(2000, 1, 1, tzinfo=zone))
        except (CronSimError, ValueError, KeyError, IndexError) as exc:
            raise ValueError(f"malformed cron expression: {cron!r} ({exc})") from None
        return {"cron": cron.strip(), "timezone": tz, "jitter": jitter_s}
    if timezone is not None:
        _zone(timezone)  # checked, though an interval does not use it
    assert interval is not None
    seconds = to_seconds(interval, what="interval")
    if seconds < 1:
        raise ValueError(f"interval {interval!r} is too short: the smallest interval is 1s")
    return {"interval": seconds, "jitter": jitter_s}


def _zone(name: str) -> ZoneInfo:
    if not isinstance(name, str) or not name:
        raise ValueError(f"unknown timezone: {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(f"unknown timezone: {name!r}") from None


def next_fire_after(spec: dict[str, Any], after: datetime) -> datetime:
    """The first nominal fire time strictly after ``after`` (UTC).

    Intervals fire at whole multiples of the interval since the Unix epoch (as Temporal
    does), so "1h" fires on the hour; cron expressions are read in the spec's timezone.
    """
    if "interval" in spec:
        step = float(spec["interval"])
        elapsed = (after - _EPOCH).total_seconds()
        k = math.floor(elapsed / step) + 1
        fire = _EPOCH + timedelta(seconds=k * step)
        while fire <= after:  # float rounding
            k += 1
            fire = _EPOCH + timedelta(seconds=k * step)
        return fire
    zone = ZoneInfo(spec["timezone"])
    local = after.astimezone(zone)
    local_fire: datetime = next(iter(CronSim(spec["cron"], local)))
    return local_fire.astimezone(UTC)


def next_fire_times(spec: dict[str, Any], after: datetime, count: int) -> list[datetime]:
    times, moment = [], after
    for _ in range(count):
        moment = next_fire_after(spec, moment)
        times.append(moment)
    return times


def jitter_delay(schedule_id: str, fire_time: datetime, jitter: float) -> timedelta:
    """A delay in [0, jitter): the same on every worker for this schedule and fire time."""
    if jitter <= 0:
        return timedelta(0)
    digest = hashlib.sha256(f"{schedule_id}\x00{fire_stamp(fire_time)}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64  # [0, 1)
    return timedelta(seconds=math.floor(fraction * jitter * 1e6) / 1e6)


def fire_stamp(fire_time: datetime) -> str:
    return f"{fire_time.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"


def fire_workflow_id(schedule_id: str, fire_time: datetime) -> str:
    return f"{schedule_id}-{fire_stamp(fire_time)}"


def due_time(schedule_id: str, spec: dict[str, Any], fire_time: datetime) -> datetime:
    return fire_time + jitter_delay(schedule_id, fire_time, float(spec.get("jitter", 0.0)))


# -- decisions (run inside the schedule's transaction) ----------------------
@dataclass
class _Plan:
    rec: ScheduleRecord
    now: datetime
    running: tuple[str, str] | None  # (workflow_id, run_id) of the latest start, if running
    starts: list[NewRun] = field(default_factory=list)
    cancels: list[tuple[str, str]] = field(default_factory=list)
    recent: list[dict[str, Any]] = field(default_factory=list)
    last_fire_at: datetime | None = None
    last_run_id: str | None = None
    buffered: datetime | None = None

    def start(self, fire_time: datetime, *, manual: bool = False) -> NewRun:
        run = NewRun(
            namespace=self.rec.namespace,
            workflow_id=fire_workflow_id(self.rec.schedule_id, fire_time),
            run_id=random_uuid(),
            workflow_type=self.rec.workflow_type,
            task_queue=self.rec.task_queue,
            input=list(self.rec.args),
            wake_at=self.now,
            id_reuse_policy="reject_duplicate",
            id_conflict_policy="fail",
            created_at=self.now,
        )
        self.starts.append(run)
        self.recent.append(
            {
                "workflow_id": run.workflow_id,
                "run_id": run.run_id,
                "fire_time": fire_stamp(fire_time),
                "started_at": self.now.isoformat(),
                "trigger": "manual" if manual else "schedule",
            }
        )
        self.running = (run.workflow_id, run.run_id)
        self.last_run_id = run.run_id
        return run

    def change(
        self,
        *,
        next_fire_at: datetime | None,
        due_at: datetime | None,
        paused: bool | None = None,
        strict: bool = False,
    ) -> ScheduleChange:
        return ScheduleChange(
            paused=self.rec.paused if paused is None else paused,
            next_fire_at=next_fire_at,
            due_at=due_at,
            last_fire_at=self.last_fire_at,
            last_run_id=self.last_run_id,
            buffered_fire_at=self.buffered,
            recent_runs=self.recent[-MAX_RECENT_RUNS:],
            starts=self.starts,
            cancels=self.cancels,
            strict=strict,
        )


def _plan(rec: ScheduleRecord, last_status: str | None, now: datetime) -> _Plan:
    running = None
    if last_status == "running" and rec.recent_runs:
        latest = rec.recent_runs[-1]
        if latest.get("run_id") == rec.last_run_id:
            running = (str(latest["workflow_id"]), str(latest["run_id"]))
    return _Plan(
        rec=rec,
        now=now,
        running=running,
        recent=list(rec.recent_runs),
        last_fire_at=rec.last_fire_at,
        last_run_id=rec.last_run_id,
        buffered=rec.buffered_fire_at,
    )


def decide_fires(
    rec: ScheduleRecord, last_status: str | None, now: datetime
) -> ScheduleChange | None:
    """What a worker does with a schedule at ``now``: catch-up, then overlap, per fire."""
    if rec.paused:
        return None
    plan = _plan(rec, last_status, now)
    window = timedelta(seconds=rec.catchup_window)
    # A fire buffered behind the latest run goes first, once that run has ended.
    if plan.buffered is not None and plan.running is None:
        plan.start(plan.buffered)
        plan.buffered = None
    fire, due = rec.next_fire_at, rec.due_at
    looked = 0
    while fire is not None and due is not None and due <= now and looked < MAX_FIRES_PER_CHANGE:
        looked += 1
        plan.last_fire_at = fire
        if now - due <= window:  # older missed fires are skipped (catch-up window)
            _apply_overlap(plan, fire)
        fire = next_fire_after(rec.spec, fire)
        due = due_time(rec.schedule_id, rec.spec, fire)
    unchanged = (fire, due, plan.buffered) == (rec.next_fire_at, rec.due_at, rec.buffered_fire_at)
    if unchanged and not plan.starts and not plan.cancels:
        return None
    return plan.change(next_fire_at=fire, due_at=due)


def _apply_overlap(plan: _Plan, fire: datetime) -> None:
    policy = plan.rec.overlap
    if plan.running is None or policy == "allow_all":
        plan.start(fire)
    elif policy == "skip":
        return
    elif policy == "buffer_one":
        if plan.buffered is None:
            plan.buffered = fire  # at most one waits; later ones are dropped
    elif policy == "cancel_other":
        mine = [r for r in plan.starts if r.run_id == plan.running[1]]
        if mine:  # started by this same catch-up: the newer fire replaces it outright
            plan.starts.remove(mine[0])
            plan.recent = [r for r in plan.recent if r.get("run_id") != mine[0].run_id]
            plan.start(fire)
        else:  # cancel the running run; this fire starts once it has ended
            if plan.running not in plan.cancels:
                plan.cancels.append(plan.running)
            plan.buffered = fire


def decide_trigger(rec: ScheduleRecord, last_status: str | None, now: datetime) -> ScheduleChange:
    """``trigger()``: a run now, paused or not, whatever the overlap policy."""
    plan = _plan(rec, last_status, now)
    plan.start(now.replace(microsecond=0), manual=True)
    return plan.change(next_fire_at=rec.next_fire_at, due_at=rec.due_at, strict=True)


def decide_pause(
    rec: ScheduleRecord, last_status: str | None, now: datetime, paused: bool
) -> ScheduleChange | None:
    if rec.paused == paused:
        return None
    plan = _plan(rec, last_status, now)
    if paused:
        return plan.change(next_fire_at=rec.next_fire_at, due_at=rec.due_at, paused=True)
    # Unpausing does not catch up fires missed while paused: the next one is after now.
    fire = next_fire_after(rec.spec, now)
    return plan.change(
        next_fire_at=fire, due_at=due_time(rec.schedule_id, rec.spec, fire), paused=False
    )


# -- the worker's hook -------------------------------------------------------
_last_check: weakref.WeakKeyDictionary[Worker, float] = weakref.WeakKeyDictionary()


async def fire_due_schedules(worker: Worker, *, limit: int = 100) -> int:
    """Start the due runs of every due schedule of the worker's namespace.

    Called from each poll of a worker (at most once per poll interval); one transaction
    per schedule, its row claimed so that two workers never fire it at the same moment.
    Returns how many runs were started.
    """
    moment = time.monotonic()
    if moment - _last_check.get(worker, -math.inf) < min(worker.poll_interval, 1.0):
        return 0
    _last_check[worker] = moment
    store, namespace = worker.store, worker.app.namespace
    now = utcnow()
    started = 0
    for schedule_id in await store.due_schedules(namespace, now, limit):
        _, runs = await store.change_schedule(
            namespace,
            schedule_id,
            lambda rec, status: decide_fires(rec, status, utcnow()),
            skip_locked=True,
        )
        started += len(runs)
    if started:
        worker.wake()  # the new runs are due now: claim them without waiting a poll
    return started


# -- the public side ---------------------------------------------------------
@dataclass(frozen=True, kw_only=True, slots=True)
class ScheduleDescription:
    """What ``ScheduleHandle.describe()`` returns.

    ``spec``: ``{"cron", "timezone", "jitter"}`` or ``{"interval", "jitter"}`` (seconds).
    ``next_fire_times``: the next nominal fire times (UTC, before jitter).
    ``recent_runs``: the latest starts, oldest first: dicts with ``workflow_id``,
    ``run_id``, ``fire_time``, ``started_at`` (UTC datetimes), ``trigger``
    (``"schedule"`` or ``"manual"``) and ``status`` (the run's status now).
    """

    schedule_id: str
    workflow_type: str
    spec: dict[str, Any]
    paused: bool
    next_fire_times: list[datetime]
    recent_runs: list[dict[str, Any]]
    task_queue: str = ""
    overlap: str = "skip"
    catchup_window: float = DEFAULT_CATCHUP_WINDOW
    args: list[Any] = field(default_factory=list)
    buffered_fire_time: datetime | None = None
    created_at: datetime | None = None


class ScheduleHandle:
    """A handle on one schedule: ``app.get_schedule(schedule_id)``."""

    def __init__(self, app: App, schedule_id: str) -> None:
        self.app = app
        self.schedule_id = schedule_id

    def __repr__(self) -> str:
        return f"ScheduleHandle({self.schedule_id!r})"

    def _missing(self) -> ScheduleNotFoundError:
        return ScheduleNotFoundError(
            f"no schedule with id {self.schedule_id!r} in namespace {self.app.namespace!r}"
        )

    async def _change(self, decide: Callable[[ScheduleRecord, str | None], Any]) -> list[NewRun]:
        store = await self.app._get_store()
        found, started = await store.change_schedule(self.app.namespace, self.schedule_id, decide)
        if not found:
            raise self._missing()
        return started

    async def pause(self) -> None:
        """Stop firing (idempotent). Runs already started go on."""
        await self._change(lambda rec, status: decide_pause(rec, status, utcnow(), True))

    async def unpause(self) -> None:
        """Fire again from the next fire time after now (idempotent; no catch-up)."""
        await self._change(lambda rec, status: decide_pause(rec, status, utcnow(), False))

    async def trigger(self) -> WorkflowHandle[Any]:
        """Start a run now, even when paused, whatever the overlap policy."""
        started = await self._change(lambda rec, status: decide_trigger(rec, status, utcnow()))
        self.app._wake_workers()
        run = started[0]
        return WorkflowHandle(self.app, run.workflow_id, run.run_id, pinned=False)

    async def delete(self) -> None:
        """Remove the schedule (idempotent). Runs it started are left alone."""
        store = await self.app._get_store()
        await store.delete_schedule(self.app.namespace, self.schedule_id)

    async def describe(self, *, count: int = 5) -> ScheduleDescription:
        store = await self.app._get_store()
        rec = await store.get_schedule(self.app.namespace, self.schedule_id)
        if rec is None:
            raise self._missing()
        return await describe_record(self.app, rec, count=count)


async def describe_record(app: App, rec: ScheduleRecord, *, count: int = 5) -> ScheduleDescription:
    store = await app._get_store()
    upcoming: list[datetime] = []
    if rec.next_fire_at is not None and not rec.paused:
        upcoming = [rec.next_fire_at, *next_fire_times(rec.spec, rec.next_fire_at, count - 1)]
    elif rec.paused:
        upcoming = next_fire_times(rec.spec, utcnow(), count)
    recent = []
    for entry in rec.recent_runs:
        run = await store.get_run(rec.namespace, entry["workflow_id"], entry["run_id"])
        recent.append(
            {
                "workflow_id": entry["workflow_id"],
                "run_id": entry["run_id"],
                "fire_time": datetime.strptime(entry["fire_time"], "%Y-%m-%dT%H:%M:%SZ").replace(
                    tzinfo=UTC
                ),
                "started_at": datetime.fromisoformat(entry["started_at"]),
                "trigger": entry.get("trigger", "schedule"),
                "status": None if run is None else run.status,
            }
        )
    return ScheduleDescription(
        schedule_id=rec.schedule_id,
        workflow_type=rec.workflow_type,
        spec=dict(rec.spec),
        paused=rec.paused,
        next_fire_times=upcoming,
        recent_runs=recent,
        task_queue=rec.task_queue,
        overlap=rec.overlap,
        catchup_window=rec.catchup_window,
        args=list(rec.args),
        buffered_fire_time=rec.buffered_fire_at,
        created_at=rec.created_at,
    )


async def create_schedule(
    app: App,
    workflow: Any,
    *,
    schedule_id: str,
    args: list[Any] | tuple[Any, ...] = (),
    cron: str | None = None,
    interval: Duration | None = None,
    timezone: str | None = None,
    jitter: Duration | None = None,
    overlap: str = "skip",
    catchup_window: Duration | None = None,
    task_queue: str | None = None,
    paused: bool = False,
    next_fire_at: datetime | None = None,
) -> ScheduleHandle:
    """``App.schedule_workflow``; ``next_fire_at`` (private: tests) sets the first fire."""
    from perdure._app import check_workflow_id

    if not isinstance(schedule_id, str) or not schedule_id:
        raise ValueError(f"schedule_id must be a non-empty string, got {schedule_id!r}")
    check_workflow_id(schedule_id)
    spec = parse_spec(cron=cron, interval=interval, timezone=timezone, jitter=jitter)
    if overlap not in OVERLAP_POLICIES:
        raise ValueError(f"overlap must be one of {', '.join(OVERLAP_POLICIES)}; got {overlap!r}")
    window = (
        DEFAULT_CATCHUP_WINDOW
        if catchup_window is None
        else to_seconds(catchup_window, what="catchup_window")
    )
    if window < 1:
        raise ValueError(f"catchup_window {catchup_window!r} is too short: the smallest is 1s")
    if args is None or isinstance(args, str | bytes) or not isinstance(args, list | tuple):
        raise ValueError(f"args must be a list of the workflow's arguments, got {args!r}")
    # The same checks and encoding as a start: the workflow must be known, args must fit.
    run, _ = app._new_run(
        workflow,
        tuple(args),
        workflow_id=schedule_id,
        task_queue=task_queue,
        id_reuse_policy="reject_duplicate",
        id_conflict_policy="fail",
        start_delay=None,
        search_attributes=None,
        memo=None,
    )
    now = utcnow()
    first = next_fire_at if next_fire_at is not None else next_fire_after(spec, now)
    first = first.astimezone(UTC)
    rec = ScheduleRecord(
        namespace=app.namespace,
        schedule_id=schedule_id,
        workflow_type=run.workflow_type,
        task_queue=run.task_queue,
        args=run.input,
        spec=spec,
        overlap=overlap,
        catchup_window=window,
        paused=paused,
        next_fire_at=first,
        due_at=due_time(schedule_id, spec, first),
        last_fire_at=None,
        last_run_id=None,
        buffered_fire_at=None,
        recent_runs=[],
        created_at=now,
        updated_at=now,
    )
    store = await app._get_store()
    await store.create_schedule(rec)
    app._wake_workers()
    return ScheduleHandle(app, schedule_id)
