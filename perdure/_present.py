"""How runs, events and schedules read to a person: shared by the CLI and the web UI."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from perdure._history import HistoryEvent

# attributes that only repeat what other columns say, or are noise in a summary
_QUIET_ATTRIBUTES = frozenset(
    {
        "workflow_id",
        "run_id",
        "workflow_type",
        "activity_type",
        "activity_id",
        "timer_id",
        "child_id",
        "update_id",
        "retry",
        "fire_at",
    }
)


def message_of(exc: BaseException) -> str:
    """An error's message on one line, or its type's name if it has none."""
    return " ".join(str(exc).split()) or type(exc).__name__


def fmt_time(dt: datetime | None) -> str:
    if dt is None:
        return ""
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_summary(error: Any) -> str:
    """An error dict and up to three of its causes, on one line."""
    if not isinstance(error, dict):
        return short(error)
    parts: list[str] = []
    while isinstance(error, dict) and len(parts) < 4:
        parts.append(f"{error.get('type', 'Error')}: {error.get('message', '')}")
        error = error.get("cause")
    return short(" ← ".join(parts), 100)


def summarize_attributes(event: HistoryEvent) -> str:
    """A short, human summary of an event's attributes."""
    attrs = event.attributes
    bits = []
    for key in ("activity_id", "timer_id", "child_id"):
        if isinstance(attrs.get(key), int):
            bits.append(f"#{attrs[key]}")
    for key, value in attrs.items():
        if value is None or key in _QUIET_ATTRIBUTES or (value in ({}, []) and key != "args"):
            continue
        if key.endswith("timeout") or key in ("parent_workflow_id", "parent_run_id"):
            continue
        if key == "error":
            bits.append(error_summary(value))
        elif key == "duration" and isinstance(value, int | float):
            bits.append(f"duration={value:g}s")
        elif key == "attempt" and value == 1:
            continue
        else:
            bits.append(f"{key}={short(value, 50)}")
    return short("  ".join(bits), 110)


def seconds_text(value: float) -> str:
    """``90`` → ``90s``, ``3600`` → ``1h``: the largest unit that divides it."""
    seconds = float(value)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def spec_text(spec: dict[str, Any]) -> str:
    """A schedule's spec in words: ``cron '0 9 * * *' (UTC), jitter 5m``."""
    if "cron" in spec:
        text = f"cron {spec['cron']!r} ({spec.get('timezone', 'UTC')})"
    else:
        text = f"every {seconds_text(spec['interval'])}"
    if spec.get("jitter"):
        text += f", jitter {seconds_text(spec['jitter'])}"
    return text


def attribute_filter(text: str) -> tuple[str, Any]:
    """A search attribute filter as a person types it, ``KEY=VALUE``: the value is JSON
    when it parses as JSON (``3``, ``true``, ``"42"``, ``{...}``), else the text itself."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"a search attribute filter is KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value
