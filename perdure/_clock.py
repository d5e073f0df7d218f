"""Workflow time: the wall clock, or a clock that tests can skip forward."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class Clock:
    """Wall-clock UTC time plus an offset that only time-skipping ever moves."""

    def __init__(self, *, skipping: bool = False) -> None:
        self.skipping = skipping
        self._offset = timedelta(0)

    def now(self) -> datetime:
        if not self.skipping:
            return datetime.now(UTC)
        return datetime.now(UTC) + self._offset

    def advance_to(self, moment: datetime) -> None:
        """Jump forward so that ``now()`` is at least ``moment`` (never backward)."""
        gap = moment - self.now()
        if gap > timedelta(0):
            self._offset += gap
