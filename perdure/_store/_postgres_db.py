"""Connections for the PostgreSQL and CockroachDB stores.

What is here and not in the store: parsing the URL, the pool, running a function as ONE
transaction (retried when the database says it could not serialize it, SQLSTATE 40001),
the LISTEN connection that pushes wake-ups, and group commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import re
import select
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache, partial
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import AsyncConnection, AsyncRawCursor, errors, sql
from psycopg.pq import ExecStatus
from psycopg.rows import DictRow, dict_row, tuple_row
from psycopg_pool import AsyncConnectionPool

from perdure._store._queries import load_queries
from perdure._store._times import iso
from perdure._store._turns import Turns, nothing_else_ready

log = logging.getLogger("perdure.store")

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")
Conn = AsyncConnection[DictRow]
Tx = Callable[[Conn], Awaitable[T]]

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,50}")
_QUALIFIED = re.compile(r"(?<![\w.\"])perdure\.(?=[a-z_])")
# SQLSTATEs after which the whole transaction can simply run again.
_RETRYABLE = (errors.SerializationFailure, errors.DeadlockDetected)
# A statement on a Link sent while nothing else in the loop is ready to run waits this
# long for its answer in a blocking poll before it hands the wait to the event loop: a
# sequential workflow's step (~0.6 ms on the server) then skips the loop's turn, its
# epoll and a task wake-up (W4: client CPU 0.37 -> 0.30 ms per step). Anything that
# arrives meanwhile (a timer, another connection's answer) waits at most this long.
_QUICK_WAIT_MS = 2
_INJECT_40001 = (
    "DO $$BEGIN RAISE EXCEPTION 'perdure test: injected serialization failure' "
    "USING ERRCODE = 'serialization_failure'; END$$"
)


@dataclass(frozen=True, kw_only=True, slots=True)
class Settings:
    """What a ``postgresql://`` / ``cockroachdb://`` URL says, split into ours and libpq's."""

    conninfo: str
    schema: str = "perdure"
    pool_min_size: int = 1
    pool_max_size: int = 10
    group_commit: bool = True
    group_commit_connections: int = 4

    @property
    def channel(self) -> str:
        return f"{self.schema}_wake"


_OURS = {"schema", "pool_min_size", "pool_max_size", "group_commit", "group_commit_connections"}


def parse_url(url: str, *, default_port: int | None = None) -> Settings:
    """Take perdure's own query parameters out of a database URL; libpq gets the rest.

    ``postgresql://user:pw@host:5432/db?schema=jobs&pool_max_size=20&sslmode=require``
    """
    parts = urlsplit(url)
    params = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in params if k in _OURS}
    rest = [(k, v) for k, v in params if k not in _OURS]
    netloc = parts.netloc
    if default_port is not None and parts.hostname and parts.port is None:
        netloc = f"{netloc}:{default_port}"
    # libpq decodes %XX only, not "+": a space must go back as %20 (options=-c%20...).
    query = urlencode(rest, quote_via=quote)
    conninfo = urlunsplit(("postgresql", netloc, parts.path, query, parts.fragment))
    schema = ours.get("schema", "perdure")
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ValueError(
            f"schema {schema!r} in {url!r}: use lowercase letters, digits and underscores "
            "(at most 51 characters, not starting with a digit)"
        )
    try:
        min_size = int(ours.get("pool_min_size", 1))
        max_size = int(ours.get("pool_max_size", max(10, min_size)))
    except ValueError:
        raise ValueError(f"pool_min_size and pool_max_size in {url!r} must be integers") from None
    if not 0 <= min_size <= max_size or max_size < 1:
        raise ValueError(
            f"need 0 <= pool_min_size <= pool_max_size and pool_max_size >= 1: {url!r}"
        )
    group = ours.get("group_commit", "on").lower()
    if group not in ("on", "off", "true", "false", "1", "0"):
        raise ValueError(f"group_commit in {url!r} must be on or off")
    links = ours.get("group_commit_connections", "4")
    if not links.isdigit() or not 1 <= int(links) <= 64:
        raise ValueError(f"group_commit_connections in {url!r} must be a whole number from 1 to 64")
    return Settings(
        conninfo=conninfo,
        schema=schema,
        pool_min_size=min_size,
        pool_max_size=max_size,
        group_commit=group in ("on", "true", "1"),
        group_commit_connections=int(links),
    )


def in_schema(text: str, schema: str) -> str:
    """Point the ``perdure.`` names of a SQL text at another schema."""
    return text if schema == "perdure" else _QUALIFIED.sub(f"{schema}.", text)


@cache
def dialect_queries(dialects: tuple[str, ...], schema: str) -> dict[str, str]:
    """Named queries of the first dialect, overridden by the later ones, in ``schema``."""
    merged: dict[str, str] = {}
    for dialect in dialects:
        merged.update(load_queries(dialect))
    return {name: compact(in_schema(text, schema)) for name, text in merged.items()}


def compact(query: str) -> str:
    """A query without its comment lines and indentation.

    psycopg parses a query's placeholders once and caches the result only for queries
    of at most 4 KB (``MAX_CACHED_STATEMENT_LENGTH``); a longer one is parsed again at
    every execution, which costs more than the statement's round trip.
    """
    lines = (line.strip() for line in query.splitlines())
    return "\n".join(line for line in lines if line and not line.startswith("--"))


def split_statements(script: str) -> list[str]:
    """Split a migration into statements (``$$`` bodies keep their semicolons)."""
    statements: list[str] = []
    current: list[str] = []
    quoted = False
    for line in script.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("--")):
            continue
        current.append(line)
        quoted ^= line.count("$$") % 2 == 1
        if not quoted and line.rstrip().endswith(";"):
            statements.append("\n".join(current).strip())
            current = []
    if "".join(current).strip():
        statements.append("\n".join(current).strip())
    return statements


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, _RETRYABLE)


