"""UTC timestamps as sortable text, the form SQLite stores them in."""

from __future__ import annotations

from datetime import UTC, datetime

_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def fmt(value: datetime) -> str:
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    # isoformat is far cheaper than strftime; same text as _FORMAT
    return value.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def fmt_opt(value: datetime | None) -> str | None:
    return None if value is None else fmt(value)


def parse(text: str) -> datetime:
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    value = datetime.fromisoformat(text.replace(" ", "T"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parse_opt(text: str | None) -> datetime | None:
    return None if text is None else parse(text)
