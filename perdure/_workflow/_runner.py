"""WorkflowRunner: turns history events into workflow progress and commands.

The runner knows no database. ``feed(event)`` delivers one input event, runs
the workflow's loop until every task is blocked, and returns the commands the
code issued. On replay ``feed(event, recorded=[...])`` checks that the code
issues exactly the commands recorded after that event and returns nothing.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from perdure._converter import PayloadError, Signature, to_jsonable
from perdure._errors import (
    ActivityError,
    ChildWorkflowError,
    NonDeterminismError,
    QueryFailedError,
    QueryRejectedError,
    UpdateRejectedError,
    failure_from_dict,
    failure_to_dict,
)
from perdure._history import (
    COMMAND_EVENTS,
    TERMINAL_EVENTS,
    Command,
    EventType,
    HistoryEvent,
    describe_event,
)
from perdure._registry import ActivityDefinition, Registry, WorkflowDefinition
from perdure._workflow._context import ContinueAsNew, WorkflowContext
from perdure._workflow._loop import DurableTimerHandle, WorkflowLoop


class _Suspend(BaseException):
    """Stops workflow code without letting ``except Exception`` catch it."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ParentInfo:
    workflow_id: str
    run_id: str


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkflowInfo:
    """Facts about the running workflow, as ``ctx.info`` gives them."""

    workflow_id: str
    run_id: str
    workflow_type: str
    task_queue: str
    namespace: str = "default"
    attempt: int = 1
    parent: ParentInfo | None = None


def is_patch_marker(event: HistoryEvent) -> bool:
    return event.event_type == EventType.MARKER_RECORDED and event.attributes.get("kind") == "patch"


@dataclass(slots=True)
class _Activation:
    event: HistoryEvent
    expected: collections.deque[HistoryEvent] | None
    commands: list[Command] = field(default_factory=list)


