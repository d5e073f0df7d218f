"""Helpers shared by the workload implementations (they run inside ``benchmarks.runner``)."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")

# Workflow ids that reached their wait (W6) or the end of their recorded history (W7).
# Workflows add themselves; a replay adds the same id again, so a set is idempotent.
READY: set[str] = set()


def progress(done: int, total: int, what: str = "") -> None:
    """Tell the parent process how far this workload is (read by the progress bar)."""
    sys.stdout.write(f"@@progress {done} {total} {what}\n")
    sys.stdout.flush()


def rss_bytes(pid: int | None = None) -> int:
    """Resident memory of a process (this one by default)."""
    path = f"/proc/{pid or 'self'}/statm"
    try:
        with open(path) as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import psutil

        return int(psutil.Process(pid).memory_info().rss)


def settled_rss(pid: int | None = None) -> int:
    gc.collect()
    return rss_bytes(pid)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def gather_limited(
    factories: Iterable[Callable[[], Awaitable[T]]],
    limit: int,
    on_done: Callable[[int], None] | None = None,
) -> list[T]:
    """Run the awaitables with at most ``limit`` in flight; results in order."""
    items = list(factories)
    results: list[Any] = [None] * len(items)
    next_index = 0
    done = 0

    async def lane() -> None:
        nonlocal next_index, done
        while next_index < len(items):
            i = next_index
            next_index += 1
            results[i] = await items[i]()
            done += 1
            if on_done is not None:
                on_done(done)

    await asyncio.gather(*(lane() for _ in range(min(limit, len(items)) or 1)))
    return results


# Each system's warm-up before a workload: this many small workflows at once (not one),
# so that what concurrent work opens (pool connections, perdure's group commit links) is
# open before the measured part, as in a process that has been running a while.
WARM_UP = 8

COMPLETION_TIMEOUT = 300.0  # W6: seconds after the last signal before giving up
STALL_TIMEOUT = 60.0  # ... or seconds without one more workflow completing


async def completing(factories: list[Callable[[], Awaitable[T]]], limit: int, what: str) -> list[T]:
    """``gather_limited`` with a deadline that names how many did not finish."""
    tick = Ticker(len(factories), what)
    finished = 0

    def on_done(done: int) -> None:
        nonlocal finished
        finished = done
        tick(done)

    work = asyncio.ensure_future(gather_limited(factories, limit, on_done))
    started = time.perf_counter()
    last_progress, last_count = started, 0
    while not work.done():
        await asyncio.wait([work], timeout=1.0)
        now = time.perf_counter()
        if finished != last_count:
            last_progress, last_count = now, finished
        stalled = now - last_progress > STALL_TIMEOUT
        if not work.done() and (stalled or now - started > COMPLETION_TIMEOUT):
            work.cancel()
            why = (
                f"none completed for {STALL_TIMEOUT:.0f} s"
                if stalled
                else f"{COMPLETION_TIMEOUT:.0f} s after the last signal"
            )
            raise TimeoutError(
                f"{len(factories) - finished} of {len(factories)} workflows not {what}: {why}"
            )
    return work.result()


async def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    poll: float = 0.05,
    report: Callable[[], None] | None = None,
) -> None:
    deadline = time.perf_counter() + timeout
    while not predicate():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        if report is not None:
            report()
        await asyncio.sleep(poll)


class Ticker:
    """Rate-limited progress reports (at most ~5 per second)."""

    def __init__(self, total: int, what: str) -> None:
        self.total = total
        self.what = what
        self._last = 0.0

    def __call__(self, done: int) -> None:
        now = time.perf_counter()
        if done >= self.total or now - self._last > 0.2:
            self._last = now
            progress(done, self.total, self.what)
