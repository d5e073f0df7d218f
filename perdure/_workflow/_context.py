"""WorkflowContext: everything workflow code may do that touches the world."""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import random
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, cast, overload

from perdure._converter import from_jsonable, to_jsonable
from perdure._durations import Duration, to_optional_seconds, to_seconds
from perdure._history import Command, EventType
from perdure._registry import ActivityDefinition, ActivityOptions, activity_definition
from perdure._retry import RetryPolicy

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from perdure._workflow._runner import WorkflowInfo, WorkflowRunner

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_NO_OPTIONS = ActivityOptions()


class ContinueAsNew(BaseException):
    """Raised by ``ctx.continue_as_new``; ends the run and starts the next one."""

    def __init__(self, args: list[Any]) -> None:
        super().__init__()
        self.args_ = args


class _WorkflowLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The workflow's logger: tagged with its ids, and silent while it replays."""

    def __init__(self, runner: WorkflowRunner) -> None:
        info = runner.info
        super().__init__(
            logging.getLogger(f"perdure.workflow.{info.workflow_type}"),
            {"workflow_id": info.workflow_id, "run_id": info.run_id},
        )
        self._runner = runner

    def isEnabledFor(self, level: int) -> bool:
        return not self._runner.replaying and self.logger.isEnabledFor(level)


def _set_result_unless_cancelled(fut: asyncio.Future[Any], result: Any) -> None:
    if not fut.done():
        fut.set_result(result)


