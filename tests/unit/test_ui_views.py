"""What the web UI reads off a history: pure functions over recorded events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from perdure._history import EventType, HistoryEvent
from perdure._ui import _views

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def history(*events: tuple[str, str | None, dict[str, Any]]) -> list[HistoryEvent]:
    return [
        HistoryEvent(
            seq=i + 1,
            event_type=kind,
            name=name,
            attributes=attrs,
            created_at=T0 + timedelta(milliseconds=250 * i),
        )
        for i, (kind, name, attrs) in enumerate(events)
    ]


def test_pending_lists_what_is_started_and_not_resolved() -> None:
    events = history(
        (EventType.WORKFLOW_STARTED, "order", {"args": []}),
        (EventType.ACTIVITY_SCHEDULED, "charge", {"activity_id": 1}),
        (EventType.ACTIVITY_SCHEDULED, "reserve", {"activity_id": 2}),
        (EventType.ACTIVITY_COMPLETED, "charge", {"activity_id": 1, "result": "ch_1"}),
        (EventType.TIMER_STARTED, "nap", {"timer_id": 3, "fire_at": "2026-11-28T09:00:00+00:00"}),
        (EventType.TIMER_STARTED, None, {"timer_id": 4, "fire_at": "2026-11-27T10:00:00+00:00"}),
        (EventType.TIMER_FIRED, None, {"timer_id": 4}),
        (EventType.CHILD_STARTED, "ship", {"child_id": 5, "workflow_id": "order/ship"}),
    )
    found = _views.pending(events)
    assert list(found.activities) == [2] and found.activities[2]["name"] == "reserve"
    assert list(found.timers) == [3] and found.timers[3]["fire_at"] == "2026-11-28 09:00:00"
    assert found.children[5]["workflow_id"] == "order/ship"
    events += history((EventType.CHILD_FAILED, "ship", {"child_id": 5}))
    assert 5 not in _views.pending(events).children
    assert not _views.pending(history((EventType.WORKFLOW_STARTED, "x", {})))


def test_event_rows_time_summary_and_child_links() -> None:
    rows = _views.event_rows(
        history(
            (EventType.WORKFLOW_STARTED, "order", {"args": [1]}),
            (EventType.CHILD_STARTED, "ship", {"child_id": 1, "workflow_id": "c", "run_id": "r"}),
            (EventType.WORKFLOW_FAILED, None, {"error": {"type": "ValueError", "message": "no"}}),
        )
    )
    assert [r.elapsed for r in rows] == ["+0.000s", "+0.250s", "+0.500s"]
    assert (rows[1].link_workflow_id, rows[1].link_run_id) == ("c", "r")
    assert rows[0].link_workflow_id is None
    assert rows[2].tone == "bad" and "ValueError: no" in rows[2].summary
    assert '"message": "no"' in rows[2].details


def test_error_lines_follow_the_cause_chain() -> None:
    error = {
        "type": "ActivityError",
        "message": "activity charge failed",
        "cause": {"type": "ValueError", "message": "card declined"},
    }
    assert _views.error_lines(error) == [
        "ActivityError: activity charge failed",
        "ValueError: card declined",
    ]


def test_pages_are_clamped() -> None:
    rows = _views.event_rows(
        history(*[(EventType.TIMER_FIRED, None, {"timer_id": i}) for i in range(1201)])
    )
    shown, page, pages = _views.page_of(rows, 9)
    assert (len(shown), page, pages) == (201, 3, 3)
    shown, page, pages = _views.page_of(rows, 0)
    assert (len(shown), page, shown[0].seq) == (500, 1, 1)
    assert _views.page_of([], 1) == ([], 1, 1)
