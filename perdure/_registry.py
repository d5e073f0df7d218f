"""Definitions of registered workflows and activities."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from perdure._converter import Signature
from perdure._durations import Duration, to_optional_seconds
from perdure._retry import RetryPolicy


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkflowDefinition:
    name: str
    fn: Callable[..., Any]
    signature: Signature


@dataclass(frozen=True, kw_only=True, slots=True)
class ActivityOptions:
    """Per-call activity settings; ``None`` fields fall back to the activity's defaults."""

    retry: RetryPolicy | None = None
    start_to_close_timeout: float | None = None
    schedule_to_close_timeout: float | None = None
    heartbeat_timeout: float | None = None
    task_queue: str | None = None

    @classmethod
    def build(
        cls,
        *,
        retry: RetryPolicy | None,
        start_to_close_timeout: Duration | None,
        schedule_to_close_timeout: Duration | None,
        heartbeat_timeout: Duration | None,
        task_queue: str | None,
    ) -> ActivityOptions:
        return cls(
            retry=retry,
            start_to_close_timeout=to_optional_seconds(
                start_to_close_timeout, what="start_to_close_timeout"
            ),
            schedule_to_close_timeout=to_optional_seconds(
                schedule_to_close_timeout, what="schedule_to_close_timeout"
            ),
            heartbeat_timeout=to_optional_seconds(heartbeat_timeout, what="heartbeat_timeout"),
            task_queue=task_queue,
        )

    def scheduled_attributes(self) -> dict[str, Any]:
        """What an ``activity_scheduled`` event records of these options: the ones set.

        An absent key reads as ``None`` (the executing worker's registered default
        applies), as an explicit null did in histories written before: a history row
        the fsync carries is smaller, its B-tree fills (and rebalances) less often.
        """
        out: dict[str, Any] = {}
        if self.task_queue is not None:
            out["task_queue"] = self.task_queue
        if self.retry is not None:
            out["retry"] = self.retry.to_dict()
        if self.start_to_close_timeout is not None:
            out["start_to_close_timeout"] = self.start_to_close_timeout
        if self.schedule_to_close_timeout is not None:
            out["schedule_to_close_timeout"] = self.schedule_to_close_timeout
        if self.heartbeat_timeout is not None:
            out["heartbeat_timeout"] = self.heartbeat_timeout
        return out

    def merged_over(self, base: ActivityOptions) -> ActivityOptions:
        """These options where set (0 included), ``base`` where not."""

        def pick(mine: Any, theirs: Any) -> Any:
            return theirs if mine is None else mine

        return ActivityOptions(
            retry=pick(self.retry, base.retry),
            start_to_close_timeout=pick(self.start_to_close_timeout, base.start_to_close_timeout),
            schedule_to_close_timeout=pick(
                self.schedule_to_close_timeout, base.schedule_to_close_timeout
            ),
            heartbeat_timeout=pick(self.heartbeat_timeout, base.heartbeat_timeout),
            task_queue=pick(self.task_queue, base.task_queue),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class ActivityDefinition:
    name: str
    fn: Callable[..., Any]
    signature: Signature
    options: ActivityOptions
    is_async: bool


def workflow_definition(fn: Callable[..., Any], name: str | None) -> WorkflowDefinition:
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(f"workflow {fn!r} must be an 'async def' function taking ctx first")
    if not inspect.signature(fn).parameters:
        raise TypeError(f"workflow {fn.__qualname__!r} must take a WorkflowContext first")
    name = name or fn.__qualname__
    return WorkflowDefinition(name=name, fn=fn, signature=Signature(fn, skip_first=True, name=name))


def activity_definition(
    fn: Callable[..., Any], name: str | None, options: ActivityOptions
) -> ActivityDefinition:
    if not callable(fn):
        raise TypeError(f"activity {fn!r} is not callable")
    qualname = getattr(fn, "__qualname__", None) or repr(fn)
    name = name or qualname
    return ActivityDefinition(
        name=name,
        fn=fn,
        signature=Signature(fn, skip_first=False, name=name),
        options=options,
        is_async=inspect.iscoroutinefunction(fn),
    )


class Registry:
    """Workflows and activities known to one App, by name and by function."""

    def __init__(self) -> None:
        self.workflows: dict[str, WorkflowDefinition] = {}
        self.activities: dict[str, ActivityDefinition] = {}
        self._wf_by_fn: dict[Any, WorkflowDefinition] = {}
        self._act_by_fn: dict[Any, ActivityDefinition] = {}

    def add_workflow(self, defn: WorkflowDefinition) -> None:
        if defn.name in self.workflows and self.workflows[defn.name].fn is not defn.fn:
            raise ValueError(f"a workflow named {defn.name!r} is already registered")
        self.workflows[defn.name] = defn
        self._wf_by_fn[defn.fn] = defn

    def add_activity(self, defn: ActivityDefinition) -> None:
        if defn.name in self.activities and self.activities[defn.name].fn is not defn.fn:
            raise ValueError(f"an activity named {defn.name!r} is already registered")
        self.activities[defn.name] = defn
        self._act_by_fn[defn.fn] = defn

    def workflow_for(self, wf: Any) -> WorkflowDefinition | None:
        if isinstance(wf, str):
            return self.workflows.get(wf)
        return self._wf_by_fn.get(wf)

    def activity_for(self, fn: Any) -> ActivityDefinition | None:
        if isinstance(fn, str):
            return self.activities.get(fn)
        return self._act_by_fn.get(fn)
