"""Functions for use inside activities.

>>> @app.activity(heartbeat_timeout="30s")
... def copy_files(paths: list[str]) -> int:
...     start = perdure.activity.info().heartbeat_details[0] if ... else 0
...     for i, path in enumerate(paths[start:], start):
...         perdure.activity.heartbeat(i)
"""

from __future__ import annotations

from typing import Any

from perdure._activity_state import ActivityInfo, state

__all__ = ["ActivityInfo", "heartbeat", "info", "is_cancelled"]


def info() -> ActivityInfo:
    """Facts about the current attempt (workflow and run ids, attempt, heartbeat details)."""
    return state().info


def heartbeat(*details: Any) -> None:
    """Report progress; ``details`` reach the next attempt as ``info().heartbeat_details``."""
    state().heartbeat(details)


def is_cancelled() -> bool:
    """True once the activity was canceled or timed out: stop and clean up."""
    return state().cancelled
