"""When a write may skip the event loop, and how often it must let the loop turn anyway.

Both stores send a write that nothing could join straight from the caller's task (no
callback in between). Such a caller may then never yield: a sequential workflow's steps
would hold the loop for the whole run, starving timers and lease renewals.
"""

from __future__ import annotations

import asyncio
import time

# How long back-to-back direct writes may keep the loop from turning (a turn per write
# would cost a sequential workflow ~6% of its steps/s).
YIELD_EVERY = 0.005


def nothing_else_ready(loop: asyncio.AbstractEventLoop) -> bool:
    """No callback waits to run in this turn of the loop or the next (asyncio's own
    loops keep them in ``_ready``; for another loop, assume there may be some)."""
    ready = getattr(loop, "_ready", None)
    return ready is not None and not ready


class Turns:
    """Says when a run of direct writes has kept the loop from turning long enough."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last = 0.0

    def due(self) -> bool:
        """True at most every ``YIELD_EVERY`` seconds: the caller must let the loop turn."""
        now = time.monotonic()
        if now - self._last >= YIELD_EVERY:
            self._last = now
            return True
        return False
