"""History events: the append-only record from which every run is rebuilt.

Events come in two kinds. *Command* events are written because workflow code
asked for something (schedule an activity, start a timer, complete); on replay
the code must ask for the same things in the same order. *Input* events are
what the outside world told the run (an activity completed, a timer fired, a
signal arrived); on replay they are fed back in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final


class EventType:
    """The event types, as the history's ``event_type`` column holds them.

    Plain strings, not an enum: in Python 3.11 every ``EventType.X`` of an enum goes
    through its metaclass's ``__getattr__`` hook (the hot path names several a step),
    and ``sqlite3`` binds a ``str`` subclass by a slower adaptation path.
    """

    WORKFLOW_STARTED: Final = "workflow_started"
    ACTIVITY_SCHEDULED: Final = "activity_scheduled"
    ACTIVITY_COMPLETED: Final = "activity_completed"
    ACTIVITY_FAILED: Final = "activity_failed"
    ACTIVITY_TIMED_OUT: Final = "activity_timed_out"
    ACTIVITY_CANCELED: Final = "activity_canceled"
    TIMER_STARTED: Final = "timer_started"
    TIMER_FIRED: Final = "timer_fired"
    TIMER_CANCELED: Final = "timer_canceled"
    SIGNAL_RECEIVED: Final = "signal_received"
    UPDATE_ACCEPTED: Final = "update_accepted"
    UPDATE_COMPLETED: Final = "update_completed"
    CHILD_STARTED: Final = "child_started"
    CHILD_COMPLETED: Final = "child_completed"
    CHILD_FAILED: Final = "child_failed"
    MARKER_RECORDED: Final = "marker_recorded"
    SEARCH_ATTRIBUTES_UPSERTED: Final = "search_attributes_upserted"
    CANCEL_REQUESTED: Final = "cancel_requested"
    WORKFLOW_COMPLETED: Final = "workflow_completed"
    WORKFLOW_FAILED: Final = "workflow_failed"
    WORKFLOW_CANCELED: Final = "workflow_canceled"
    WORKFLOW_TERMINATED: Final = "workflow_terminated"
    WORKFLOW_CONTINUED_AS_NEW: Final = "workflow_continued_as_new"


COMMAND_EVENTS = frozenset(
    {
        EventType.ACTIVITY_SCHEDULED,
        EventType.ACTIVITY_CANCELED,
        EventType.TIMER_STARTED,
        EventType.TIMER_CANCELED,
        EventType.CHILD_STARTED,
        EventType.MARKER_RECORDED,
        EventType.SEARCH_ATTRIBUTES_UPSERTED,
        EventType.UPDATE_COMPLETED,
        EventType.WORKFLOW_COMPLETED,
        EventType.WORKFLOW_FAILED,
        EventType.WORKFLOW_CANCELED,
        EventType.WORKFLOW_CONTINUED_AS_NEW,
    }
)

TERMINAL_EVENTS = frozenset(
    {
        EventType.WORKFLOW_COMPLETED,
        EventType.WORKFLOW_FAILED,
        EventType.WORKFLOW_CANCELED,
        EventType.WORKFLOW_TERMINATED,
        EventType.WORKFLOW_CONTINUED_AS_NEW,
    }
)


@dataclass(frozen=True, kw_only=True, slots=True)
class HistoryEvent:
    """One recorded event of a run, as ``handle.history()`` returns it."""

    seq: int
    event_type: str
    name: str | None
    attributes: dict[str, Any]
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "event_type": self.event_type,
            "name": self.name,
            "attributes": self.attributes,
            "created_at": self.created_at.isoformat(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HistoryEvent:
        return cls(
            seq=int(data["seq"]),
            event_type=str(data["event_type"]),
            name=data.get("name"),
            attributes=dict(data.get("attributes") or {}),
            created_at=datetime.fromisoformat(data["created_at"]),
        )


@dataclass(kw_only=True, slots=True)
class Command:
    """An event the workflow code asked for, not yet numbered or stored."""

    event_type: str
    name: str | None
    attributes: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.event_type}({self.name!r})"


def describe_event(event: HistoryEvent) -> str:
    return f"{event.event_type}({event.name!r})"
