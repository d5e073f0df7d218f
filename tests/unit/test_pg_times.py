"""The PostgreSQL store's timestamp parameters: the cached text reads back as the time."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

from perdure._store._times import iso


def test_utc_times_match_isoformat_with_microseconds() -> None:
    rng = random.Random(7)
    base = datetime(1, 1, 1, tzinfo=UTC)
    span = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - base).total_seconds()
    for _ in range(5000):
        value = base + timedelta(seconds=rng.uniform(0, span))
        assert iso(value) == value.isoformat(timespec="microseconds")
        assert datetime.fromisoformat(iso(value)) == value


def test_whole_seconds_and_other_offsets_read_back_as_the_same_instant() -> None:
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
