"""One SQLite connection, with group commit, on the event loop or on its own thread.

Writes that are queued together run in ONE ``BEGIN IMMEDIATE ... COMMIT``
(each inside a savepoint, so one failing write does not undo the others), and
no caller hears back before the commit is durable. Under load this turns N
steps into one fsync.

Two ways to run it:

- ``io="loop"`` (default): the batch runs on the event loop's thread, gathered
  from everything submitted in one loop iteration. No thread hops: the fastest
  path. A step's write submitted while no other callback is ready (nothing could
  join it) runs at once, in its caller's task. While another process holds the
  write lock we do not block the loop: the batch is retried a few milliseconds
  later. A group of several writes has its ``COMMIT`` (the fsync: tens of
  milliseconds for hundreds of steps) run on a helper thread, so the loop goes on
  running workflows meanwhile; the group's callers hear back once it is durable,
  and the next batch starts after it.
- ``io="thread"``: a dedicated thread runs the batches, so the event loop never
  waits on the disk (for apps that share their loop with latency-sensitive work).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from perdure._store._turns import Turns, nothing_else_ready

T = TypeVar("T")
Op = Callable[[sqlite3.Connection], Any]

_MAX_GROUP = 512
IO_MODES = ("loop", "thread")


class _Call:
    __slots__ = ("fn", "future", "loop", "write")

    def __init__(
        self, fn: Op, write: bool, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]
    ) -> None:
        self.fn = fn
        self.write = write
        self.loop = loop
        self.future = future


class _Busy(Exception):
    """Another process holds the write lock; try the batch again shortly."""


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def _open_error(path: str, exc: Exception) -> sqlite3.OperationalError:
    """sqlite3's own error says neither which file nor what to do."""
    return sqlite3.OperationalError(
        f"cannot open the SQLite database {path!r} ({exc}); check that its directory "
        "exists and is writable"
    )


