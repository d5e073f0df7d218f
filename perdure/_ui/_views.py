"""What the web UI's pages show, shaped from store records: pure functions, no I/O."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from perdure._history import EventType, HistoryEvent
from perdure._present import error_summary, fmt_time, summarize_attributes

EVENTS_PER_PAGE = 500

_EVENT_TONES = {
    EventType.WORKFLOW_COMPLETED: "good",
    EventType.ACTIVITY_COMPLETED: "good",
    EventType.CHILD_COMPLETED: "good",
    EventType.WORKFLOW_FAILED: "bad",
    EventType.WORKFLOW_TERMINATED: "bad",
    EventType.ACTIVITY_FAILED: "bad",
    EventType.ACTIVITY_TIMED_OUT: "bad",
    EventType.CHILD_FAILED: "bad",
    EventType.WORKFLOW_CANCELED: "warn",
    EventType.CANCEL_REQUESTED: "warn",
    EventType.SIGNAL_RECEIVED: "note",
    EventType.UPDATE_ACCEPTED: "note",
}


def pretty(value: Any) -> str:
    """JSON as people read it: indented, non-ASCII left as is."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


@dataclass(frozen=True, slots=True)
class EventRow:
    seq: int
    event_type: str
    name: str
    at: str
    elapsed: str
    summary: str
    details: str
    tone: str
    link_workflow_id: str | None = None
    link_run_id: str | None = None


def event_rows(events: list[HistoryEvent]) -> list[EventRow]:
    """One row per event: time since the run started, a summary, the whole attributes."""
    start = events[0].created_at if events else None
    rows = []
    for event in events:
        attrs = event.attributes
        linked = event.event_type in (EventType.CHILD_STARTED, EventType.CHILD_COMPLETED)
        rows.append(
            EventRow(
                seq=event.seq,
                event_type=event.event_type,
                name=event.name or "",
                at=fmt_time(event.created_at),
                elapsed=f"+{(event.created_at - start).total_seconds():.3f}s" if start else "",
                summary=summarize_attributes(event),
                details=pretty(attrs) if attrs else "",
                tone=_EVENT_TONES.get(event.event_type, ""),
                link_workflow_id=attrs.get("workflow_id") if linked else None,
                link_run_id=attrs.get("run_id") if linked else None,
            )
        )
    return rows


@dataclass(slots=True)
class Pending:
    """What a running run is waiting on, read off its history."""

    activities: dict[int, dict[str, Any]] = field(default_factory=dict)
    timers: dict[int, dict[str, Any]] = field(default_factory=dict)
    children: dict[int, dict[str, Any]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.activities or self.timers or self.children)


_OPENS = {
    EventType.ACTIVITY_SCHEDULED: ("activities", "activity_id"),
    EventType.TIMER_STARTED: ("timers", "timer_id"),
    EventType.CHILD_STARTED: ("children", "child_id"),
}
_CLOSES = {
    EventType.ACTIVITY_COMPLETED: ("activities", "activity_id"),
    EventType.ACTIVITY_FAILED: ("activities", "activity_id"),
    EventType.ACTIVITY_TIMED_OUT: ("activities", "activity_id"),
    EventType.ACTIVITY_CANCELED: ("activities", "activity_id"),
    EventType.TIMER_FIRED: ("timers", "timer_id"),
    EventType.TIMER_CANCELED: ("timers", "timer_id"),
    EventType.CHILD_COMPLETED: ("children", "child_id"),
    EventType.CHILD_FAILED: ("children", "child_id"),
}


def pending(events: list[HistoryEvent]) -> Pending:
    """Activities, timers and children started and not yet resolved."""
    found = Pending()
    for event in events:
        if event.event_type in _OPENS:
            kind, key = _OPENS[event.event_type]
            getattr(found, kind)[event.attributes.get(key)] = {
                "name": event.name or "",
                "since": fmt_time(event.created_at),
                "fire_at": _when(event.attributes.get("fire_at")),
                "workflow_id": event.attributes.get("workflow_id"),
            }
        elif event.event_type in _CLOSES:
            kind, key = _CLOSES[event.event_type]
            getattr(found, kind).pop(event.attributes.get(key), None)
    return found


def _when(value: Any) -> str:
    """A recorded ISO time (a timer's ``fire_at``) as the UI prints times."""
    if not isinstance(value, str):
        return ""
    try:
        return fmt_time(datetime.fromisoformat(value))
    except ValueError:
        return value


def error_lines(error: Any) -> list[str]:
    """An error dict and its cause chain, one line each (type: message)."""
    lines: list[str] = []
    while isinstance(error, dict) and len(lines) < 20:
        lines.append(f"{error.get('type', 'Error')}: {error.get('message', '')}")
        error = error.get("cause")
    if error is not None and not lines:
        lines.append(error_summary(error))
    return lines


def page_of(rows: list[EventRow], page: int) -> tuple[list[EventRow], int, int]:
    """The events of one page (1-based, clamped), that page, and the number of pages."""
    pages = max(1, -(-len(rows) // EVENTS_PER_PAGE))
    page = min(max(page, 1), pages)
    start = (page - 1) * EVENTS_PER_PAGE
    return rows[start : start + EVENTS_PER_PAGE], page, pages
