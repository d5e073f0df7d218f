"""A probe for whether the event loop turns: a timer task counting its 1 ms ticks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Ticks:
    count = 0


@asynccontextmanager
async def ticking() -> AsyncIterator[Ticks]:
    """A task that sleeps 1 ms and counts, again and again. A timer is never in the
    loop's ready queue when a write is submitted, so it does not stop writes going
    direct; it ticks only when the loop turns."""
    ticks = Ticks()
    done = False

    async def ticker() -> None:
        while not done:
            await asyncio.sleep(0.001)
            ticks.count += 1

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    try:
        yield ticks
    finally:
        done = True
        await task
