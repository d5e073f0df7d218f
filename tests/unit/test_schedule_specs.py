"""Schedule specs as pure functions: next fire times (cron, DST, intervals), jitter, decisions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from perdure._schedules import (
    decide_fires,
    due_time,
    fire_workflow_id,
    jitter_delay,
    next_fire_after,
    next_fire_times,
    parse_spec,
)
from perdure._store._base import ScheduleRecord

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def _cron(expr: str, tz: str = "UTC") -> dict[str, Any]:
    return parse_spec(cron=expr, interval=None, timezone=tz, jitter=None)


def test_cron_next_fire_in_utc() -> None:
    spec = _cron("0 9 * * *")
    after = datetime(2026, 5, 1, 8, 59, 59, tzinfo=UTC)
    assert next_fire_after(spec, after) == datetime(2026, 5, 1, 9, tzinfo=UTC)
    # strictly after: a fire time itself is not returned again
    assert next_fire_after(spec, datetime(2026, 5, 1, 9, tzinfo=UTC)) == datetime(
        2026, 5, 2, 9, tzinfo=UTC
    )
    assert next_fire_times(_cron("*/15 * * * *"), datetime(2026, 5, 1, tzinfo=UTC), 3) == [
        datetime(2026, 5, 1, 0, m, tzinfo=UTC) for m in (15, 30, 45)
    ]


def test_cron_in_a_timezone_keeps_local_time_across_dst() -> None:
    spec = _cron("0 9 * * *", "Europe/Berlin")
    # Berlin moves from UTC+1 to UTC+2 on 2026-03-29.
    times = next_fire_times(spec, datetime(2026, 3, 27, 12, tzinfo=UTC), 3)
    assert times == [
        datetime(2026, 3, 28, 8, tzinfo=UTC),  # 09:00 CET
        datetime(2026, 3, 29, 7, tzinfo=UTC),  # 09:00 CEST
        datetime(2026, 3, 30, 7, tzinfo=UTC),
    ]
    assert all(t.astimezone(BERLIN).hour == 9 for t in times)
    # And back on 2026-10-25 (New York: 2026-11-01).
    ny = next_fire_times(
        _cron("30 8 * * *", "America/New_York"), datetime(2026, 10, 31, tzinfo=UTC), 2
    )
    assert ny == [
        datetime(2026, 10, 31, 12, 30, tzinfo=UTC),
        datetime(2026, 11, 1, 13, 30, tzinfo=UTC),
    ]


def test_cron_time_skipped_by_dst_fires_once() -> None:
    # 02:30 does not exist in Berlin on 2026-03-29; the fire still happens that day, once.
    spec = _cron("30 2 * * *", "Europe/Berlin")
    times = next_fire_times(spec, datetime(2026, 3, 28, 12, tzinfo=UTC), 3)
    days = [t.astimezone(BERLIN).date().day for t in times]
    assert days == [29, 30, 31]
    assert times == sorted(set(times))


def test_cron_time_repeated_by_dst_fires_once() -> None:
    # 02:30 happens twice in Berlin on 2026-10-25; a daily 02:30 fires once that day.
    spec = _cron("30 2 * * *", "Europe/Berlin")
    times = next_fire_times(spec, datetime(2026, 10, 24, 12, tzinfo=UTC), 3)
    assert times == [
        datetime(2026, 10, 25, 0, 30, tzinfo=UTC),  # 02:30 CEST
        datetime(2026, 10, 26, 1, 30, tzinfo=UTC),  # 02:30 CET
        datetime(2026, 10, 27, 1, 30, tzinfo=UTC),
    ]


def test_interval_fires_on_multiples_since_the_epoch() -> None:
    spec = parse_spec(cron=None, interval="1h", timezone=None, jitter=None)
    assert spec == {"interval": 3600.0, "jitter": 0.0}
    after = datetime(2026, 5, 1, 10, 17, 3, tzinfo=UTC)
    assert next_fire_after(spec, after) == datetime(2026, 5, 1, 11, tzinfo=UTC)
    assert next_fire_after(spec, datetime(2026, 5, 1, 11, tzinfo=UTC)) == datetime(
        2026, 5, 1, 12, tzinfo=UTC
    )
    one_s = parse_spec(cron=None, interval="1s", timezone=None, jitter=None)
    assert next_fire_after(one_s, datetime(2026, 5, 1, 0, 0, 0, 500000, tzinfo=UTC)) == datetime(
        2026, 5, 1, 0, 0, 1, tzinfo=UTC
    )


def test_fire_workflow_id() -> None:
    fire = datetime(2026, 5, 1, 11, 0, 0, tzinfo=UTC)
    assert fire_workflow_id("cleanup", fire) == "cleanup-2026-05-01T11:00:00Z"
    assert fire_workflow_id("x", fire.astimezone(BERLIN)) == "x-2026-05-01T11:00:00Z"


def test_jitter_is_deterministic_and_in_range() -> None:
    fire = datetime(2026, 5, 1, 11, tzinfo=UTC)
    delays = [jitter_delay("cleanup", fire + timedelta(hours=h), 300.0) for h in range(200)]
    assert all(timedelta(0) <= d < timedelta(seconds=300) for d in delays)
    assert len(set(delays)) > 150  # spread out, not one value
    again = [jitter_delay("cleanup", fire + timedelta(hours=h), 300.0) for h in range(200)]
    assert delays == again  # every worker computes the same delay
    assert jitter_delay("other", fire, 300.0) != jitter_delay("cleanup", fire, 300.0)
    assert jitter_delay("cleanup", fire, 0.0) == timedelta(0)
    spec = parse_spec(cron=None, interval="1h", timezone=None, jitter="5m")
    assert due_time("cleanup", spec, fire) == fire + jitter_delay("cleanup", fire, 300.0)


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"cron": "0 25 * * *"}, "0 25 * * *"),
        ({"cron": "* * *"}, "* * *"),
        ({"cron": ""}, "''"),
        ({"cron": "0 9 * * *", "timezone": "Nowhere/Land"}, "Nowhere/Land"),
        ({"interval": "0.5s"}, "0.5s"),
        ({"interval": "1x"}, "1x"),
        ({"interval": "1h", "jitter": "-1s"}, "-1s"),
        ({"interval": "1h", "cron": "* * * * *"}, "exactly one"),
    ],
)
def test_bad_specs(kwargs: dict[str, Any], bad: str) -> None:
    args: dict[str, Any] = {"cron": None, "interval": None, "timezone": None, "jitter": None}
    with pytest.raises(ValueError) as err:
        parse_spec(**{**args, **kwargs})
    assert bad in str(err.value)


def _record(overlap: str, **changes: Any) -> ScheduleRecord:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    fields: dict[str, Any] = {
        "namespace": "default",
        "schedule_id": "s",
        "workflow_type": "wf",
        "task_queue": "default",
        "args": [],
        "spec": {"interval": 3600.0, "jitter": 0.0},
        "overlap": overlap,
        "catchup_window": 86400.0,
        "paused": False,
        "next_fire_at": t0,
        "due_at": t0,
        "last_fire_at": None,
        "last_run_id": None,
        "buffered_fire_at": None,
        "recent_runs": [],
        "created_at": t0,
        "updated_at": t0,
    }
    fields.update(changes)
    return ScheduleRecord(**fields)


def _running(rec: ScheduleRecord) -> ScheduleRecord:
    entry = {
        "workflow_id": "s-old",
        "run_id": "r-old",
        "fire_time": "2025-12-31T23:00:00Z",
        "started_at": "2025-12-31T23:00:00+00:00",
        "trigger": "schedule",
    }
    return _replace(rec, last_run_id="r-old", recent_runs=[entry])


def _replace(rec: ScheduleRecord, **changes: Any) -> ScheduleRecord:
    fields = {f: getattr(rec, f) for f in rec.__slots__}  # type: ignore[attr-defined]
    fields.update(changes)
    return ScheduleRecord(**fields)


NOW = datetime(2026, 1, 1, 2, 30, tzinfo=UTC)  # three fires due: 00:00, 01:00, 02:00


def test_decide_nothing_before_the_fire_is_due() -> None:
    assert decide_fires(_record("skip"), None, datetime(2025, 12, 31, 23, tzinfo=UTC)) is None
    assert decide_fires(_record("skip", paused=True), None, NOW) is None


@pytest.mark.parametrize(
    ("overlap", "running", "started", "buffered", "cancels"),
    [
        ("allow_all", False, ["00", "01", "02"], None, []),
        ("allow_all", True, ["00", "01", "02"], None, []),
        ("skip", False, ["00"], None, []),
        ("skip", True, [], None, []),
        ("buffer_one", False, ["00"], "01", []),
        ("buffer_one", True, [], "00", []),
        ("cancel_other", False, ["02"], None, []),
        ("cancel_other", True, [], "02", [("s-old", "r-old")]),
    ],
)
def test_overlap_policies(
    overlap: str, running: bool, started: list[str], buffered: str | None, cancels: list[Any]
) -> None:
    rec = _record(overlap)
    status = None
    if running:
        rec, status = _running(rec), "running"
    change = decide_fires(rec, status, NOW)
    assert change is not None
    assert [r.workflow_id for r in change.starts] == [f"s-2026-01-01T{h}:00:00Z" for h in started]
    assert all(r.id_reuse_policy == "reject_duplicate" for r in change.starts)
    want = None if buffered is None else datetime(2026, 1, 1, int(buffered), tzinfo=UTC)
    assert change.buffered_fire_at == want
    assert change.cancels == cancels
    assert change.next_fire_at == datetime(2026, 1, 1, 3, tzinfo=UTC)
    assert change.last_fire_at == datetime(2026, 1, 1, 2, tzinfo=UTC)


def test_a_buffered_fire_starts_when_the_run_has_ended() -> None:
    rec = _running(_record("buffer_one"))
    rec = _replace(
        rec,
        buffered_fire_at=datetime(2026, 1, 1, tzinfo=UTC),
        next_fire_at=datetime(2026, 1, 1, 3, tzinfo=UTC),
        due_at=datetime(2026, 1, 1, 3, tzinfo=UTC),
    )
    assert decide_fires(rec, "running", NOW) is None  # still running: nothing to do
    change = decide_fires(rec, "completed", NOW)
    assert change is not None
    assert [r.workflow_id for r in change.starts] == ["s-2026-01-01T00:00:00Z"]
    assert change.buffered_fire_at is None


def test_catch_up_window_skips_old_fires() -> None:
    rec = _record("allow_all", catchup_window=5400.0)  # 90 minutes
    change = decide_fires(rec, None, NOW)
    assert change is not None
    # 00:00 is 150 minutes late, 01:00 is 90 (inside), 02:00 is 30.
    assert [r.workflow_id for r in change.starts] == [
        "s-2026-01-01T01:00:00Z",
        "s-2026-01-01T02:00:00Z",
    ]