class WorkflowRunner:
    def __init__(self, defn: WorkflowDefinition, info: WorkflowInfo, registry: Registry) -> None:
        self.defn = defn
        self.info = info
        self.registry = registry
        self.loop = WorkflowLoop(self._timer_factory)  # type: ignore[abstract]
        self._rng: random.Random | None = None
        self.now = datetime.now(UTC)
        self.closed = False
        self.cancel_requested = False
        self.cancel_reason: str | None = None
        self.failure: NonDeterminismError | None = None
        self.main_task: asyncio.Task[None] | None = None
        self.adhoc_activities: dict[str, ActivityDefinition] = {}
        self.query_handlers: dict[str, Callable[..., Any]] = {}
        self.signal_handlers: dict[str, Callable[..., Any]] = {}
        self.signal_buffer: dict[str, collections.deque[list[Any]]] = {}
        self.signal_waiters: dict[str, collections.deque[asyncio.Future[Any]]] = {}
        self.patches: dict[str, bool] = {}
        self.conditions: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self.pending_activities: dict[int, asyncio.Future[Any]] = {}
        self.pending_children: dict[int, asyncio.Future[Any]] = {}
        self.children_started = 0
        self.update_handlers: dict[str, tuple[Callable[..., Any], Callable[..., Any] | None]] = {}
        self.pending_updates: set[str] = set()
        self.pending_timers: dict[int, tuple[DurableTimerHandle, str | None]] = {}
        self._next_id = 0
        self._timer_name: str | None = None
        self._activation: _Activation | None = None
        self._evicting = False

    @property
    def rng(self) -> random.Random:
        """The run's seeded ``random.Random``, made on first use (seeding costs more
        than the rest of a runner, and most workflows never ask for it)."""
        if self._rng is None:
            self._rng = random.Random(self.info.run_id)
        return self._rng

    # -- driving ---------------------------------------------------------
    @property
    def replaying(self) -> bool:
        return self._activation is not None and self._activation.expected is not None

    def feed(
        self, event: HistoryEvent, recorded: list[HistoryEvent] | None = None
    ) -> list[Command]:
        """Deliver one input event, run to quiescence, return the new commands.

        With ``recorded`` (replay) the commands must equal the recorded ones;
        a mismatch raises ``NonDeterminismError``.
        """
        if self.failure is not None:
            raise self.failure
        if event.event_type in COMMAND_EVENTS:
            raise ValueError(f"{event.event_type} is a command event, not an input")
        activation = _Activation(
            event=event, expected=collections.deque(recorded) if recorded is not None else None
        )
        self._activation = activation
        self.now = event.created_at
        self.loop.set_time(event.created_at.timestamp())
        try:
            self._dispatch(event)
            self._run_until_blocked()
            if self.failure is None and activation.expected is not None:
                leftovers = [e for e in activation.expected if not is_patch_marker(e)]
                if leftovers:
                    self._nondeterminism(leftovers[0].seq, "nothing", describe_event(leftovers[0]))
        finally:
            self._activation = None
        if self.failure is not None:
            raise self.failure
        return activation.commands

    def _run_until_blocked(self) -> None:
        self.loop.run_once()
        while self.conditions and self.failure is None:
            woken = False
            for entry in list(self.conditions):
                check, fut = entry
                if fut.done():
                    self.conditions.remove(entry)
                elif check():
                    self.conditions.remove(entry)
                    fut.set_result(None)
                    woken = True
            if not woken:
                return
            self.loop.run_once()

    def replay(self, events: list[HistoryEvent]) -> None:
        """Re-run a recorded history, checking every command against it."""
        i = 0
        while i < len(events):
            event = events[i]
            j = i + 1
            while j < len(events) and events[j].event_type in COMMAND_EVENTS:
                j += 1
            if event.event_type in COMMAND_EVENTS:
                # History that starts with commands is broken; report the first one.
                self._nondeterminism(event.seq, "an input event", describe_event(event))
                raise self.failure  # type: ignore[misc]
            self.feed(event, events[i + 1 : j])
            i = j

    def evict(self) -> None:
        """Drop the run from memory: cancel its tasks so their coroutines close."""
        self._evicting = True
        pending = [task for task in self.loop.tasks if not task.done()]
        if pending:
            for task in pending:
                task.cancel()
            try:
                self.loop.run_once()
            except BaseException:  # best effort while throwing the run away
                pass
        self.loop.close()

    # -- commands --------------------------------------------------------
    def derived_id(self, what: str) -> str:
        """A deterministic id (a UUID) for something this run creates."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"perdure:{self.info.run_id}:{what}"))

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def issue(self, command: Command) -> HistoryEvent | None:
        """Record a command; on replay, return the recorded event it matches."""
        activation = self._activation
        if self._evicting or activation is None:
            raise _Suspend()
        if self.closed:
            raise RuntimeError(f"workflow already closed; cannot {command.describe()}")
        if command.event_type in TERMINAL_EVENTS:
            self.closed = True
        expected = activation.expected
        if expected is None:
            activation.commands.append(command)
            return None
        while (
            expected
            and is_patch_marker(expected[0])
            and not (
                command.event_type == EventType.MARKER_RECORDED
                and command.attributes.get("kind") == "patch"
            )
        ):
            expected.popleft()
        if not expected:
            self._nondeterminism(activation.event.seq, command.describe(), "nothing")
            raise _Suspend()
        recorded = expected.popleft()
        if not _matches(recorded, command):
            self._nondeterminism(recorded.seq, command.describe(), describe_event(recorded))
            raise _Suspend()
        return recorded

    def _nondeterminism(self, position: int, expected: str, recorded: str) -> None:
        if self.failure is not None:
            return
        info = self.info
        self.failure = NonDeterminismError(
            f"workflow {info.workflow_id!r} (run {info.run_id}, type {info.workflow_type!r}) "
            f"diverged from its history at position {position}: the code issued {expected} "
            f"but the history recorded {recorded}",
            workflow_id=info.workflow_id,
            run_id=info.run_id,
            position=position,
            expected=expected,
            recorded=recorded,
        )

    def start_timer(
        self,
        delay: float,
        callback: Callable[..., Any],
        args: tuple[Any, ...],
        context: contextvars.Context | None,
        name: str | None,
    ) -> DurableTimerHandle:
        timer_id = self.new_id()
        fire_at = self.now + timedelta(seconds=delay)
        handle = DurableTimerHandle(
            self.loop.time() + delay,
            callback,
            args,
            self.loop,
            context,
            on_cancel=lambda: self._cancel_timer(timer_id),
        )
        self.issue(
            Command(
                event_type=EventType.TIMER_STARTED,
                name=name,
                attributes={
                    "timer_id": timer_id,
                    "duration": delay,
                    "fire_at": fire_at.isoformat(),
                },
            )
        )
        self.pending_timers[timer_id] = (handle, name)
        return handle

    def _timer_factory(
        self,
        delay: float,
        callback: Callable[..., Any],
        args: tuple[Any, ...],
        context: contextvars.Context | None,
    ) -> asyncio.TimerHandle:
        name, self._timer_name = self._timer_name, None
        return self.start_timer(delay, callback, args, context, name)

    def _cancel_timer(self, timer_id: int) -> None:
        entry = self.pending_timers.pop(timer_id, None)
        if entry is None or self._evicting or self.closed:
            return
        self.issue(
            Command(
                event_type=EventType.TIMER_CANCELED,
                name=entry[1],
                attributes={"timer_id": timer_id},
            )
        )

    def patched(self, patch_id: str, *, deprecated: bool = False) -> bool:
        if patch_id in self.patches:
            return self.patches[patch_id]
        activation = self._activation
        if activation is None:
            raise RuntimeError("ctx.patched() may only be called from workflow code")
        command = Command(
            event_type=EventType.MARKER_RECORDED,
            name=patch_id,
            attributes={"kind": "patch", "patch_id": patch_id, "deprecated": deprecated},
        )
        if activation.expected is None:
            self.issue(command)
            result = True
        else:
            result = False
            for recorded in list(activation.expected):
                if not is_patch_marker(recorded):
                    break
                if recorded.attributes.get("patch_id") == patch_id:
                    activation.expected.remove(recorded)
                    result = True
                    break
        self.patches[patch_id] = result or deprecated
        return self.patches[patch_id]

    # -- input events ----------------------------------------------------
    def _dispatch(self, event: HistoryEvent) -> None:
        kind = event.event_type
        attrs = event.attributes
        if kind == EventType.WORKFLOW_STARTED:
            self.main_task = self.loop.create_task(self._run_main(attrs.get("args") or []))
        elif kind in (
            EventType.ACTIVITY_COMPLETED,
            EventType.ACTIVITY_FAILED,
            EventType.ACTIVITY_TIMED_OUT,
        ):
            fut = self.pending_activities.pop(int(attrs["activity_id"]), None)
            _settle(fut, kind == EventType.ACTIVITY_COMPLETED, event, _activity_error)
        elif kind in (EventType.CHILD_COMPLETED, EventType.CHILD_FAILED):
            fut = self.pending_children.pop(int(attrs["child_id"]), None)
            _settle(fut, kind == EventType.CHILD_COMPLETED, event, _child_error)
        elif kind == EventType.TIMER_FIRED:
            entry = self.pending_timers.pop(int(attrs["timer_id"]), None)
            if entry is not None:
                entry[0].fire()
        elif kind == EventType.SIGNAL_RECEIVED and "undecodable_payload" not in attrs:
            self._deliver_signal(str(event.name), list(attrs.get("args") or []))
        elif kind == EventType.UPDATE_ACCEPTED:
            self._run_update(
                str(event.name), str(attrs["update_id"]), list(attrs.get("args") or [])
            )
        elif kind == EventType.CANCEL_REQUESTED:
            if self.cancel_requested:
                return  # a repeated request must not interrupt the compensation
            self.cancel_requested = True
            self.cancel_reason = attrs.get("reason")
            if self.main_task is not None and not self.main_task.done():
                self.main_task.cancel()
        elif kind == EventType.WORKFLOW_TERMINATED:
            self.closed = True

    def _deliver_signal(self, name: str, args: list[Any]) -> None:
        waiters = self.signal_waiters.get(name)
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(args)
                return
        handler = self.signal_handlers.get(name)
        if handler is not None:
            self.call_handler(handler, args)
        else:
            self.signal_buffer.setdefault(name, collections.deque()).append(args)

    def call_handler(self, handler: Callable[..., Any], args: list[Any]) -> None:
        """Deliver a signal to its handler; a payload that does not fit is dropped, loudly."""
        try:
            decoded = _decode_handler_args(handler, args, "signal handler")
        except TypeError as exc:
            if not self.replaying:
                logging.getLogger("perdure.workflow").error(
                    "workflow %r: signal dropped, its payload does not fit the handler: %s",
                    self.info.workflow_id,
                    exc,
                )
            return
        result = handler(*decoded)
        if asyncio.iscoroutine(result):
            self.loop.create_task(result)

    # -- queries and updates -----------------------------------------------
    def query(self, name: str, args: list[Any]) -> Any:
        """Answer a query from the current state; raises QueryRejected/QueryFailed."""
        handler = self.query_handlers.get(name)
        if handler is None:
            known = ", ".join(sorted(self.query_handlers)) or "none"
            raise QueryRejectedError(
                f"workflow {self.info.workflow_id!r} has no query handler {name!r} "
                f"(registered: {known})"
            )
        try:
            decoded = _decode_handler_args(handler, args, f"query {name!r}")
            result = handler(*decoded)
            if asyncio.iscoroutine(result):
                result.close()
                raise TypeError("query handlers must be plain functions, not async")
            return to_jsonable(result, what=f"result of query {name!r}")
        except Exception as exc:
            raise QueryFailedError(f"query {name!r} failed: {exc}", cause=exc) from exc

    def validate_update(self, name: str, args: list[Any]) -> None:
        """Run the update's validator; raise ``UpdateRejectedError`` to refuse it."""
        entry = self.update_handlers.get(name)
        if entry is None:
            known = ", ".join(sorted(self.update_handlers)) or "none"
            raise UpdateRejectedError(
                f"workflow {self.info.workflow_id!r} has no update handler {name!r} "
                f"(registered: {known})"
            )
        handler, validator = entry
        try:
            decoded = _decode_handler_args(handler, args, f"update {name!r}")
            if validator is not None:
                validator(*decoded)
        except Exception as exc:
            raise UpdateRejectedError(f"update {name!r} rejected: {exc}", cause=exc) from exc

    def _run_update(self, name: str, update_id: str, args: list[Any]) -> None:
        entry = self.update_handlers.get(name)
        self.pending_updates.add(update_id)

        async def run() -> None:
            try:
                if entry is None:
                    raise UpdateRejectedError(f"no update handler {name!r}")
                decoded = _decode_handler_args(entry[0], args, f"update {name!r}")
                result = entry[0](*decoded)
                if asyncio.iscoroutine(result):
                    result = await result
                attrs = {"update_id": update_id, "result": to_jsonable(result)}
            except (_Suspend, ContinueAsNew):
                raise
            except Exception as exc:
                attrs = {"update_id": update_id, "error": failure_to_dict(exc)}
            self.pending_updates.discard(update_id)
            if not self.closed:
                self.issue(
                    Command(event_type=EventType.UPDATE_COMPLETED, name=name, attributes=attrs)
                )

        self.loop.create_task(run())

    async def _run_main(self, raw_args: list[Any]) -> None:
        try:
            args = self.defn.signature.decode_args(raw_args, kind="workflow")
            # Only the workflow's own code holds its context: a runner that kept it too
            # would form a cycle (context -> runner -> context) that outlives the run.
            result = await self.defn.fn(WorkflowContext(self), *args)
        except _Suspend:
            raise
        except ContinueAsNew as can:
            self.issue(
                Command(
                    event_type=EventType.WORKFLOW_CONTINUED_AS_NEW,
                    name=self.defn.name,
                    attributes={"args": can.args_, "new_run_id": self.derived_id("next-run")},
                )
            )
            return
        except asyncio.CancelledError:
            if self.closed:
                raise
            self.issue(
                Command(
                    event_type=EventType.WORKFLOW_CANCELED,
                    name=None,
                    attributes={"reason": self.cancel_reason},
                )
            )
            return
        except NonDeterminismError as exc:
            if self.failure is None:
                self.failure = exc
            raise _Suspend() from exc
        except Exception as exc:
            self._fail(exc)
            return
        try:
            encoded = to_jsonable(result, what=f"result of workflow {self.defn.name!r}")
        except PayloadError as exc:
            self._fail(exc)
            return
        self.issue(
            Command(
                event_type=EventType.WORKFLOW_COMPLETED, name=None, attributes={"result": encoded}
            )
        )

    def _fail(self, exc: BaseException) -> None:
        self.issue(
            Command(
                event_type=EventType.WORKFLOW_FAILED,
                name=None,
                attributes={"error": failure_to_dict(exc)},
            )
        )


