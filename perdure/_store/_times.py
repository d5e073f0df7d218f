"""UTC timestamps as text: SQLite stores them so, PostgreSQL takes them so as parameters.

``datetime.isoformat`` builds its text with a C ``sprintf`` per field (~7k instructions
a call); a step writes several timestamps, and those of steps close together share
their whole second. So the text up to the second is formatted once per second, and
only the microseconds each time.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

_ONE_SECOND = timedelta(seconds=1)
# The last four whole seconds formatted, most recent first: ([start, end), text). A
# step's now and its lease end are two; a burst that crosses a second's edge has the
# seconds on both sides in flight (starts stamped in one, steps in the next): four.
_seconds: tuple[tuple[datetime, datetime, str], ...] = ()


def whole_second(utc: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` of ``utc`` (a datetime in ``UTC``)."""
    global _seconds
    for cached in _seconds:
        if cached[0] <= utc < cached[1]:
            return cached[2]
    start = utc.replace(microsecond=0)
    text = start.isoformat(timespec="seconds")[:-6]  # drop "+00:00"
    # (The last second of year 9999 has no end to cache: it is formatted each time.)
    end = start + _ONE_SECOND if start.year < 9999 else start
    _seconds = ((start, end, text), *_seconds[:3])
    return text


def iso(value: datetime) -> str:
    """``value.isoformat()``, always with microseconds (PostgreSQL reads both forms)."""
    if value.tzinfo is not UTC:
        return value.isoformat()
    return f"{whole_second(value)}.{value.microsecond:06d}+00:00"


def parse(text: str) -> datetime:
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    value = datetime.fromisoformat(text.replace(" ", "T"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parse_opt(text: str | None) -> datetime | None:
    return None if text is None else parse(text)