class Database:
    """A pool plus the transaction runner. Opened on first use, in the caller's loop."""

    def __init__(
        self,
        settings: Settings,
        *,
        max_attempts: int = 30,
        fault_rate: float = 0.0,
        generic_plans: bool = False,
    ) -> None:
        self.settings = settings
        self.max_attempts = max_attempts
        self.generic_plans = generic_plans
        self.fault_rate = fault_rate  # tests: share of transactions made to fail with 40001
        self.retries = 0
        self.injected = 0
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._lock = asyncio.Lock()

    async def pool(self) -> AsyncConnectionPool[Conn]:
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    pool = AsyncConnectionPool(
                        self.settings.conninfo,
                        connection_class=AsyncConnection[DictRow],
                        kwargs={"autocommit": True, "row_factory": dict_row},
                        min_size=self.settings.pool_min_size,
                        max_size=self.settings.pool_max_size,
                        open=False,
                        name="perdure",
                        check=_still_connected,
                        configure=_generic_plans if self.generic_plans else None,
                    )
                    await pool.open(wait=True, timeout=30)
                    self._pool = pool
        return self._pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def transaction(self, fn: Tx[T]) -> T:
        """Run ``fn`` in one transaction; run it again (with backoff) on 40001/40P01."""

        async def run(conn: Conn) -> T:
            async with conn.transaction():
                value = await fn(conn)
                await self.maybe_fail(conn)
            return value

        return await self.retrying(run)

    async def statement(self, fn: Tx[T]) -> T:
        """Run ``fn``, which sends one statement: it commits on its own (autocommit)."""
        if self.fault_rate:
            return await self.transaction(fn)
        return await self.retrying(fn)

    async def read(self, fn: Tx[T]) -> T:
        """Run ``fn`` outside a transaction block (each statement on its own).

        ``fn`` only reads, so it also runs again when its connection was lost (a server
        restart): the pool connects anew, waiting for the server to be back.
        """
        return await self.retrying(fn, reconnect=True)

    async def maybe_fail(self, conn: Conn) -> None:
        """Tests: make a share of transactions fail as CockroachDB's sometimes do."""
        if self.fault_rate and random.random() < self.fault_rate:
            self.injected += 1
            await conn.execute(_INJECT_40001)

    async def retrying(self, fn: Tx[T], *, reconnect: bool = False) -> T:
        """Call ``fn`` with a pooled connection, again on a serialization failure.

        A write whose connection broke is not sent again: it may have committed before
        the answer was lost. The caller gets the error and works from what the database
        holds (a worker hands the run back and replays it).
        """
        pool = await self.pool()
        attempt = 0
        lost = 0
        while True:
            attempt += 1
            used: Conn | None = None
            try:
                async with pool.connection() as conn:
                    used = conn
                    return await fn(conn)
            except _RETRYABLE:
                if attempt >= self.max_attempts:
                    raise
                self.retries += 1
            except psycopg.OperationalError:
                if not reconnect or used is None or not (used.broken or used.closed):
                    raise
                lost += 1
                if lost > 3:
                    raise
                log.warning("lost the database connection; reading again")
            await asyncio.sleep(min(0.002 * 2**attempt, 0.5) * (0.5 + random.random()))