def _matches(recorded: HistoryEvent, command: Command) -> bool:
    if recorded.event_type != command.event_type or recorded.name != command.name:
        return False
    if command.event_type == EventType.ACTIVITY_SCHEDULED:
        return bool(
            recorded.attributes.get("activity_type") == command.attributes.get("activity_type")
        )
    return True


def _settle(
    fut: asyncio.Future[Any] | None,
    ok: bool,
    event: HistoryEvent,
    make_error: Callable[[HistoryEvent], BaseException],
) -> None:
    if fut is None or fut.done():
        return
    if ok:
        fut.set_result(event.attributes.get("result"))
    else:
        fut.set_exception(make_error(event))


def _decode_handler_args(handler: Callable[..., Any], args: list[Any], what: str) -> list[Any]:
    """Check and convert handler arguments by its type hints."""
    try:
        signature = Signature(handler, skip_first=False, name=what)
    except (TypeError, ValueError):
        return args
    return signature.decode_args(args, kind="handler")


def _child_error(event: HistoryEvent) -> ChildWorkflowError:
    attrs = event.attributes
    cause = failure_from_dict(attrs["error"]) if attrs.get("error") else None
    return ChildWorkflowError(
        f"child workflow {attrs.get('workflow_id')!r} {attrs.get('status', 'failed')}",
        cause=cause,
        workflow_id=str(attrs.get("workflow_id") or ""),
        run_id=str(attrs.get("run_id") or ""),
        workflow_type=str(event.name or ""),
    )


def _activity_error(event: HistoryEvent) -> ActivityError:
    attrs = event.attributes
    cause = failure_from_dict(attrs["error"]) if attrs.get("error") else None
    activity_type = str(attrs.get("activity_type") or event.name or "")
    if event.event_type == EventType.ACTIVITY_TIMED_OUT:
        message = f"activity {activity_type!r} timed out"
    else:
        message = f"activity {activity_type!r} failed"
    return ActivityError(
        message,
        cause=cause,
        activity_type=activity_type,
        activity_id=int(attrs["activity_id"]),
        attempt=int(attrs.get("attempt") or 0),
    )
