"""The exception tree, and how failures cross process boundaries.

::

    Exception
     └── PerdureError                      (.message, .cause)
          ├── ApplicationError             user-level failure (.type, .details, .non_retryable)
          ├── ActivityError                an activity failed for good (.cause)
          ├── ChildWorkflowError           a child workflow failed (.cause)
          ├── WorkflowFailedError          handle.result() of a run that did not complete
          ├── CancelledError               cause of a canceled run
          ├── TerminatedError              cause of a terminated run (.reason)
          ├── TimeoutError                 also a builtins.TimeoutError
          ├── NonDeterminismError          code no longer matches the run's history
          ├── WorkflowAlreadyStartedError
          ├── WorkflowNotFoundError
          ├── ScheduleNotFoundError
          ├── QueryRejectedError / QueryFailedError
          └── UpdateRejectedError / UpdateFailedError

A failure is stored as a JSON dict (``failure_to_dict``) and rebuilt with
``failure_from_dict``: perdure's own errors come back as themselves, any other
exception as an ``ApplicationError`` whose ``type`` is the original class name.
"""

from __future__ import annotations

import builtins
import traceback as _tb
from typing import Any


class PerdureError(Exception):
    """Base of perdure's errors; ``cause`` is the underlying error, if any."""

    def __init__(self, message: str = "", *, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.cause = cause
        if cause is not None:
            self.__cause__ = cause

    def __str__(self) -> str:
        return self.message


class ApplicationError(PerdureError):
    """A failure raised by user code, or rebuilt from one that crossed a process boundary."""

    def __init__(
        self,
        message: str,
        *details: Any,
        type: str | None = None,
        non_retryable: bool = False,
        cause: BaseException | None = None,
        traceback: str | None = None,
    ) -> None:
        super().__init__(message, cause=cause)
        self.details = details
        self.type = type or "ApplicationError"
        self.non_retryable = non_retryable
        self.traceback = traceback

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.type != "ApplicationError" else self.message


class ActivityError(PerdureError):
    """An activity failed for good (retries exhausted, non-retryable, timed out or canceled)."""

    def __init__(
        self,
        message: str,
        *,
        cause: BaseException | None = None,
        activity_type: str = "",
        activity_id: int = 0,
        attempt: int = 0,
    ) -> None:
        super().__init__(message, cause=cause)
        self.activity_type = activity_type
        self.activity_id = activity_id
        self.attempt = attempt


class ChildWorkflowError(PerdureError):
    """A child workflow ended without completing."""

    def __init__(
        self,
        message: str,
        *,
        cause: BaseException | None = None,
        workflow_id: str = "",
        run_id: str = "",
        workflow_type: str = "",
    ) -> None:
        super().__init__(message, cause=cause)
        self.workflow_id = workflow_id
        self.run_id = run_id
        self.workflow_type = workflow_type


class WorkflowFailedError(PerdureError):
    """Raised by ``handle.result()`` when the run failed, was canceled or terminated."""

    def __init__(
        self,
        message: str,
        *,
        cause: BaseException | None = None,
        workflow_id: str = "",
        run_id: str = "",
        status: str = "",
    ) -> None:
        super().__init__(message, cause=cause)
        self.workflow_id = workflow_id
        self.run_id = run_id
        self.status = status


class CancelledError(PerdureError):
    """The cause of a canceled run or activity (distinct from ``asyncio.CancelledError``)."""


class TerminatedError(PerdureError):
    """The cause of a terminated run."""

    def __init__(
        self, message: str = "terminated", *, reason: str = "", cause: BaseException | None = None
    ) -> None:
        super().__init__(message, cause=cause)
        self.reason = reason


class TimeoutError(PerdureError, builtins.TimeoutError):
    """A perdure timeout; still catchable as the builtin ``TimeoutError``."""

    def __init__(
        self,
        message: str = "timed out",
        *,
        timeout_type: str = "",
        cause: BaseException | None = None,
    ) -> None:
        super().__init__(message, cause=cause)
        self.timeout_type = timeout_type


class NonDeterminismError(PerdureError):
    """Workflow code issued a command that does not match the run's recorded history."""

    def __init__(
        self,
        message: str,
        *,
        workflow_id: str = "",
        run_id: str = "",
        position: int = 0,
        expected: str = "",
        recorded: str = "",
        cause: BaseException | None = None,
    ) -> None:
        super().__init__(message, cause=cause)
        self.workflow_id = workflow_id
        self.run_id = run_id
        self.position = position
        self.expected = expected
        self.recorded = recorded


class WorkflowAlreadyStartedError(PerdureError):
    """A run with this workflow id is already running (or the reuse policy forbids a new one)."""

    def __init__(
        self,
        message: str,
        *,
        workflow_id: str = "",
        run_id: str = "",
        workflow_type: str = "",
        cause: BaseException | None = None,
    ) -> None:
        super().__init__(message, cause=cause)
        self.workflow_id = workflow_id
        self.run_id = run_id
        self.workflow_type = workflow_type


class WorkflowNotFoundError(PerdureError):
    """No run with this workflow id (and run id) exists."""


class ScheduleNotFoundError(PerdureError):
    """No schedule with this id exists."""


class QueryRejectedError(PerdureError):
    """The workflow has no handler for this query."""


class QueryFailedError(PerdureError):
    """The query handler raised."""


class UpdateRejectedError(PerdureError):
    """The update has no handler, or its validator raised; nothing was recorded."""


class UpdateFailedError(PerdureError):
    """The update handler raised; the workflow goes on."""


_REBUILDABLE: dict[str, type[PerdureError]] = {
    cls.__name__: cls
    for cls in (
        ActivityError,
        ChildWorkflowError,
        CancelledError,
        TerminatedError,
        TimeoutError,
        NonDeterminismError,
        WorkflowFailedError,
        WorkflowAlreadyStartedError,
        QueryRejectedError,
        QueryFailedError,
        UpdateRejectedError,
        UpdateFailedError,
    )
}
_EXTRA_ATTRS = (
    "activity_type",
    "activity_id",
    "attempt",
    "workflow_id",
    "run_id",
    "workflow_type",
    "reason",
    "timeout_type",
    "status",
    "position",
    "expected",
    "recorded",
)


def _jsonable_details(details: tuple[Any, ...]) -> list[Any]:
    from perdure._converter import to_jsonable

    out: list[Any] = []
    for item in details:
        try:
            out.append(to_jsonable(item))
        except TypeError:
            out.append(repr(item))
    return out


def failure_to_dict(exc: BaseException) -> dict[str, Any]:
    """Encode an exception (and its cause chain) as JSON-ready data."""
    data: dict[str, Any] = {
        "type": type(exc).__name__,
        "message": str(exc) if not isinstance(exc, PerdureError) else exc.message,
        "traceback": "".join(_tb.format_exception(type(exc), exc, exc.__traceback__))
        if exc.__traceback__ is not None
        else None,
    }
    if isinstance(exc, ApplicationError):
        data["type"] = exc.type
        data["application"] = True
        data["non_retryable"] = exc.non_retryable
        data["details"] = _jsonable_details(exc.details)
        if exc.traceback and not data["traceback"]:
            data["traceback"] = exc.traceback
    for attr in _EXTRA_ATTRS:
        if isinstance(exc, PerdureError) and hasattr(exc, attr):
            data.setdefault("attrs", {})[attr] = getattr(exc, attr)
    cause = exc.cause if isinstance(exc, PerdureError) else exc.__cause__
    if cause is not None:
        data["cause"] = failure_to_dict(cause)
    return data


def failure_from_dict(data: dict[str, Any]) -> PerdureError:
    """Rebuild an exception stored by ``failure_to_dict``."""
    cause = failure_from_dict(data["cause"]) if data.get("cause") else None
    type_name = str(data.get("type") or "ApplicationError")
    message = str(data.get("message") or "")
    cls = None if data.get("application") else _REBUILDABLE.get(type_name)
    if cls is not None:
        attrs = dict(data.get("attrs") or {})
        exc: PerdureError = cls(message, cause=cause, **attrs)
        return exc
    return ApplicationError(
        message,
        *(data.get("details") or []),
        type=type_name,
        non_retryable=bool(data.get("non_retryable", False)),
        cause=cause,
        traceback=data.get("traceback"),
    )