class Gathered(Generic[K, V]):
    """Lookups of one kind asked for together go out as ONE read for all their keys.

    A worker resuming a batch of claimed runs, or a thousand handles awaiting their
    results, would otherwise make one pooled round trip per lookup, which cost the client
    more CPU than anything else it did for them. The lookups asked for while one read is
    out wait for it and go in the next one (so each reads what committed before it was
    asked for). ``_fetch`` reads the values of many keys; a key it does not return gets
    ``_missing()``.
    """

    _task_name = "perdure-gathered-read"

    def __init__(self) -> None:
        self._waiting: dict[K, list[asyncio.Future[V]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def _get(self, key: K) -> V:
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(future)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read(), name=self._task_name)
        return await future

    async def _fetch(self, keys: list[K]) -> dict[K, V]:
        raise NotImplementedError

    def _missing(self) -> V:
        raise NotImplementedError

    async def _read(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, {}
            try:
                found = await self._fetch(list(batch))
            except Exception as exc:
                for futures in batch.values():
                    for future in futures:
                        _settle(future, exc=exc)
                continue
            for key, futures in batch.items():
                value = found[key] if key in found else self._missing()
                for future in futures:
                    _settle(future, value=value)


class ByRun(Gathered[str, list[DictRow]]):
    """Reads of one kind, each for one run, that are asked for together go out as ONE
    query for all their runs (``run_id = ANY(%(run_ids)s)``).

    A worker resuming a batch of claimed runs reads each run's history, tasks and inbox:
    three pooled round trips per run (a fan-out's 1,000 children: 3,000). Rows come back
    split by their ``run_id`` column, in the query's order.
    """

    _task_name = "perdure-read-by-run"

    def __init__(self, db: Database, query: str) -> None:
        super().__init__()
        self._db = db
        self._query = query

    async def rows(self, run_id: str) -> list[DictRow]:
        """The query's rows of ``run_id``."""
        return await self._get(run_id)

    async def _fetch(self, keys: list[str]) -> dict[str, list[DictRow]]:
        params = {"run_ids": text_array(keys)}
        rows = await self._db.read(partial(_fetch_all, self._query, params))
        by_run: dict[str, list[DictRow]] = {}
        for row in rows:
            by_run.setdefault(row["run_id"], []).append(row)
        return by_run

    def _missing(self) -> list[DictRow]:
        return []


async def _fetch_all(query: str, params: dict[str, Any], conn: Conn) -> list[DictRow]:
    return await (await conn.execute(query, params)).fetchall()


class OwnConnection:
    """One connection outside the pool, connected anew (waiting for the server) after it
    was lost. ``Dedicated`` and group commit's ``Link`` each keep one."""

    def __init__(self, db: Database, *, connect_timeout: float) -> None:
        self._db = db
        self._connect_timeout = connect_timeout
        self._conn: Conn | None = None

    async def connection(self) -> Conn:
        """The connection, connected anew if it was lost (waiting for the server)."""
        conn = self._conn
        if conn is not None and not (conn.closed or conn.broken) and _readable(conn.fileno()):
            # Idle, it has nothing to read unless the server is closing it: find out.
            self.handing_to_psycopg()
            with contextlib.suppress(psycopg.Error):
                await conn.execute("")
        if conn is not None and (conn.closed or conn.broken):
            await self.close()
            conn = None
        if conn is None:
            conn = await self._connect()
            self._conn = conn
        return conn

    async def _connect(self) -> Conn:
        deadline = time.monotonic() + self._connect_timeout
        delay = 0.05
        while True:
            try:
                conn = await AsyncConnection.connect(
                    self._db.settings.conninfo, autocommit=True, row_factory=dict_row
                )
                if self._db.generic_plans:
                    try:
                        await _generic_plans(conn)
                    except BaseException:  # cancelled (closing), or lost: not leaked
                        await conn.close()
                        raise
                return conn
            except psycopg.OperationalError:
                if time.monotonic() + delay > deadline:
                    raise
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)

    def handing_to_psycopg(self) -> None:
        """Called before psycopg waits on the connection's socket itself."""

    async def close(self) -> None:
        self.handing_to_psycopg()
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()


class Dedicated(OwnConnection):
    """One connection of its own, outside the pool, for the worker's lease loop.

    A lease renewal that waits behind hundreds of queued pool requests (a worker
    adopting a batch of claimed runs, a database slowed down by load) arrives after
    the lease ran out, and another worker takes the run over. The lease loop's
    statements (renewal, worker heartbeat, activity heartbeats) therefore run here,
    one at a time. They are idempotent: after a lost connection the statement is
    simply sent again on a new one, once.
    """

    def __init__(self, db: Database, *, connect_timeout: float = 10) -> None:
        super().__init__(db, connect_timeout=connect_timeout)
        self._lock = asyncio.Lock()

    async def transaction(self, fn: Tx[T]) -> T:
        """Run ``fn`` in one transaction; again on 40001/40P01 or a lost connection."""
        return await self._run(fn, in_transaction=True)

    async def statements(self, fn: Tx[T]) -> T:
        """Run ``fn``, whose statements each commit on their own (autocommit)."""
        return await self._run(fn, in_transaction=bool(self._db.fault_rate))

    async def _run(self, fn: Tx[T], *, in_transaction: bool) -> T:
        async with self._lock:
            attempt = 0
            reconnected = False
            while True:
                attempt += 1
                conn = await self.connection()
                try:
                    if not in_transaction:
                        return await fn(conn)
                    async with conn.transaction():
                        value = await fn(conn)
                        await self._db.maybe_fail(conn)
                    return value
                except _RETRYABLE:
                    if attempt >= self._db.max_attempts:
                        raise
                    self._db.retries += 1
                except psycopg.OperationalError:
                    if not conn.broken and not conn.closed:
                        raise
                    # The server went away (restart, failover, idle timeout): reconnect.
                    await self.close()
                    if reconnected:
                        raise
                    reconnected = True
                    continue
                await asyncio.sleep(min(0.002 * 2**attempt, 0.5) * (0.5 + random.random()))


class Listener:
    """One LISTEN connection per store; calls every subscriber on each notification.

    After a lost connection it reconnects (with backoff) and calls everyone once, since
    notifications sent in between are gone.
    """

    def __init__(self, conninfo: str, channel: str) -> None:
        self._conninfo = conninfo
        self._channel = channel
        self._callbacks: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self.notifications = 0

    async def add(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)
        if self._task is None:
            self._ready = asyncio.Event()
            self._task = asyncio.create_task(self._run(), name="perdure-listen")
        # Polling covers anything sent before LISTEN is in place; don't wait forever.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), 10)

    async def remove(self, callback: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._callbacks.remove(callback)
        if not self._callbacks:
            await self.close()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _fire(self) -> None:
        for callback in list(self._callbacks):
            try:
                callback()
            except Exception:
                log.exception("wake-up callback failed")

    async def _run(self) -> None:
        backoff = 0.1
        first = True
        while True:
            try:
                conn = await AsyncConnection.connect(self._conninfo, autocommit=True)
                async with conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    self._ready.set()
                    if not first:
                        self._fire()
                    first, backoff = False, 0.1
                    async for _ in conn.notifies():
                        self.notifications += 1
                        self._fire()
            except psycopg.Error as exc:
                log.warning("LISTEN connection lost (%s); reconnecting in %.1fs", exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)


_NAMED = re.compile(r"%\((\w+)\)s")


@dataclass(frozen=True, slots=True)
class RawQuery:
    """A named-parameter query turned into ``$1, $2, ...`` once, for a raw cursor.

    psycopg parses a query's ``%(name)s`` placeholders at every execution unless the
    query is at most 4 KB (then it caches the parse); the step statement is longer, and
    parsing it cost more than its round trip. A raw cursor sends the text as it is.
    """

    text: str
    names: tuple[str, ...]
    # The name it is prepared under on a Link (the same text, the same name).
    name: bytes = field(default=b"", compare=False)

    @classmethod
    def parse(cls, query: str) -> RawQuery:
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            if match.group(1) not in names:
                names.append(match.group(1))
            return f"${names.index(match.group(1)) + 1}"

        text = _NAMED.sub(number, query).replace("%%", "%")
        digest = hashlib.sha1(text.encode()).hexdigest()[:16]
        return cls(text, tuple(names), f"perdure_{digest}".encode())

    def args(self, params: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(params[name] for name in self.names)

    async def first(self, conn: Conn, params: dict[str, Any]) -> Any:
        """Run it; the first column of its first row (None without rows)."""
        cur = AsyncRawCursor(conn, row_factory=tuple_row)
        await cur.execute(self.text, self.args(params))
        return _first(await cur.fetchone())


Statement = tuple[RawQuery, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Merge:
    """Writes that are one statement of ``single`` each go out as ONE ``many`` statement.

    Only writes whose parameters ``accepts``; ``combine`` turns their parameters (in
    order) into ``many``'s; ``many`` returns the position of every write that applied (a
    fenced step that lost its fence does not). Each write then reads ``applied`` or
    ``missed``, as if it had gone alone (``commit_step_held``: 2, or NULL).
    """

    single: RawQuery
    many: RawQuery
    accepts: Callable[[dict[str, Any]], bool]
    combine: Callable[[list[dict[str, Any]]], dict[str, Any]]
    applied: Any = 1
    missed: Any = 0


@dataclass(frozen=True, slots=True)
class StartMerge:
    """The run starts (``single``) that open writes go out as ONE ``many`` statement.

    ``combine`` turns their parameters (in order) into ``many``'s; ``many`` returns the
    ``run_id`` of every run it inserted (a start whose workflow id is taken inserts none).
    The write's other statements follow it in the same transaction.
    """

    single: RawQuery
    many: RawQuery
    combine: Callable[[list[dict[str, Any]]], dict[str, Any]]


def encode_param(value: Any) -> bytes | None:
    """A parameter in PostgreSQL's text format, for a statement prepared on a ``Link``.

    Only the types the step statements take (their SQL casts what needs casting); the
    server infers each parameter's type once, when the statement is prepared.
    """
    if value is None:
        return None
    encode = _ENCODERS.get(type(value))
    if encode is not None:
        return encode(value)
    if isinstance(value, datetime):
        return iso(value).encode()
    if isinstance(value, list):  # text[] (run ids): an array literal
        return text_array(value).encode()
    if isinstance(value, str):
        return str.encode(value)
    if isinstance(value, int):
        return b"%d" % value
    raise TypeError(f"cannot send {type(value).__name__} as a step statement parameter")


def encode_statements(statements: list[Statement]) -> list[tuple[bytes, list[bytes | None]]]:
    """Each statement's prepared name and parameters, encoded (``encode_param``)."""
    return [
        (query.name, [encode_param(params[name]) for name in query.names])
        for query, params in statements
    ]


_ENCODERS: dict[type, Callable[[Any], bytes]] = {
    str: str.encode,
    bool: lambda value: b"t" if value else b"f",
    int: lambda value: b"%d" % value,
    datetime: lambda value: iso(value).encode(),
}


def text_array(values: Iterable[Any]) -> str:
    """A ``text[]`` literal of ``values``, for a parameter the SQL casts (``::text[]``).

    psycopg dumps a Python list through a regular expression run at every position of
    every item (to decide its quoting): ~20k instructions a run id. Every item is
    quoted here instead, which PostgreSQL and CockroachDB read the same.
    """
    return "{" + ",".join(_array_item(v) for v in values) + "}"


def _array_item(value: Any) -> str:
    text = str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Link(OwnConnection):
    """Group commit's own connection, outside the pool, and a lean way to use it.

    Every batch used to check a connection out of the pool and back in, and a lone
    statement went through psycopg's cursor machinery (parameter adaptation, its
    prepared-statement bookkeeping, a generic wait loop): together most of the client
    CPU of a sequential workflow's step. Here a lone statement is prepared once per
    connection under its own name and sent with ``PQsendQueryPrepared``, its parameters
    already text; a batch goes out the same way in libpq's pipeline mode (``send_batch``,
    PostgreSQL; CockroachDB's batches go through psycopg's pipeline on this connection).
    Group commit uses it for one batch at a time.
    """

    def __init__(self, db: Database, *, connect_timeout: float = 30) -> None:
        super().__init__(db, connect_timeout=connect_timeout)
        self._prepared: set[bytes] = set()  # named statements of the current connection
        # The socket stays registered with the event loop between lone statements (see
        # _until_readable); ``_waiter`` is the wait in progress, if any.
        self._watched: tuple[asyncio.AbstractEventLoop, int] | None = None
        self._waiter: asyncio.Future[None] | None = None

    async def _connect(self) -> Conn:
        conn = await super()._connect()
        self._prepared = set()
        return conn

    async def run(self, fn: Tx[T]) -> T:
        """Call ``fn`` with the connection; again on a serialization failure (backoff).

        As with the pool (``Database.retrying``), a write whose connection broke is not
        sent again. A call cut short (cancelled, lost connection) leaves the connection
        in an unknown state: it is closed, and the next call connects anew.
        """
        attempt = 0
        while True:
            attempt += 1
            conn = await self.connection()
            try:
                return await fn(conn)
            except _RETRYABLE:
                if not _idle(conn):  # rolled back, but a raw pipeline leaves it aborted
                    await self.close()
                if attempt >= self._db.max_attempts:
                    raise
                self._db.retries += 1
            except BaseException:
                if conn.broken or conn.closed or conn.pgconn.is_busy() or not _idle(conn):
                    await self.close()
                raise
            await asyncio.sleep(min(0.002 * 2**attempt, 0.5) * (0.5 + random.random()))

    async def first(self, conn: Conn, query: RawQuery, params: dict[str, Any]) -> Any:
        """Run ``query`` as one statement (autocommit): the first column of its first row."""
        await self._prepare(conn, query)
        self._send_prepared(conn, query, params)
        result = await self._result(conn)
        if result.status != ExecStatus.TUPLES_OK or result.ntuples == 0:
            return None
        value = result.get_value(0, 0)
        return None if value is None else int(value)

    async def firsts(
        self, conn: Conn, statements: list[tuple[RawQuery, dict[str, Any]]]
    ) -> list[Any]:
        """Run ``statements`` in ONE transaction, in one round trip: BEGIN, each statement
        (prepared, as in ``first``) and COMMIT through libpq's pipeline mode. The first
        column of each statement's first row (an int when it reads as one).

        A run's start with its first step, sent alone: psycopg's pipeline (cursors, its
        result bookkeeping) cost more client CPU than the rest of the start.
        """
        prepared = self.send_batch(conn, statements, encode_statements(statements))
        return [_first_value(result) for result in await self.sent_results(conn, prepared)]

    def ready(self) -> Conn | None:
        """The connection, if a batch can go out on it at once: open, idle, and with
        nothing to read (which would mean the server is closing it)."""
        conn = self._conn
        if (
            conn is None
            or conn.closed
            or conn.broken
            or conn.pgconn.is_busy()
            or not _idle(conn)
            or _readable(conn.fileno())
        ):
            return None
        return conn

    def cold(self) -> bool:
        return self._conn is None

    def send_batch(
        self,
        conn: Conn,
        statements: list[Statement],
        encoded: list[tuple[bytes, list[bytes | None]]],
    ) -> list[bytes]:
        """Send BEGIN, the statements (``encode_statements``) and COMMIT in one pipeline,
        without waiting: the bytes go to the socket as far as it takes them now;
        ``sent_results`` sends the rest and reads the answers. A statement not prepared on
        this connection yet is prepared ahead, in the same pipeline. Returns the names of
        those it prepared, for ``sent_results``."""
        pgconn = conn.pgconn
        pgconn.enter_pipeline_mode()
        prepared: list[bytes] = []
        for query, _ in statements:
            if query.name not in self._prepared:
                pgconn.send_prepare(query.name, query.text.encode())
                self._prepared.add(query.name)
                prepared.append(query.name)
        pgconn.send_query_params(b"BEGIN", None)
        for name, args in encoded:
            pgconn.send_query_prepared(name, args)
        pgconn.send_query_params(b"COMMIT", None)
        pgconn.pipeline_sync()
        pgconn.flush()
        return prepared

    async def sent_results(self, conn: Conn, prepared: list[bytes]) -> list[Any]:
        """The result of each statement of the batch ``send_batch`` sent (raises the
        first error, which rolled the batch back)."""
        try:
            results = await self._pipeline_results(conn)
        except BaseException:
            self._prepared.difference_update(prepared)
            raise
        conn.pgconn.exit_pipeline_mode()
        error = next((r for r in results if r.status == ExecStatus.FATAL_ERROR), None)
        if error is not None:
            self._prepared.difference_update(prepared)  # perhaps not prepared after all
            raise errors.error_from_result(error, encoding=conn.info.encoding)
        return results[len(prepared) + 1 : -1]

    async def _prepare(self, conn: Conn, query: RawQuery) -> None:
        """Prepare ``query`` under its own name, once per connection."""
        if query.name not in self._prepared:
            conn.pgconn.send_prepare(query.name, query.text.encode())
            await self._result(conn)
            self._prepared.add(query.name)

    @staticmethod
    def _send_prepared(conn: Conn, query: RawQuery, params: dict[str, Any]) -> None:
        args = [encode_param(value) for value in map(params.__getitem__, query.names)]
        conn.pgconn.send_query_prepared(query.name, args)

    async def _pipeline_results(self, conn: Conn) -> list[Any]:
        """Flush the pipeline, then read one result per query up to its sync point."""
        pgconn = conn.pgconn
        loop = asyncio.get_running_loop()
        fd = pgconn.socket
        while pgconn.flush():
            await _ready(loop, fd, writer=True)
        results: list[Any] = []
        last: Any = None
        quick = nothing_else_ready(loop)
        while True:
            result, quick = await self._next_result(pgconn, loop, fd, quick)
            if result is None:  # the end of one query's results
                results.append(last)
                continue
            if result.status == ExecStatus.PIPELINE_SYNC:
                return results
            last = result

    async def _result(self, conn: Conn) -> Any:
        """Flush what was sent, then read the statement's results; the last one."""
        pgconn = conn.pgconn
        loop = asyncio.get_running_loop()
        fd = pgconn.socket
        while pgconn.flush():
            await _ready(loop, fd, writer=True)
        results = []
        quick = nothing_else_ready(loop)
        while True:
            result, quick = await self._next_result(pgconn, loop, fd, quick)
            if result is None:
                break
            results.append(result)
        for result in results:
            if result.status == ExecStatus.FATAL_ERROR:
                raise errors.error_from_result(result, encoding=conn.info.encoding)
        return results[-1]

    async def _next_result(
        self, pgconn: Any, loop: asyncio.AbstractEventLoop, fd: int, quick: bool
    ) -> tuple[Any, bool]:
        """libpq's next result (None at the end of a query's), reading the socket until
        it has one: while ``quick`` (nothing else was ready in the loop) in a blocking poll
        of at most ``_QUICK_WAIT_MS``, then, and from then on, through the event loop."""
        while pgconn.is_busy():
            if not (quick and _readable(fd, _QUICK_WAIT_MS)):
                quick = False
                await self._until_readable(loop, fd)
            pgconn.consume_input()
        return pgconn.get_result(), quick

    async def _until_readable(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        """Until the socket has something to read.

        The socket is registered with the loop once and stays registered while lone
        statements follow each other (each of a sequential workflow's steps): adding and
        removing a reader per statement cost two ``epoll_ctl`` calls and the selector's
        bookkeeping, ~5% of such a worker's CPU, on the path from one commit to the next.
        """
        if self._watched != (loop, fd):
            self.handing_to_psycopg()
            loop.add_reader(fd, self._on_readable)
            self._watched = (loop, fd)
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None

    def _on_readable(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            if not waiter.done():
                # Read it now, not when the woken task runs: the loop's next look at
                # the socket would find it readable still and call back once more, a
                # callback that would stand in the way of the next write (``_direct``).
                conn = self._conn
                if conn is not None:
                    with contextlib.suppress(psycopg.Error):
                        conn.pgconn.consume_input()  # an error shows in the task's read
                waiter.set_result(None)
        elif self._watched is not None and _readable(self._watched[1]):
            # Not a wait of ours, and still readable (the loop also calls back once more
            # for what the wait it woke has read meanwhile): the server sent something on
            # its own, most likely that it closes the connection. Stop watching; the next
            # use checks the connection (``connection``).
            self.handing_to_psycopg()

    def handing_to_psycopg(self) -> None:
        """Unregister the socket: psycopg registers it itself (one reader per socket), and
        a reader it replaced and then removed would never wake the next wait."""
        watched, self._watched = self._watched, None
        if watched is not None:
            loop, fd = watched
            with contextlib.suppress(Exception):  # the loop may be closed already
                loop.remove_reader(fd)


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, *, writer: bool) -> None:
    """Until ``fd`` can be read (or written)."""
    future: asyncio.Future[None] = loop.create_future()
    if writer:
        loop.add_writer(fd, _wake, future)
    else:
        loop.add_reader(fd, _wake, future)
    try:
        await future
    finally:
        if writer:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _first_value(result: Any) -> Any:
    """The first column of a result's first row: an int when it reads as one."""
    if result.status != ExecStatus.TUPLES_OK or result.ntuples == 0:
        return None
    value = result.get_value(0, 0)
    if value is None:
        return None
    text = bytes(value).decode()
    return int(text) if text.lstrip("-").isdigit() else text


def _idle(conn: Conn) -> bool:
    return conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE


class GroupCommit:
    """Queue concurrent writes; run each batch in ONE transaction.

    A write is one or more statements (a run's start, then its first step) that apply
    together. A batch goes out pipelined (one round trip, one commit). The statements must
    not fail in normal operation (the step statement reports a lost fence as 0 rows, not
    as an error); if one does, the batch is rolled back and each write retried alone, so
    one bad write cannot fail the others.

    Up to ``links`` batches are in flight at once, each on a connection of its own: while
    the server executes and commits one batch, the next one gathers and goes out, so the
    worker does not sit idle for the server's part of every batch. A run has at most one
    write in flight (its next step waits for this one), so batches in flight together
    never hold writes of the same step sequence.
    """

    def __init__(
        self,
        db: Database,
        *,
        max_batch: int = 256,
        links: int = 4,
        prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        merges: tuple[Merge, ...] = (),
        starts: StartMerge | None = None,
        alone: Callable[[RawQuery, dict[str, Any]], RawQuery] | None = None,
        raw: bool = False,
    ) -> None:
        self._db = db
        # Batches go out through libpq directly (prepared statements, pipeline mode), not
        # through psycopg's cursors; PostgreSQL only (CockroachDB infers the types of a
        # statement's parameters differently, and its store is tested only emulated).
        self._raw = raw
        # A statement that is a batch by itself may go out in a leaner form.
        self._alone_query = alone or _as_sent
        self._links = [Link(db) for _ in range(links)]
        self._free = self._links[::-1]  # not running a batch; pop() takes the first link
        self._merges = merges
        self._starts = starts
        self._prepare = prepare or _same  # called on each statement's parameters when sent
        self._max_batch = max_batch
        self._queue: list[tuple[list[Statement], asyncio.Future[list[Any]]]] = []
        self._flushers: set[asyncio.Task[None]] = set()
        self._starting = False  # a flusher was created and has not taken its batch yet
        self._warmed = False  # _warm_links ran (or the group is closing: not to run)
        self.transactions = 0
        self.writes = 0
        self.statements = 0  # sent, merged statements counted once
        self.direct = 0  # writes sent at once from their caller's task (``_direct``)
        self.eager = 0  # full batches sent at once from the task that filled them
        self._turns = Turns()  # when a direct write last let the loop turn

    async def submit(self, *statements: Statement) -> list[Any]:
        """The first column of each statement's first row, once they are committed."""
        loop = asyncio.get_running_loop()
        if not self._queue and self._free and not self._starting and nothing_else_ready(loop):
            return await self._direct(list(statements))
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._queue.append((list(statements), future))
        if len(self._queue) % self._max_batch or not self._send_now():
            self._spawn()
        return await future

    async def _direct(self, write: list[Statement]) -> list[Any]:
        """A write that nothing could join: sent at once, from the caller's own task.

        With no other callback ready, nothing else runs before the loop next waits for
        I/O, so no other write could be submitted in time to join this one's batch. A
        flusher task would only add a task and two turns of the loop between the step
        and its commit (a sequential workflow's every step). Writes submitted while it
        is out queue as usual and go on the other link.
        """
        link = self._free.pop()
        self.direct += 1
        try:
            values = await link.run(partial(self._run, link, batch=[write]))
        finally:
            self._free.append(link)
            if self._queue:
                self._spawn()
        self.transactions += 1
        self.writes += 1
        # A direct write whose answer came within the short wait never yielded: a
        # sequential workflow's steps, one after the other, would keep timers, lease
        # renewals and other connections waiting until it ends.
        if self._turns.due():
            await asyncio.sleep(0)
        return values[0]

    def _spawn(self) -> None:
        """Start a flusher, unless one is about to take the queue anyway (or no link is
        free: whoever holds one takes the queue on when done with its batch).

        Writes submitted in the same turn of the loop go out together: the new flusher
        takes the queue when it first runs.
        """
        if self._free and not self._starting:
            self._starting = True
            flusher = asyncio.create_task(self._flush(), name="perdure-group-commit")
            self._flushers.add(flusher)
            if not self._warmed:
                self._warm_links()

    def _warm_links(self) -> None:
        """Connect the links that never were, in the background, once writes first queue
        up: a full batch goes out at once only on a connected link (``_send_now``), and
        the first burst of starts would otherwise find all but one link cold."""
        self._warmed = True
        for link in [link for link in self._free[:-1] if link.cold()]:  # one stays free
            self._free.remove(link)
            task = asyncio.create_task(self._warm(link), name="perdure-group-commit")
            self._flushers.add(task)

    async def _warm(self, link: Link) -> None:
        try:
            with contextlib.suppress(psycopg.Error, OSError):  # the next use tries again
                await link.connection()
        finally:
            self._free.insert(0, link)  # behind the first link (pop() takes the last)
            self._flushers.discard(asyncio.current_task())
        if self._queue:
            self._spawn()

    async def _flush(self) -> None:
        self._starting = False
        if not self._free:  # taken meanwhile by full batches sent at once (_send_now)
            self._flushers.discard(asyncio.current_task())
            return
        await self._drain(self._free.pop())

    async def _drain(self, link: Link) -> None:
        """Run batches on ``link`` until the queue is empty, then free it."""
        try:
            while self._queue:
                await self._flush_one(link)
        finally:
            self._free.append(link)  # nothing can be queued between the loop's end and here
            # Not a done callback: that would be one more callback in the loop's queue
            # when the woken caller submits its next write (see ``_direct``).
            self._flushers.discard(asyncio.current_task())

    def _send_now(self) -> bool:
        """The queue holds a full batch: send it now, from the task that filled it.

        A flusher task runs only after every callback already waiting in the loop: when
        a thousand runs start at once, after all their first steps, which left the
        server idle meanwhile and then the worker idle while the batches ran. Sent as
        soon as it is full, each batch runs on the server while the next one fills. The
        sending does not wait (libpq queues what the socket does not take); a task of
        its own reads the answers, so cancelling the sender cancels none of them. False
        (nothing sent) when no link can take it at once; tried again when the queue holds
        the next full batch.
        """
        if not self._raw or self._db.fault_rate or not self._free:
            return False
        link = self._free[-1]
        conn = link.ready()
        if conn is None:
            return False
        batch = self._queue[: self._max_batch]
        writes = [w for w, _ in batch]
        out = self._compose(writes)
        try:
            encoded = encode_statements(out.statements)
        except TypeError:
            return False  # the flusher's error handling reports it
        del self._queue[: self._max_batch]
        self._free.pop()
        self.eager += 1
        self.statements += len(out.statements)
        failed: psycopg.Error | None = None
        prepared: list[bytes] = []
        try:
            prepared = link.send_batch(conn, out.statements, encoded)
        except psycopg.Error as exc:
            failed = exc  # a lost connection: the batch may have gone out, or not
        task = asyncio.create_task(
            self._finish_sent(link, conn, batch, writes, out, prepared, failed),
            name="perdure-group-commit",
        )
        self._flushers.add(task)
        return True

    async def _finish_sent(
        self,
        link: Link,
        conn: Conn,
        batch: list[tuple[list[Statement], asyncio.Future[list[Any]]]],
        writes: list[list[Statement]],
        out: _Outgoing,
        prepared: list[bytes],
        failed: psycopg.Error | None,
    ) -> None:
        """Settle a batch ``_send_now`` sent, then go on with the queue on its link."""

        async def results() -> list[list[Any]]:
            try:
                if failed is not None:
                    raise failed
                return out.values(await link.sent_results(conn, prepared))
            except _RETRYABLE:  # rolled back: again, as a flusher runs it
                await link.close()
                self._db.retries += 1
                return await link.run(partial(self._run, link, batch=writes))
            except BaseException:
                await link.close()  # its state is unknown; the next use connects anew
                raise

        try:
            await self._settle_batch(link, batch, results())
        except BaseException:  # cancelled (closing): the queue is not ours to go on with
            self._free.append(link)
            self._flushers.discard(asyncio.current_task())
            raise
        await self._drain(link)

    async def _flush_one(self, link: Link) -> None:
        """Take one batch off the queue and run it on ``link``."""
        batch = self._queue[: self._max_batch]
        del self._queue[: self._max_batch]
        if self._queue:
            self._spawn()  # more than one batch is waiting: the next goes out meanwhile
        writes = [w for w, _ in batch]
        await self._settle_batch(link, batch, link.run(partial(self._run, link, batch=writes)))

    async def _settle_batch(
        self,
        link: Link,
        batch: list[tuple[list[Statement], asyncio.Future[list[Any]]]],
        running: Awaitable[list[list[Any]]],
    ) -> None:
        """Await the batch's values and hand each write its own (or the error)."""
        try:
            values = await running
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            # Lost connection, server shutting down, timeouts: the batch may have
            # committed. Sending its writes again would meet their own commits (a
            # step rejected by its own fence); the callers must look it up instead.
            if len(batch) == 1 or isinstance(exc, psycopg.OperationalError):
                for _, future in batch:
                    _settle(future, exc=exc)
            else:
                for write, future in batch:  # one at a time: the link is one connection
                    await self._alone(link, write, future)
            return
        self.transactions += 1
        self.writes += len(batch)
        for (_, future), value in zip(batch, values, strict=True):
            _settle(future, value=value)

    async def _run(
        self, link: Link, conn: Conn, *, batch: list[list[Statement]]
    ) -> list[list[Any]]:
        prepare = self._prepare
        if len(batch) == 1 and len(batch[0]) == 1 and not self._db.fault_rate:
            # Alone: one statement is its own transaction, no BEGIN/COMMIT needed.
            query, params = batch[0][0]
            self.statements += 1
            query = self._alone_query(query, params)
            return [[await link.first(conn, query, prepare(params))]]
        if len(batch) == 1 and not self._db.fault_rate:
            # Alone, several statements (a start and its first step): one transaction.
            self.statements += len(batch[0])
            alone = self._alone_query
            return [await link.firsts(conn, [(alone(q, p), prepare(p)) for q, p in batch[0]])]
        out = self._compose(batch)
        self.statements += len(out.statements)
        if self._raw and not self._db.fault_rate:
            prepared = link.send_batch(conn, out.statements, encode_statements(out.statements))
            return out.values(await link.sent_results(conn, prepared))
        link.handing_to_psycopg()  # the batch goes through psycopg's pipeline
        async with conn.pipeline(), conn.transaction():
            (cursors,) = await _send(conn, [out.statements], _same)
            await self._db.maybe_fail(conn)
        return out.values([cur.pgresult for cur in cursors])

    def _compose(self, batch: list[list[Statement]]) -> _Outgoing:
        """The statements that carry the batch, in order (merged where ``_plan`` says),
        each with where its result goes. Each statement's parameters are ``prepare``d."""
        prepare = self._prepare
        out = _Outgoing([len(write) for write in batch])
        plan = self._plan(batch) if self._merges or self._starts is not None else None
        if plan is None:
            for k, write in enumerate(batch):
                for j, (query, params) in enumerate(write):
                    out.add(query, prepare(params), partial(_first_into, k, j))
            return out
        # The starts as one statement, then the statements that go alone, then each
        # kind of step as one statement.
        merged = set(plan.starts).union(*plan.steps)
        if plan.starts:
            assert self._starts is not None
            opened = [(k, j, batch[k][j][1].get("run_id")) for k, j in plan.starts]
            params = self._starts.combine([prepare(batch[k][j][1]) for k, j in plan.starts])
            out.add(self._starts.many, params, partial(_inserted_into, opened))
        for k, write in enumerate(batch):
            for j, (query, params) in enumerate(write):
                if (k, j) not in merged:
                    out.add(query, prepare(params), partial(_first_into, k, j))
        for merge, group in zip(self._merges, plan.steps, strict=True):
            if group:
                params = merge.combine([prepare(batch[k][j][1]) for k, j in group])
                out.add(merge.many, params, partial(_applied_into, group, merge))
        return out

    def _plan(self, batch: list[list[Statement]]) -> _Plan | None:
        """Which statements of the batch go into a ``many`` statement; None if none do.

        A step goes with the other steps of its kind (``merges``: lean, closing), and a
        start that opens a write (its run's first step may follow, or nothing: a client's
        start) with the other starts, when there are at least two of a kind (one alone is
        cheaper as it is).
        """
        starts = self._starts
        steps: list[list[tuple[int, int]]] = [[] for _ in self._merges]
        opening: list[tuple[int, int]] = []
        run_ids: set[Any] = set()
        for k, write in enumerate(batch):
            first = write[0]
            opened = False
            if starts is not None and first[0] is starts.single:
                run_id = first[1].get("run_id")
                if run_id not in run_ids:  # the inserted run ids tell the starts apart
                    run_ids.add(run_id)
                    opening.append((k, 0))
                    opened = True
            if len(write) == 1 or opened:
                query, params = write[-1]
                for m, merge in enumerate(self._merges):
                    if query is merge.single and merge.accepts(params):
                        steps[m].append((k, len(write) - 1))
                        break
        steps = [group if len(group) > 1 else [] for group in steps]
        if len(opening) < 2:
            opening = []
        if not any(steps) and not opening:
            return None
        return _Plan(steps, opening)

    async def close(self) -> None:
        self._warmed = True  # no link connects in the background from now on
        # A flusher still connecting would open a connection after its link was closed.
        flushers = list(self._flushers)
        for flusher in flushers:
            flusher.cancel()
        await asyncio.gather(*flushers, return_exceptions=True)
        for link in self._links:
            await link.close()

    async def _alone(
        self, link: Link, write: list[Statement], future: asyncio.Future[list[Any]]
    ) -> None:
        try:
            values = await link.run(partial(self._run, link, batch=[write]))
        except Exception as exc:
            _settle(future, exc=exc)
        else:
            self.transactions += 1
            self.writes += 1
            _settle(future, value=values[0])


async def pipelined(
    conn: Conn,
    writes: list[list[Statement]],
    prepare: Callable[[dict[str, Any]], dict[str, Any]],
    before_commit: Callable[[Conn], Awaitable[None]] | None = None,
) -> list[list[Any]]:
    """Run the writes in ONE transaction: BEGIN, the statements and COMMIT go out together
    (one round trip, one commit). The first column of each statement's first row."""
    async with conn.pipeline(), conn.transaction():
        cursors = await _send(conn, writes, prepare)
        if before_commit is not None:
            await before_commit(conn)
    return await _firsts(cursors)


_Cursors = list[list[AsyncRawCursor[tuple[Any, ...]]]]


@dataclass(frozen=True, slots=True)
class _Plan:
    """A batch's statements that go into ``many`` statements, as (write, statement)."""

    steps: list[list[tuple[int, int]]]  # per Merge of the GroupCommit
    starts: list[tuple[int, int]]


class _Outgoing:
    """A batch as the statements that go out, and where each one's result goes."""

    __slots__ = ("fills", "shape", "statements")

    def __init__(self, shape: list[int]) -> None:
        self.shape = shape  # statements per write
        self.statements: list[Statement] = []
        self.fills: list[Callable[[list[list[Any]], Any], None]] = []

    def add(
        self, query: RawQuery, params: dict[str, Any], fill: Callable[[list[list[Any]], Any], None]
    ) -> None:
        self.statements.append((query, params))
        self.fills.append(fill)

    def values(self, results: list[Any]) -> list[list[Any]]:
        """Each write's values (the first column of each of its statements' first row)
        from the results (libpq's) of the statements, in order."""
        values: list[list[Any]] = [[None] * n for n in self.shape]
        for fill, result in zip(self.fills, results, strict=True):
            fill(values, result)
        return values


def _first_into(k: int, j: int, values: list[list[Any]], result: Any) -> None:
    values[k][j] = _first_value(result)


def _inserted_into(
    opened: list[tuple[int, int, Any]], values: list[list[Any]], result: Any
) -> None:
    """A ``StartMerge``'s result: the ids of the runs it inserted."""
    inserted = {bytes(result.get_value(row, 0)).decode() for row in range(result.ntuples)}
    for k, j, run_id in opened:
        values[k][j] = 1 if run_id in inserted else None


def _applied_into(
    group: list[tuple[int, int]], merge: Merge, values: list[list[Any]], result: Any
) -> None:
    """A ``Merge``'s result: the position of each write that applied."""
    applied = {int(result.get_value(row, 0)) for row in range(result.ntuples)}
    for position, (k, j) in enumerate(group):
        values[k][j] = merge.applied if position in applied else merge.missed


async def _send(
    conn: Conn, writes: list[list[Statement]], prepare: Callable[[dict[str, Any]], dict[str, Any]]
) -> _Cursors:
    """Queue each write's statements in the open pipeline; their cursors, per write."""
    cursors: _Cursors = []
    for write in writes:
        mine = []
        for query, params in write:
            cur = AsyncRawCursor(conn, row_factory=tuple_row)
            await cur.execute(query.text, query.args(prepare(params)))
            mine.append(cur)
        cursors.append(mine)
    return cursors


async def _firsts(cursors: _Cursors) -> list[list[Any]]:
    """The first column of each statement's first row, per write."""
    return [[_first(await cur.fetchone()) for cur in mine] for mine in cursors]


def _first(row: tuple[Any, ...] | None) -> Any:
    return None if row is None else row[0]


async def _generic_plans(conn: Conn) -> None:
    """Plan each prepared statement once per connection (PostgreSQL).

    perdure's statements are index lookups whose best plan does not depend on the
    values. Left to choose, PostgreSQL plans the step statement (a dozen CTEs) anew at
    nearly every execution, and that planning costs more than running it.
    """
    await conn.execute("SET plan_cache_mode = force_generic_plan")


async def _still_connected(conn: Conn) -> None:
    """The pool's check of a connection it hands out; nearly free.

    An idle connection has nothing to read unless the server sent something on its own:
    most likely that it is closing the connection (a restart, an administrator, an idle
    timeout). Only then is the connection tried, and dropped by the pool if it is gone.
    """
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("the connection is closed")
    if _readable(conn.fileno()):
        await conn.execute("")


def _readable(fd: int, wait_ms: int = 0) -> bool:
    """Whether ``fd`` has something to read (or hit end of file), waiting at most
    ``wait_ms`` milliseconds (blocking the thread)."""
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            return bool(poller.poll(wait_ms))
        return bool(select.select([fd], [], [], wait_ms / 1000)[0])
    except (OSError, ValueError):
        return True


def _same(params: dict[str, Any]) -> dict[str, Any]:
    return params


def _as_sent(query: RawQuery, params: dict[str, Any]) -> RawQuery:
    return query


def _settle(
    future: asyncio.Future[Any], *, value: Any = None, exc: BaseException | None = None
) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(value)
