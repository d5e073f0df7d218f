"""The SQLite store's timestamp text: the cached formatter equals plain ``isoformat``."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

from perdure._store._sqlite_tx import fmt, fmt_once


def reference(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def test_cached_formatting_matches_isoformat_on_random_times() -> None:
    rng = random.Random(5)
    base = datetime(1, 1, 1, tzinfo=UTC)
    span = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - base).total_seconds()
    for _ in range(5000):
        value = base + timedelta(seconds=rng.uniform(0, span))
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
