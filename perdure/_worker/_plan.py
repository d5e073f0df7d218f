"""From a step's command events to what the worker must do once they are committed."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from types import MappingProxyType
from typing import Any, TypeVar

from perdure._history import COMMAND_EVENTS, EventType, HistoryEvent
from perdure._store._base import Message, NewRun, NewTask, RunClose
from perdure._worker._activities import PendingActivity
from perdure._worker._run import HeldRun

_CLOSING: dict[str, str] = {
    EventType.WORKFLOW_COMPLETED: "completed",
    EventType.WORKFLOW_FAILED: "failed",
    EventType.WORKFLOW_CANCELED: "canceled",
}

_ACTIVITY_OPTIONS = (
    "retry",
    "start_to_close_timeout",
    "schedule_to_close_timeout",
    "heartbeat_timeout",
)


class Plan:
    """What a step's new command events ask the worker to do once committed.

    Most steps add one or two things: every field starts as a shared empty tuple (or
    mapping) and becomes a list (or dict) on its first addition. Nine containers less
    per step for the cyclic garbage collector to count and walk.
    """

    __slots__ = (
        "canceled_activities",
        "canceled_timers",
        "children",
        "close",
        "continue_as_new",
        "messages",
        "new_activities",
        "new_tasks",
        "new_timers",
        "replies",
        "search_attributes",
    )

    def __init__(self) -> None:
        self.children: Sequence[NewRun] = ()
        self.messages: Sequence[Message] = ()
        self.replies: Mapping[str, dict[str, Any]] = _NO_ENTRIES
        self.search_attributes: Mapping[str, Any] = _NO_ENTRIES
        self.continue_as_new: NewRun | None = None
        self.new_tasks: Sequence[NewTask] = ()
        self.new_activities: Sequence[PendingActivity] = ()
        self.canceled_activities: Sequence[int] = ()
        self.new_timers: Sequence[tuple[int, datetime]] = ()
        self.canceled_timers: Sequence[int] = ()
        self.close: RunClose | None = None

    def reply(self, update_id: str, outcome: dict[str, Any]) -> None:
        replies = self.replies if isinstance(self.replies, dict) else {}
        replies[update_id] = outcome
        self.replies = replies


_NO_ENTRIES: Mapping[str, Any] = MappingProxyType({})
T = TypeVar("T")


def _added(items: Sequence[T], item: T) -> list[T]:
    """``items`` with ``item`` appended: in place once it is a list, else a new list."""
    if isinstance(items, list):
        items.append(item)
        return items
    return [item]


def plan_step(run: HeldRun, events: list[HistoryEvent], now: datetime) -> Plan:
    plan = Plan()
    for event in events:
        if event.event_type in COMMAND_EVENTS:
            _PLANNERS.get(event.event_type, _ignore)(plan, run, event, now)
    return plan


def _ignore(plan: Plan, run: HeldRun, event: HistoryEvent, now: datetime) -> None:
    pass


def _activity(plan: Plan, run: HeldRun, event: HistoryEvent, now: datetime) -> None:
    attrs = event.attributes
    act = PendingActivity.from_scheduled(attrs, event.name or "", now)
    if attrs.get("task_queue") is None:
        # Runs here, right after the commit. No task row: the event makes it
        # recoverable; a row appears only if an attempt fails (retry state).
        plan.new_activities = _added(plan.new_activities, act)
        return
    plan.new_tasks = _added(
        plan.new_tasks,
        NewTask(
            activity_id=act.activity_id,
            activity_type=act.activity_type,
            task_queue=attrs.get("task_queue"),
            scheduled_at=now,
            visible_at=now,
            label=act.label,
            args=act.args,
            options={k: attrs.get(k) for k in _ACTIVITY_OPTIONS},
        ),
    )


def _activity_canceled(plan: Plan, run: HeldRun, event: HistoryEvent, now: datetime) -> None:
    plan.canceled_activities = _added(
        plan.canceled_activities, int(event.attributes["activity_id"])
    )


def _timer(plan: Plan, run: HeldRun, event: HistoryEvent, now: datetime) -> None:
    attrs = event.attributes
    timer = (int(attrs["timer_id"]), datetime.fromisoformat(attrs["fire_at"]))
    plan.new_timers = _added(plan.new_timers, timer)


def _timer_canceled(plan: Plan, run: HeldRun, event: HistoryEvent, now: datetime) -> None:
    plan.canceled_timers = _added(plan.canceled_timers, int(event.attributes["timer_id"]))


def _close(plan: Plan, run: HeldRun, event: HistoryEvent, now: datetime) -> None:
    attrs = event.attributes
    error = attrs.get("error")
    if event.event_type == EventType.WORKFLOW_CANCELED:
        reason = attrs.get("reason")
        message = f"workflow canceled: {reason}" if reason else "workflow canceled"
        error = {"type": "CancelledError", "message": message}
    plan.close = RunClose(
        status=_CLOSING[event.event_type],
        result=attrs.get("result"),
        error=error,
        had_children=run.runner.children_started > 0,
    )


def _continue_as_new(plan: Plan, run: HeldRun, event: HistoryEvent, now: datetime) -> None:
    rec, attrs = run.record, event.attributes
    plan.continue_as_new = NewRun(
        namespace=rec.namespace,
        workflow_id=rec.workflow_id,
        run_id=str(attrs["new_run_id"]),
        workflow_type=rec.workflow_type,
        task_queue=rec.task_queue,
        input=list(attrs.get("args") or []),
        wake_at=now,
        parent_workflow_id=rec.parent_workflow_id,
        parent_run_id=rec.parent_run_id,
        parent_close_policy=rec.parent_close_policy,
        child_id=rec.child_id,
        search_attributes=rec.search_attributes,
        memo=rec.memo,
    )
    plan.close = RunClose(status="continued_as_new", continued_run_id=plan.continue_as_new.run_id)


def _child(plan: Plan, run: HeldRun, event: HistoryEvent, now: datetime) -> None:
    rec, attrs = run.record, event.attributes
    plan.children = _added(
        plan.children,
        NewRun(
            namespace=rec.namespace,
            workflow_id=str(attrs["workflow_id"]),
            run_id=str(attrs["run_id"]),
            workflow_type=str(attrs["workflow_type"]),
            task_queue=str(attrs["task_queue"]),
            input=list(attrs.get("args") or []),
            wake_at=now,
            id_reuse_policy=str(attrs.get("id_reuse_policy") or "allow_duplicate"),
            parent_workflow_id=rec.workflow_id,
            parent_run_id=rec.run_id,
            parent_close_policy=str(attrs["parent_close_policy"]),
            child_id=int(attrs["child_id"]),
            search_attributes=dict(attrs.get("search_attributes") or {}),
            memo=dict(attrs.get("memo") or {}),
        ),
    )


def _search_attributes(plan: Plan, run: HeldRun, event: HistoryEvent, now: datetime) -> None:
    plan.search_attributes = {
        **plan.search_attributes,
        **(event.attributes.get("attributes") or {}),
    }


def _update_completed(plan: Plan, run: HeldRun, event: HistoryEvent, now: datetime) -> None:
    attrs = event.attributes
    plan.reply(
        str(attrs["update_id"]), {k: v for k, v in attrs.items() if k in ("result", "error")}
    )


def _marker(plan: Plan, run: HeldRun, event: HistoryEvent, now: datetime) -> None:
    attrs = event.attributes
    if attrs.get("kind") not in ("signal_child", "cancel_child"):
        return
    is_signal = attrs["kind"] == "signal_child"
    plan.messages = _added(
        plan.messages,
        Message(
            namespace=run.record.namespace,
            workflow_id=str(attrs["workflow_id"]),
            run_id=attrs.get("run_id"),
            kind="signal" if is_signal else "cancel",
            name=attrs.get("signal") if is_signal else None,
            payload=list(attrs.get("args") or []) if is_signal else [None],
        ),
    )


Planner = Callable[[Plan, HeldRun, HistoryEvent, datetime], None]

_PLANNERS: dict[str, Planner] = {
    EventType.ACTIVITY_SCHEDULED: _activity,
    EventType.ACTIVITY_CANCELED: _activity_canceled,
    EventType.TIMER_STARTED: _timer,
    EventType.TIMER_CANCELED: _timer_canceled,
    EventType.WORKFLOW_COMPLETED: _close,
    EventType.WORKFLOW_FAILED: _close,
    EventType.WORKFLOW_CANCELED: _close,
    EventType.WORKFLOW_CONTINUED_AS_NEW: _continue_as_new,
    EventType.CHILD_STARTED: _child,
    EventType.SEARCH_ATTRIBUTES_UPSERTED: _search_attributes,
    EventType.UPDATE_COMPLETED: _update_completed,
    EventType.MARKER_RECORDED: _marker,
}


def task_rows(plan: Plan, finished: list[int]) -> tuple[Sequence[NewTask], list[int]]:
    """The task rows a step inserts and deletes: an activity scheduled and canceled in
    the same step gets none; one finished or canceled loses its row (if it has one)."""
    new_tasks = plan.new_tasks
    if plan.canceled_activities:
        finished = [*finished, *plan.canceled_activities]
        new_tasks = [t for t in new_tasks if t.activity_id not in plan.canceled_activities]
    if finished and plan.new_tasks:
        scheduled = {t.activity_id for t in plan.new_tasks}
        finished = [a for a in finished if a not in scheduled]
    return new_tasks, finished


def wake_after(run: HeldRun, plan: Plan, now: datetime) -> datetime | None:
    """The run's next wake-up: its earliest timer or activity attempt, or now."""
    if plan.close is not None:
        return None
    canceled_timers = plan.canceled_timers
    canceled_activities = plan.canceled_activities
    wake: datetime | None = now if run.inputs else None
    for act in plan.new_activities:
        if act.activity_id not in canceled_activities:
            wake = now
            break
    for act in run.activities.values():
        if act.activity_id not in canceled_activities and (wake is None or act.visible_at < wake):
            wake = act.visible_at
    for timer_id, (fire_at, _) in run.timers.items():
        if timer_id not in canceled_timers and (wake is None or fire_at < wake):
            wake = fire_at
    for timer_id, fire_at in plan.new_timers:
        if timer_id not in canceled_timers and (wake is None or fire_at < wake):
            wake = fire_at
    return wake
