"""One SQLite connection on its own thread, with group commit.

Every call is queued to the thread. Writes that are queued together run in
ONE ``BEGIN IMMEDIATE ... COMMIT`` (each inside a savepoint, so one failing
write does not undo the others), and no caller hears back before the commit is
durable. Under load this turns N steps into one fsync.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

T = TypeVar("T")
Op = Callable[[sqlite3.Connection], Any]

_MAX_GROUP = 512


class _Call:
    __slots__ = ("fn", "future", "loop", "write")

    def __init__(
        self, fn: Op, write: bool, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]
    ) -> None:
        self.fn = fn
        self.write = write
        self.loop = loop
        self.future = future


def _resolve_all(items: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in items:
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class SQLiteThread:
    def __init__(self, path: str, *, synchronous: str = "FULL") -> None:
        self.path = path
        self._synchronous = synchronous
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.commits = 0
        self.grouped_writes = 0

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _ensure_started(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._main, name=f"perdure-sqlite:{self.path}", daemon=True
                )
                self._thread.start()

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return cast(T, await self._submit(fn, write=False))

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return cast(T, await self._submit(fn, write=True))

    async def _submit(self, fn: Op, *, write: bool) -> Any:
        self._ensure_started()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put(_Call(fn, write, loop, future))
        return await future

    async def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            await asyncio.get_running_loop().run_in_executor(None, thread.join)

    # -- the thread ------------------------------------------------------
    def _main(self) -> None:
        conn = self._connect()
        try:
            while True:
                first = self._queue.get()
                if first is None:
                    return
                batch = [first]
                stop = False
                while len(batch) < _MAX_GROUP:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stop = True
                        break
                    batch.append(item)
                self._run_batch(conn, batch)
                if stop:
                    return
        finally:
            conn.close()

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Call]) -> None:
        done: list[tuple[_Call, bool, Any]] = []
        i = 0
        while i < len(batch):
            if not batch[i].write:
                call = batch[i]
                try:
                    done.append((call, True, call.fn(conn)))
                except Exception as exc:
                    done.append((call, False, exc))
                i += 1
                continue
            j = i
            while j < len(batch) and batch[j].write:
                j += 1
            self._run_writes(conn, batch[i:j], done)
            i = j
        self._post_all(done)

    def _run_writes(
        self, conn: sqlite3.Connection, calls: list[_Call], done: list[tuple[_Call, bool, Any]]
    ) -> None:
        outcomes: list[tuple[bool, Any]] = []
        try:
            self._begin(conn)
            for call in calls:
                conn.execute("SAVEPOINT step")
                try:
                    outcomes.append((True, call.fn(conn)))
                    conn.execute("RELEASE step")
                except Exception as exc:
                    conn.execute("ROLLBACK TO step")
                    conn.execute("RELEASE step")
                    outcomes.append((False, exc))
            conn.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            done.extend((call, False, exc) for call in calls)
            return
        self.commits += 1
        self.grouped_writes += len(calls)
        done.extend((call, ok, value) for call, (ok, value) in zip(calls, outcomes, strict=True))

    @staticmethod
    def _begin(conn: sqlite3.Connection) -> None:
        # busy_timeout covers most contention; a few extra tries cover the rest.
        for attempt in range(20):
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                time.sleep(min(0.05 * (attempt + 1), 1.0))
        conn.execute("BEGIN IMMEDIATE")

    @staticmethod
    def _post_all(done: list[tuple[_Call, bool, Any]]) -> None:
        """Wake each waiting event loop once per batch, not once per call."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for call, ok, value in done:
            by_loop.setdefault(call.loop, []).append((call.future, ok, value))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve_all, items)
            except RuntimeError:  # the caller's loop is closed; nobody is waiting
                pass
