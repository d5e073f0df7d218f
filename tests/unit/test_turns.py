"""When the stores may skip the event loop for a write, and when they must let it turn."""

from __future__ import annotations

import asyncio
import time

from perdure._store._turns import YIELD_EVERY, Turns, nothing_else_ready


def test_loops_without_a_ready_queue_never_go_direct() -> None:
    """Another event loop (uvloop) keeps its callbacks elsewhere: assume some are ready,
    so writes go through the flusher and waits through the loop, as before."""

    class OtherLoop:
        pass

    assert not nothing_else_ready(OtherLoop())  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    try:
        assert nothing_else_ready(loop)
        loop.call_soon(lambda: None)
        assert not nothing_else_ready(loop)
    finally:
        loop.close()


def test_turns_are_due_once_per_period() -> None:
    turns = Turns()
    assert turns.due()  # never turned yet
    assert not turns.due()  # just turned
    time.sleep(YIELD_EVERY * 1.5)
    assert turns.due()
    assert not turns.due()