class WorkflowContext:
    """Handed to every workflow as its first argument; all awaitables are durable."""

    def __init__(self, runner: WorkflowRunner) -> None:
        self._runner = runner

    @functools.cached_property
    def logger(self) -> logging.LoggerAdapter:  # type: ignore[type-arg]
        """Tagged with the run's ids, silent while it replays (made on first use)."""
        return _WorkflowLogger(self._runner)

    @property
    def info(self) -> WorkflowInfo:
        return self._runner.info

    # -- activities ------------------------------------------------------
    @overload
    async def activity(
        self,
        fn: Callable[..., Awaitable[T]],
        *args: Any,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        start_to_close_timeout: Duration | None = None,
        schedule_to_close_timeout: Duration | None = None,
        heartbeat_timeout: Duration | None = None,
        task_queue: str | None = None,
    ) -> T: ...

    @overload
    async def activity(
        self,
        fn: Callable[..., T],
        *args: Any,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        start_to_close_timeout: Duration | None = None,
        schedule_to_close_timeout: Duration | None = None,
        heartbeat_timeout: Duration | None = None,
        task_queue: str | None = None,
    ) -> T: ...

    @overload
    async def activity(
        self,
        fn: str,
        *args: Any,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        start_to_close_timeout: Duration | None = None,
        schedule_to_close_timeout: Duration | None = None,
        heartbeat_timeout: Duration | None = None,
        task_queue: str | None = None,
    ) -> Any: ...

    async def activity(
        self,
        fn: Any,
        *args: Any,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        start_to_close_timeout: Duration | None = None,
        schedule_to_close_timeout: Duration | None = None,
        heartbeat_timeout: Duration | None = None,
        task_queue: str | None = None,
    ) -> Any:
        """Run an activity and return its result; failures raise ``ActivityError``."""
        runner = self._runner
        defn = self._resolve_activity(fn)
        if (
            retry is None
            and start_to_close_timeout is None
            and schedule_to_close_timeout is None
            and heartbeat_timeout is None
            and task_queue is None
        ):
            options = defn.options if defn else _NO_OPTIONS  # the common call: no overrides
        else:
            overrides = ActivityOptions.build(
                retry=retry,
                start_to_close_timeout=start_to_close_timeout,
                schedule_to_close_timeout=schedule_to_close_timeout,
                heartbeat_timeout=heartbeat_timeout,
                task_queue=task_queue,
            )
            options = overrides.merged_over(defn.options) if defn else overrides
        activity_type = defn.name if defn else str(fn)
        if defn is not None:
            encoded = defn.signature.encode_args(args, kind="activity")
        else:
            encoded = [to_jsonable(a, what=f"argument of activity {activity_type!r}") for a in args]
        activity_id = runner.new_id()
        attributes: dict[str, Any] = {
            "activity_id": activity_id,
            "activity_type": activity_type,
            "args": encoded,
        }
        attributes.update(options.scheduled_attributes())  # only the options set
        runner.issue(
            Command(
                event_type=EventType.ACTIVITY_SCHEDULED,
                name=name or activity_type,
                attributes=attributes,
            )
        )
        fut: asyncio.Future[Any] = runner.loop.create_future()
        runner.pending_activities[activity_id] = fut
        try:
            raw = await fut
        except asyncio.CancelledError:
            if runner.pending_activities.pop(activity_id, None) is not None:
                runner.issue(
                    Command(
                        event_type=EventType.ACTIVITY_CANCELED,
                        name=name or activity_type,
                        attributes={"activity_id": activity_id},
                    )
                )
            raise
        return defn.signature.decode_result(raw) if defn else raw

    def _resolve_activity(self, fn: Any) -> ActivityDefinition | None:
        runner = self._runner
        defn = runner.registry.activity_for(fn)
        if defn is not None or isinstance(fn, str):
            return defn
        if not callable(fn):
            raise TypeError(f"ctx.activity() takes a function or an activity name, not {fn!r}")
        defn = activity_definition(fn, None, ActivityOptions())
        runner.adhoc_activities[defn.name] = defn
        return defn

    # -- timers and time -------------------------------------------------
    async def sleep(self, duration: Duration, name: str | None = None) -> None:
        """A durable timer: survives restarts of every worker."""
        seconds = to_seconds(duration, what="sleep duration")
        runner = self._runner
        fut: asyncio.Future[None] = runner.loop.create_future()
        handle = runner.start_timer(seconds, _set_result_unless_cancelled, (fut, None), None, name)
        try:
            await fut
        except asyncio.CancelledError:
            handle.cancel()
            raise

    def now(self) -> datetime:
        """The workflow's current time (UTC, timezone-aware), the same on every replay."""
        return self._runner.now

    def random(self) -> random.Random:
        """A ``random.Random`` seeded per run: the same sequence on every replay."""
        return self._runner.rng

    def uuid4(self) -> uuid.UUID:
        return uuid.UUID(int=self._runner.rng.getrandbits(128), version=4)

    async def side_effect(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` once and record its value; replays return the recorded value."""
        runner = self._runner
        marker_id = runner.new_id()
        if runner.replaying:
            recorded = runner.issue(
                Command(
                    event_type=EventType.MARKER_RECORDED,
                    name="side_effect",
                    attributes={"kind": "side_effect", "marker_id": marker_id},
                )
            )
            assert recorded is not None
            return cast(T, recorded.attributes.get("value"))
        value = fn()
        runner.issue(
            Command(
                event_type=EventType.MARKER_RECORDED,
                name="side_effect",
                attributes={
                    "kind": "side_effect",
                    "marker_id": marker_id,
                    "value": to_jsonable(value, what="side_effect value"),
                },
            )
        )
        return value

    # -- versioning ------------------------------------------------------
    def patched(self, patch_id: str) -> bool:
        """True for runs that reached this point with the patch deployed."""
        return self._runner.patched(patch_id)

    def deprecate_patch(self, patch_id: str) -> None:
        """Mark a patch as the only path left; old markers still replay."""
        self._runner.patched(patch_id, deprecated=True)

    # -- children, continue-as-new, search attributes --------------------
    async def start_child(
        self,
        workflow: Any,
        *args: Any,
        workflow_id: str | None = None,
        task_queue: str | None = None,
        parent_close_policy: str = "terminate",
        id_reuse_policy: str = "allow_duplicate",
        search_attributes: dict[str, Any] | None = None,
        memo: dict[str, Any] | None = None,
    ) -> ChildWorkflowHandle:
        """Start a child workflow and return its handle once the start is recorded."""
        runner = self._runner
        if parent_close_policy not in PARENT_CLOSE_POLICIES:
            raise ValueError(
                f"parent_close_policy must be one of {', '.join(PARENT_CLOSE_POLICIES)}; "
                f"got {parent_close_policy!r}"
            )
        defn = runner.registry.workflow_for(workflow)
        if defn is None and not isinstance(workflow, str):
            raise ValueError(f"{workflow!r} is not a registered workflow")
        workflow_type = defn.name if defn else str(workflow)
        if defn is not None:
            encoded = defn.signature.encode_args(args, kind="workflow")
        else:
            encoded = [to_jsonable(a, what=f"argument of workflow {workflow_type!r}") for a in args]
        child_id = runner.new_id()
        child_workflow_id = workflow_id or f"{runner.info.workflow_id}/child-{child_id}"
        run_id = runner.derived_id(f"child-{child_id}")
        runner.issue(
            Command(
                event_type=EventType.CHILD_STARTED,
                name=workflow_type,
                attributes={
                    "child_id": child_id,
                    "workflow_id": child_workflow_id,
                    "run_id": run_id,
                    "workflow_type": workflow_type,
                    "args": encoded,
                    "task_queue": task_queue or runner.info.task_queue,
                    "parent_close_policy": parent_close_policy,
                    "id_reuse_policy": id_reuse_policy,
                    "search_attributes": to_jsonable(search_attributes or {}),
                    "memo": to_jsonable(memo or {}),
                },
            )
        )
        fut: asyncio.Future[Any] = runner.loop.create_future()
        runner.pending_children[child_id] = fut
        runner.children_started += 1
        return ChildWorkflowHandle(
            self,
            workflow_id=child_workflow_id,
            run_id=run_id,
            future=fut,
            result_hint=defn.signature.return_hint if defn else None,
        )

    async def execute_child(self, workflow: Any, *args: Any, **options: Any) -> Any:
        """Start a child workflow and wait for its result (``ChildWorkflowError`` on failure)."""
        handle = await self.start_child(workflow, *args, **options)
        return await handle.result()

    def continue_as_new(self, *args: Any) -> NoReturn:
        """End this run and start a fresh one with the same workflow id (never returns)."""
        runner = self._runner
        encoded = runner.defn.signature.encode_args(args, kind="workflow")
        raise ContinueAsNew(encoded)

    def upsert_search_attributes(self, attributes: dict[str, Any]) -> None:
        """Set indexed attributes of this run, visible to list_workflows and plain SQL."""
        if not isinstance(attributes, dict) or not all(isinstance(k, str) for k in attributes):
            raise TypeError("search attributes must be a dict with string keys")
        self._runner.issue(
            Command(
                event_type=EventType.SEARCH_ATTRIBUTES_UPSERTED,
                name=None,
                attributes={"attributes": to_jsonable(attributes, what="search attributes")},
            )
        )

    def _signal_external(
        self,
        kind: str,
        workflow_id: str,
        run_id: str | None,
        name: str | None,
        args: tuple[Any, ...],
    ) -> None:
        self._runner.issue(
            Command(
                event_type=EventType.MARKER_RECORDED,
                name=f"{kind}_child",
                attributes={
                    "kind": f"{kind}_child",
                    "workflow_id": workflow_id,
                    "run_id": run_id,
                    "signal": name,
                    "args": [to_jsonable(a, what=f"argument of signal {name!r}") for a in args],
                },
            )
        )

    # -- signals, queries, conditions ------------------------------------
    async def wait_for_signal(self, name: str, timeout: Duration | None = None) -> Any:
        """The next payload of signal ``name`` (buffered if it came earlier); None on timeout."""
        seconds = to_optional_seconds(timeout, what="timeout")
        runner = self._runner
        buffered = runner.signal_buffer.get(name)
        if buffered:
            return _signal_value(buffered.popleft())
        fut: asyncio.Future[list[Any]] = runner.loop.create_future()
        runner.signal_waiters.setdefault(name, collections.deque()).append(fut)
        if seconds is None:
            return _signal_value(await fut)
        try:
            return _signal_value(await asyncio.wait_for(fut, seconds))
        except TimeoutError:
            return None

    def set_signal_handler(self, name: str, fn: Callable[..., Any]) -> None:
        runner = self._runner
        runner.signal_handlers[name] = fn
        buffered = runner.signal_buffer.pop(name, None)
        while buffered:
            runner.call_handler(fn, buffered.popleft())

    def set_query_handler(self, name: str, fn: Callable[..., Any]) -> None:
        self._runner.query_handlers[name] = fn

    def set_update_handler(
        self,
        name: str,
        fn: Callable[..., Any],
        validator: Callable[..., Any] | None = None,
    ) -> None:
        """Handle ``handle.update(name, ...)``; a raising validator rejects it unrecorded."""
        self._runner.update_handlers[name] = (fn, validator)

    def update_handler(
        self, name: str, validator: Callable[..., Any] | None = None
    ) -> Callable[[F], F]:
        def register(fn: F) -> F:
            self.set_update_handler(name, fn, validator)
            return fn

        return register

    def signal_handler(self, name: str) -> Callable[[F], F]:
        def register(fn: F) -> F:
            self.set_signal_handler(name, fn)
            return fn

        return register

    def query_handler(self, name: str) -> Callable[[F], F]:
        def register(fn: F) -> F:
            self.set_query_handler(name, fn)
            return fn

        return register

    async def wait_condition(self, fn: Callable[[], bool], timeout: Duration | None = None) -> bool:
        """Resume when ``fn()`` is true; False if ``timeout`` passes first."""
        seconds = to_optional_seconds(timeout, what="timeout")

        if fn():
            return True
        fut: asyncio.Future[None] = self._runner.loop.create_future()
        self._runner.conditions.append((fn, fut))
        try:
            await asyncio.wait_for(fut, seconds)
        except TimeoutError:
            return False
        return True


PARENT_CLOSE_POLICIES = ("terminate", "request_cancel", "abandon")


class ChildWorkflowHandle:
    """A started child workflow, as seen from its parent."""

    def __init__(
        self,
        ctx: WorkflowContext,
        *,
        workflow_id: str,
        run_id: str,
        future: asyncio.Future[Any],
        result_hint: Any,
    ) -> None:
        self._ctx = ctx
        self.workflow_id = workflow_id
        self.run_id = run_id
        self._future = future
        self._hint = result_hint

    async def result(self) -> Any:
        raw = await asyncio.shield(self._future)
        return from_jsonable(raw, self._hint, what=f"result of child {self.workflow_id!r}")

    async def signal(self, name: str, *args: Any) -> None:
        self._ctx._signal_external("signal", self.workflow_id, self.run_id, name, args)

    async def cancel(self) -> None:
        self._ctx._signal_external("cancel", self.workflow_id, self.run_id, None, ())


def _signal_value(args: list[Any]) -> Any:
    if not args:
        return None
    if len(args) == 1:
        return args[0]
    return tuple(args)