def _resolve_all(items: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in items:
        _settle(future, ok, value)


class SQLiteDB:
    def __init__(self, path: str, *, synchronous: str = "FULL", io: str = "loop") -> None:
        if io not in IO_MODES:
            raise ValueError(f"io must be one of {', '.join(IO_MODES)}, got {io!r}")
        self.path = path
        self.io = io
        self._synchronous = synchronous
        self.commits = 0
        self.grouped_writes = 0
        self.direct = 0  # lone writes run at once from their caller's task
        # io="loop"
        self._conn: sqlite3.Connection | None = None
        self._pending: list[_Call] = []
        self._busy_retries = 0
        self._turns = Turns()
        self._committing: asyncio.Future[Any] | None = None  # a COMMIT on the helper thread
        self._committer: concurrent.futures.ThreadPoolExecutor | None = None
        # io="thread"
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _connect(self, busy_timeout_ms: int) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    # read and write hand back the future itself, not a coroutine awaiting it: two
    # coroutine frames less per statement group on the hot path. They submit at once.
    def read(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        return self._submit(fn, write=False)

    def write(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        return self._submit(fn, write=True)

    def write_now(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """``write`` for a caller that awaits it before it submits anything else (a
        workflow step): if nothing could join it, it is committed before this returns.

        Several ``write``s submitted before any is awaited group as before; a
        ``write_now`` among them would commit alone.
        """
        return self._submit(fn, write=True, now=True)

    def _submit(self, fn: Op, *, write: bool, now: bool = False) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        call = _Call(fn, write, loop, future)
        if self.io == "loop":
            self._pending.append(call)
            if len(self._pending) == 1:
                conn = self._direct_conn(loop) if now else None
                if conn is not None:
                    self.direct += 1
                    self._flush_lone_write(conn)
                else:
                    loop.call_soon(self._flush)
        else:
            self._ensure_thread()
            self._queue.put(call)
        return future

    def _direct_conn(self, loop: asyncio.AbstractEventLoop) -> sqlite3.Connection | None:
        """The connection, if a lone ``write_now`` may run in its caller's task instead
        of in a flush next turn.

        With no other callback ready, nothing else runs before the loop next waits for
        I/O, so no other write could join this one's batch: the flush callback would only
        add a turn of the loop between a sequential workflow's step and its commit. Its
        caller then finds the future done and goes on without yielding, so every few
        milliseconds a write takes the callback instead and the loop turns.
        """
        conn = self._conn
        if conn is None or self._committing is not None or not nothing_else_ready(loop):
            return None
        return None if self._turns.due() else conn

    async def close(self) -> None:
        if self._conn is not None:
            if self._pending:
                await asyncio.sleep(0)  # let a scheduled flush finish first
            while self._committing is not None:
                await asyncio.wait([self._committing])
            self._conn.close()
            self._conn = None
        if self._committer is not None:
            self._committer.shutdown(wait=False)
            self._committer = None
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            await asyncio.get_running_loop().run_in_executor(None, thread.join)

    # -- io="loop" ---------------------------------------------------------
    def _flush(self) -> None:
        if not self._pending or self._committing is not None:
            return  # a COMMIT in flight flushes again when it is over
        if self._conn is None:
            try:
                # A short busy timeout: waiting for another process is done by the loop.
                self._conn = self._connect(busy_timeout_ms=5)
            except sqlite3.Error as exc:
                # Every waiting caller hears why; the next call tries to open it again.
                pending, self._pending = self._pending, []
                for call in pending:
                    _settle(call.future, False, _open_error(self.path, exc))
                return
        if len(self._pending) == 1 and self._pending[0].write:
            self._flush_lone_write(self._conn)
            return
        batch, self._pending = self._pending[:_MAX_GROUP], self._pending[_MAX_GROUP:]
        loop = batch[0].loop
        try:
            self._run_batch(self._conn, batch, retry_busy=True)
            self._busy_retries = 0
        except _Busy:
            self._pending = batch + self._pending
            self._flush_later(loop)
            return
        if self._pending and self._committing is None:
            loop.call_soon(self._flush)

    def _flush_later(self, loop: asyncio.AbstractEventLoop) -> None:
        """Another process holds the write lock: try again a little later each time."""
        self._busy_retries += 1
        loop.call_later(min(0.002 * self._busy_retries, 0.05), self._flush)

    def _flush_lone_write(self, conn: sqlite3.Connection) -> None:
        """One write alone in its batch (a sequential workflow's every step): what
        ``_run_batch`` does for it, without the lists, tuples and dict it needs for many.
        """
        call = self._pending.pop()
        try:
            self._begin(conn, retry_busy=True)
        except _Busy:
            self._pending.insert(0, call)
            self._flush_later(call.loop)
            return
        except Exception as exc:
            _settle(call.future, False, exc)
            return
        self._busy_retries = 0
        try:
            value = call.fn(conn)
            conn.execute("COMMIT")
        except Exception as exc:
            # Whether the write or the commit failed, nothing of this write may stay.
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            finally:
                _settle(call.future, False, exc)
            return
        self.commits += 1
        self.grouped_writes += 1
        _settle(call.future, True, value)

    # -- io="thread" -------------------------------------------------------
    def _ensure_thread(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._main, name=f"perdure-sqlite:{self.path}", daemon=True
                )
                self._thread.start()

    def _main(self) -> None:
        try:
            conn = self._connect(busy_timeout_ms=30000)
        except sqlite3.Error as exc:
            self._fail_queued(exc)
            return
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
                self._run_batch(conn, batch, retry_busy=False)
                if stop:
                    return
        finally:
            conn.close()

    def _fail_queued(self, exc: Exception) -> None:
        """The thread could not open the database: answer everything queued, then let
        the next call start a new thread that tries again."""
        with self._lock:
            self._thread = None
        while True:
            try:
                call = self._queue.get_nowait()
            except queue.Empty:
                return
            if call is not None and not call.loop.is_closed():
                call.loop.call_soon_threadsafe(
                    _settle, call.future, False, _open_error(self.path, exc)
                )

    # -- both ----------------------------------------------------------------
    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Call], *, retry_busy: bool) -> None:
        """Run reads and groups of writes in order; raise _Busy before doing anything.

        On the loop (``retry_busy``), a group of several writes ends the batch: its
        COMMIT goes to the helper thread, and what follows it waits for the next flush
        (a read after a write must not answer before that write is durable).
        """
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
            try:
                deferred = self._run_writes(conn, batch[i:j], done, retry_busy=retry_busy)
            except _Busy:
                if done:  # some calls ran already: answer them, retry the rest
                    self._post_all(done)
                    self._pending = batch[i:] + self._pending
                    loop = batch[i].loop
                    loop.call_later(0.002, self._flush)
                    return
                raise
            if deferred is not None:
                self._post_all(done)
                self._pending = batch[j:] + self._pending
                self._commit_off_loop(conn, batch[i:j], deferred)
                return
            i = j
        self._post_all(done)

    def _commit_off_loop(
        self, conn: sqlite3.Connection, calls: list[_Call], outcomes: list[tuple[bool, Any]]
    ) -> None:
        """COMMIT on the helper thread (sqlite3 lets go of the GIL while it syncs)."""
        if self._committer is None:
            self._committer = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="perdure-sqlite-commit"
            )
        loop = calls[0].loop
        committing = loop.run_in_executor(self._committer, conn.execute, "COMMIT")
        self._committing = committing
        committing.add_done_callback(partial(self._committed_off_loop, conn, calls, outcomes))

    def _committed_off_loop(
        self,
        conn: sqlite3.Connection,
        calls: list[_Call],
        outcomes: list[tuple[bool, Any]],
        committing: asyncio.Future[Any],
    ) -> None:
        self._committing = None
        done: list[tuple[_Call, bool, Any]] = []
        error = committing.exception() if not committing.cancelled() else None
        if committing.cancelled():
            error = RuntimeError("the COMMIT of a group of writes was cancelled")
        if error is None:
            self._committed(calls, outcomes, done)
        else:
            # Nothing of the group may stay: every caller hears the commit's error.
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            finally:
                done.extend((call, False, error) for call in calls)
        self._post_all(done)
        if self._pending:
            self._flush()

    def _run_writes(
        self,
        conn: sqlite3.Connection,
        calls: list[_Call],
        done: list[tuple[_Call, bool, Any]],
        *,
        retry_busy: bool,
    ) -> list[tuple[bool, Any]] | None:
        """Run writes in one transaction; a failing write does not undo the others.

        Returns the outcomes of a group left uncommitted for ``_commit_off_loop``
        (several writes, on the loop); None when the group is over, answered in ``done``.

        Savepoints cost two statements per write, so they are used only when needed:
        a write that fails having changed nothing (a fence that matched no row, a
        refused start) is simply reported; one that fails having changed something
        rolls the whole group back, which then runs again with a savepoint per write.
        """
        try:
            self._begin(conn, retry_busy=retry_busy)
        except _Busy:
            raise
        except Exception as exc:
            done.extend((call, False, exc) for call in calls)
            return None
        outcomes: list[tuple[bool, Any]] = []
        failed: Exception | None = None
        try:
            for call in calls:
                before = conn.total_changes
                try:
                    outcomes.append((True, call.fn(conn)))
                except Exception as exc:
                    if conn.total_changes == before and conn.in_transaction:
                        outcomes.append((False, exc))
                        continue
                    failed = exc  # it left changes behind, or lost the transaction
                    break
            if failed is None:
                if retry_busy and len(calls) > 1:
                    return outcomes
                conn.execute("COMMIT")
            elif conn.in_transaction:
                conn.execute("ROLLBACK")
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            done.extend((call, False, exc) for call in calls)
            return None
        if failed is None:
            self._committed(calls, outcomes, done)
            return None
        if len(calls) == 1:
            # Nothing else to protect: rolling back was the savepoint's whole job.
            done.append((calls[0], False, failed))
            return None
        self._run_writes_isolated(conn, calls, done, retry_busy=retry_busy)
        return None

    def _run_writes_isolated(
        self,
        conn: sqlite3.Connection,
        calls: list[_Call],
        done: list[tuple[_Call, bool, Any]],
        *,
        retry_busy: bool,
    ) -> None:
        """Run writes in one transaction, each in its own savepoint."""
        outcomes: list[tuple[bool, Any]] = []
        try:
            self._begin(conn, retry_busy=retry_busy)
        except _Busy:
            raise
        except Exception as exc:
            done.extend((call, False, exc) for call in calls)
            return
        try:
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
        self._committed(calls, outcomes, done)

    def _committed(
        self,
        calls: list[_Call],
        outcomes: list[tuple[bool, Any]],
        done: list[tuple[_Call, bool, Any]],
    ) -> None:
        self.commits += 1
        self.grouped_writes += len(calls)
        done.extend((call, ok, value) for call, (ok, value) in zip(calls, outcomes, strict=True))

    @staticmethod
    def _begin(conn: sqlite3.Connection, *, retry_busy: bool) -> None:
        attempts = 1 if retry_busy else 20
        for attempt in range(attempts):
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if retry_busy:
                    raise _Busy() from exc
                time.sleep(min(0.05 * (attempt + 1), 1.0))
        conn.execute("BEGIN IMMEDIATE")

    def _post_all(self, done: list[tuple[_Call, bool, Any]]) -> None:
        """Wake each waiting event loop once per batch, not once per call."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for call, ok, value in done:
            by_loop.setdefault(call.loop, []).append((call.future, ok, value))
        for loop, items in by_loop.items():
            if loop.is_closed():
                continue
            if self.io == "loop":
                _resolve_all(items)  # we run on the loop's own thread
            else:
                loop.call_soon_threadsafe(_resolve_all, items)
