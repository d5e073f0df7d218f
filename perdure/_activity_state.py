"""Per-attempt state of a running activity, reached through a context variable."""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True, kw_only=True, slots=True)
class ActivityInfo:
    """What an activity knows about itself: ``perdure.activity.info()``."""

    namespace: str
    workflow_id: str
    run_id: str
    workflow_type: str
    activity_id: int
    activity_type: str
    attempt: int
    task_queue: str
    scheduled_at: datetime
    started_at: datetime
    heartbeat_details: tuple[Any, ...]

    @property
    def idempotency_key(self) -> str:
        """Stable across attempts and workers: use it to make side effects idempotent."""
        return f"{self.run_id}/{self.activity_id}"


class ActivityState:
    __slots__ = ("_info", "_make_info", "cancelled", "details", "dirty", "last_heartbeat")

    def __init__(
        self, make_info: Callable[[], ActivityInfo], heartbeat_details: tuple[Any, ...]
    ) -> None:
        # Most activities never ask for their info: it is built on first use.
        self._make_info = make_info
        self._info: ActivityInfo | None = None
        self.details = heartbeat_details
        self.last_heartbeat = time.monotonic()
        self.cancelled = False
        self.dirty = False

    @property
    def info(self) -> ActivityInfo:
        if self._info is None:
            self._info = self._make_info()
        return self._info

    def heartbeat(self, details: tuple[Any, ...]) -> None:
        self.last_heartbeat = time.monotonic()
        if details:
            self.details = details
            self.dirty = True


current: contextvars.ContextVar[ActivityState] = contextvars.ContextVar("perdure_activity")


def state() -> ActivityState:
    try:
        return current.get()
    except LookupError:
        raise RuntimeError("not inside a perdure activity") from None
