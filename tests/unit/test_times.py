"""Timestamp text from the whole-second cache: SQLite's stored form and PostgreSQL's
parameters equal plain ``isoformat`` (and read back as the same instant)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

from perdure._store._sqlite_tx import fmt, fmt_once
from perdure._store._times import iso


def reference(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def random_times(seed: int, count: int = 5000) -> list[datetime]:
    """UTC times spread over every year ``datetime`` can hold."""
    rng = random.Random(seed)
    base = datetime(1, 1, 1, tzinfo=UTC)
    span = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - base).total_seconds()
    return [base + timedelta(seconds=rng.uniform(0, span)) for _ in range(count)]


def test_cached_formatting_matches_isoformat_on_random_times() -> None:
    for value in random_times(5):
        assert fmt_once(value) == reference(value)
        assert fmt(value) == reference(value)


def test_times_close_together_hit_and_leave_the_cache_correctly() -> None:
    now = datetime(2026, 11, 26, 11, 59, 59, 999_990, tzinfo=UTC)
    lease = now + timedelta(seconds=30)
    for i in range(40):  # a step's now and its lease end alternate, across second edges
        for value in (now + timedelta(microseconds=i), lease + timedelta(microseconds=i)):
            assert fmt_once(value) == reference(value)


def test_edges_and_other_offsets() -> None:
    values = [
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(2024, 2, 29, 23, 59, 59, 500_000, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2026, 11, 26, 12, 0, 0, 1, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2026, 11, 26, 1, 0, 0, 0, tzinfo=timezone(timedelta(hours=-8))),
    ]
    for value in values + values:  # twice: formatted, then from the cache
        assert fmt_once(value) == reference(value)
        assert fmt(value) == reference(value)


def test_a_burst_across_a_second_edge_keeps_its_four_seconds_cached() -> None:
    """Starts stamped just before a second's edge and steps just after it, each with a
    lease 30 s on: four seconds in flight, formatted correctly and each once."""
    from perdure._store import _times

    edge = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
    seconds = [edge - timedelta(microseconds=10), edge, edge + timedelta(seconds=29), edge]
    seconds[3] += timedelta(seconds=30)
    for i in range(3):
        for value in seconds:
            value += timedelta(microseconds=i)
            assert fmt_once(value) == reference(value)
    cached = {start for start, _, _ in _times._seconds}
    assert cached == {v.replace(microsecond=0) for v in seconds}


def test_postgres_utc_times_match_isoformat_with_microseconds() -> None:
    for value in random_times(7):
        assert iso(value) == value.isoformat(timespec="microseconds")
        assert datetime.fromisoformat(iso(value)) == value


def test_postgres_whole_seconds_and_other_offsets_read_back_as_the_same_instant() -> None:
    values = [
        datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC),  # isoformat drops ".000000" here
        datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2026, 11, 27, 12, 0, 0, 5, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2026, 11, 27, 1, 0, 0, 0, tzinfo=timezone(timedelta(hours=-8))),
    ]
    for value in values + values:  # twice: formatted, then from the cache
        assert datetime.fromisoformat(iso(value)) == value
    assert iso(values[0]) == "2026-11-27T12:00:00.000000+00:00"
    assert iso(values[3]) == values[3].isoformat()
