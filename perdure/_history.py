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
from enum import StrEnum
from typing import Any


class EventType(StrEnum):
    WORKFLOW_STARTED = "workflow_started"
    ACTIVITY_SCHEDULED = "activity_scheduled"
    ACTIVITY_COMPLETED = "activity_completed"
    ACTIVITY_FAILED = "activity_failed"
    ACTIVITY_TIMED_OUT = "activity_timed_out"
    ACTIVITY_CANCELED = "activity_canceled"
    TIMER_STARTED = "timer_started"
    TIMER_FIRED = "timer_fired"
    TIMER_CANCELED = "timer_canceled"
    SIGNAL_RECEIVED = "signal_received"
    UPDATE_ACCEPTED = "update_accepted"
    UPDATE_COMPLETED = "update_completed"
    CHILD_STARTED = "child_started"
    CHILD_COMPLETED = "child_completed"
    CHILD_FAILED = "child_failed"
    MARKER_RECORDED = "marker_recorded"
    SEARCH_ATTRIBUTES_UPSERTED = "search_attributes_upserted"
    CANCEL_REQUESTED = "cancel_requested"
    WORKFLOW_COMPLETED = "workflow_completed"
    WORKFLOW_FAILED = "workflow_failed"
    WORKFLOW_CANCELED = "workflow_canceled"
    WORKFLOW_TERMINATED = "workflow_terminated"
    WORKFLOW_CONTINUED_AS_NEW = "workflow_continued_as_new"


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
