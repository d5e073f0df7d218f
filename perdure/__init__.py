"""perdure: durable execution for Python that needs nothing but a SQL database."""

from perdure import activity, testing
from perdure._app import App
from perdure._client import WorkflowDescription, WorkflowHandle, WorkflowStatus
from perdure._errors import (
    ActivityError,
    ApplicationError,
    CancelledError,
    ChildWorkflowError,
    NonDeterminismError,
    QueryFailedError,
    QueryRejectedError,
    ScheduleNotFoundError,
    TerminatedError,
    TimeoutError,
    UpdateFailedError,
    UpdateRejectedError,
    WorkflowAlreadyStartedError,
    WorkflowFailedError,
    WorkflowNotFoundError,
)
from perdure._history import HistoryEvent
from perdure._retry import RetryPolicy
from perdure._schedules import ScheduleDescription, ScheduleHandle
from perdure._telemetry import Telemetry
from perdure._workflow._context import WorkflowContext
from perdure._workflow._runner import WorkflowInfo

__version__ = "0.1.0"

__all__ = [
    "ActivityError",
    "App",
    "ApplicationError",
    "CancelledError",
    "ChildWorkflowError",
    "HistoryEvent",
    "NonDeterminismError",
    "QueryFailedError",
    "QueryRejectedError",
    "RetryPolicy",
    "ScheduleDescription",
    "ScheduleHandle",
    "ScheduleNotFoundError",
    "Telemetry",
    "TerminatedError",
    "TimeoutError",
    "UpdateFailedError",
    "UpdateRejectedError",
    "WorkflowAlreadyStartedError",
    "WorkflowContext",
    "WorkflowDescription",
    "WorkflowFailedError",
    "WorkflowHandle",
    "WorkflowInfo",
    "WorkflowNotFoundError",
    "WorkflowStatus",
    "activity",
    "testing",
]
