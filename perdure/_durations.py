"""Durations as users write them: timedelta, seconds, or "1h30m"-style text."""

from __future__ import annotations

import re
from datetime import timedelta

Duration = timedelta | int | float | str

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def to_seconds(value: Duration, *, what: str = "duration") -> float:
    """Return ``value`` in seconds; raise ``ValueError`` naming the bad text."""
    if isinstance(value, bool):
        raise ValueError(f"malformed {what}: {value!r} (a boolean is not a duration)")
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse(value, what)
    else:
        raise ValueError(
            f"malformed {what}: {value!r} (use a timedelta, seconds, or text like '30s', '1h30m')"
        )
    if seconds != seconds or seconds < 0 or seconds == float("inf"):
        raise ValueError(f"malformed {what}: {value!r} (must be a finite, non-negative duration)")
    return seconds


def to_optional_seconds(value: Duration | None, *, what: str = "duration") -> float | None:
    return None if value is None else to_seconds(value, what=what)


def _parse(text: str, what: str) -> float:
    compact = text.strip().replace(" ", "")
    if not compact:
        raise ValueError(f"malformed {what}: {text!r} (empty)")
    try:
        return float(compact)
    except ValueError:
        pass
    total = 0.0
    pos = 0
    for match in _PART.finditer(compact):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(compact):
        raise ValueError(
            f"malformed {what}: {text!r} (expected text like '500ms', '30s', '5m', '24h', "
            "'7d' or '1h30m')"
        )
    return total
