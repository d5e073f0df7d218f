"""The PostgreSQL store (psycopg 3, async, a connection pool; LISTEN/NOTIFY wake-ups).

Tables live in their own schema (``perdure``, or ``?schema=...`` in the URL) with the
SQLite store's table and column names. Every method is one transaction; a workflow step
is one statement (``commit_step`` in queries.sql), and concurrent steps are committed
together (group commit) unless the URL says ``group_commit=off``.
"""

from __future__ import annotations

import asyncio
import os
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime
from functools import partial
from typing import Any

from psycopg import AsyncClientCursor, errors

from perdure._errors import WorkflowAlreadyStartedError, WorkflowNotFoundError
from perdure._history import HistoryEvent
from perdure._store._base import (
    ActivityProgress,
    ActivityTask,
    InboxItem,
    ListFilter,
    NewRun,
    RemoteTask,
    RunRecord,
    ScheduleDecision,
    ScheduleRecord,
    StepCommit,
    StepRejected,
    Store,
    utcnow,
)
from perdure._store._postgres_db import (
    ByRun,
    Conn,
    Database,
    Dedicated,
    Gathered,
    GroupCommit,
    Listener,
    Merge,
    RawQuery,
    Settings,
    StartMerge,
    Statement,
    dialect_queries,
    in_schema,
    parse_url,
    pipelined,
    text_array,
)
from perdure._store._postgres_tx import (
    HISTORY_NEXT_SEQ,
    Row,
    Statements,
    closed_start_params,
    closes_at_start,
    dumps,
    event_from_row,
    inbox_from_row,
    inbox_params,
    is_plain,
    mergeable,
    mergeable_close,
    mergeable_held,
    merged_close_params,
    merged_closed_starts,
    merged_held_params,
    merged_message_params,
    merged_start_params,
    merged_step_params,
    not_running,
    plain_start,
    plain_step_params,
    progress_params,
    remote_task_from_row,
    run_from_row,
    schedule_from_row,
    schedule_params,
    start_insert,
    start_params,
    task_from_row,
    touches_no_other_rows,
)
from perdure._store._queries import migration_files


class PostgresStore(Store):
    """``App("postgresql://user:pw@host/db?schema=perdure&pool_max_size=10")``."""

    dialect = "postgres"
    _query_dialects: tuple[str, ...] = ("postgres",)
    _default_port: int | None = None

    def __init__(self, url: str) -> None:
        self.url = url
        self.settings: Settings = parse_url(url, default_port=self._default_port)
        self.schema = self.settings.schema
        self.q = dialect_queries(self._query_dialects, self.schema)
        self.tx = Statements(self.q, bulk_starts=self.dialect == "postgres")
        self.db = Database(
            self.settings,
            fault_rate=self._fault_rate(),
            generic_plans=self.dialect == "postgres",
        )
        self._listener: Listener | None = None
        self._step_query = RawQuery.parse(self.q["commit_step"])  # a step that closes its run
        self._lean_query = RawQuery.parse(self.q["commit_step_lean"])  # any other plain step
        self._slim_query = RawQuery.parse(self.q["commit_step_slim"])  # a lean one, alone
        # A slim one of a run that stays due: its events only (PostgreSQL; CockroachDB
        # sends its steps as several statements, commit_step below is not its own).
        self._held_query = (
            RawQuery.parse(self.q["commit_step_held"]) if self.dialect == "postgres" else None
        )
        # Steps committed together go out as one statement per kind (lean, closing),
        # and so do the starts of runs whose first steps they are.
        lean = Merge(
            self._lean_query,
            RawQuery.parse(self.q["commit_steps_lean"]),
            mergeable,
            merged_step_params,
        )
        closing = Merge(
            self._step_query,
            RawQuery.parse(self.q["commit_steps_close"]),
            mergeable_close,
            merged_close_params,
        )
        self._start_query = RawQuery.parse(start_insert(self.q["insert_run"]))
        self._message_query = RawQuery.parse(self.q["insert_inbox_running"])
        self._finish_query = RawQuery.parse(self.q["finish_remote_task_report"])
        # Messages from clients (signals, cancels, updates) go out as one statement per
        # batch too (PostgreSQL; CockroachDB sends each on its own).
        messages = Merge(
            self._message_query,
            RawQuery.parse(self.q["insert_inbox_many"]),
            _every_write,
            merged_message_params,
        )
        starts = StartMerge(
            self._start_query, RawQuery.parse(self.q["insert_runs"]), merged_start_params
        )
        # Runs that their first step also ends, inserted closed (PostgreSQL): the one-run
        # statement is the many-run one's text returning 1 instead of the position.
        self._closed_start_query: RawQuery | None = None
        merges: tuple[Merge, ...] = (lean, closing)
        if self.dialect == "postgres":
            # Lean steps of runs that stay due: their events only (before ``lean``, which
            # takes the same statement: the first merge that accepts a write gets it).
            held = Merge(
                self._lean_query,
                RawQuery.parse(self.q["commit_steps_held"]),
                mergeable_held,
                merged_held_params,
                applied=_ROW_KEPT,
                missed=None,
            )
            closed_many = self.q["insert_runs_closed"].rstrip().rstrip(";")
            positions = "r.i FROM r JOIN ins ON ins.run_id = r.run_id"
            assert closed_many.endswith(positions)
            single = closed_many.removesuffix(positions) + "1 FROM ins"
            self._closed_start_query = RawQuery.parse(single)
            closed_starts = Merge(
                self._closed_start_query,
                RawQuery.parse(closed_many),
                _every_write,
                merged_closed_starts,
            )
            merges = (held, lean, closing, messages, closed_starts)
        self._group = GroupCommit(
            self.db,
            prepare=_fresh_lease,
            merges=merges,
            starts=starts,
            alone=self._alone_query,
            raw=self.dialect == "postgres",
            links=self.settings.group_commit_connections,
        )
        # The lease loop's statements: never queued behind the pool (see Dedicated).
        self._lease_conn = Dedicated(self.db)
        self._migrated = False
        self._migrate_lock = asyncio.Lock()
        # A batch of claimed runs being resumed: each kind of read as one query (ByRun).
        self._histories = ByRun(self.db, self.q["load_histories"])
        self._runs_tasks = ByRun(self.db, self.q["load_runs_tasks"])
        self._runs_inbox = ByRun(self.db, self.q["runs_inbox"])
        # Clients asking for the latest runs of many workflow ids at once (a thousand
        # handles awaiting their results): one query for them all (LatestRuns).
        self._latest_runs = LatestRuns(self.db, self.q["latest_runs"])
        self._runs_by_id = ByRun(self.db, self.q["get_runs"])  # get_run_by_id, batched

    def _fault_rate(self) -> float:
        return 0.0

    def _sql(self, text: str) -> str:
        return in_schema(text, self.schema)

    # -- schema ----------------------------------------------------------
    async def migrate(self) -> None:
        async with self._migrate_lock:
            if not self._migrated:
                await self._check_server()
                await self.db.transaction(self._apply_migrations)
                self._migrated = True

    async def _server_version(self) -> str:
        async def read(conn: Conn) -> str:
            row = await (await conn.execute("SELECT version() AS v")).fetchone()
            return str(row["v"]) if row else ""

        return await self.db.read(read)

    async def _check_server(self) -> None:
        if "cockroachdb" in (await self._server_version()).lower():
            raise ValueError(
                f"{self.url!r} points at a CockroachDB server: use a cockroachdb:// URL "
                "(CockroachDB has no LISTEN/NOTIFY, triggers or advisory locks)"
            )

    async def _apply_migrations(self, conn: Conn) -> None:
        # Several processes may migrate at once: the first holds this lock until it commits,
        # the others then find the migrations applied.
        key = zlib.crc32(f"perdure.migrate.{self.schema}".encode())
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
        if not await self._schema_exists(conn):  # a user may have a schema, not CREATE
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}".encode())
        await conn.execute(
            self._sql(
                "CREATE TABLE IF NOT EXISTS perdure.schema_version (version integer PRIMARY KEY,"
                " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
        )
        cur = await conn.execute(self._sql("SELECT version FROM perdure.schema_version"))
        applied = {r["version"] for r in await cur.fetchall()}
        for version, name, text in migration_files(self.dialect):
            if version not in applied:
                await conn.execute(self._sql(text).encode())  # several statements, no params
                await conn.execute(
                    self._sql("INSERT INTO perdure.schema_version (version, name) VALUES (%s, %s)"),
                    (version, name),
                )

    async def _schema_exists(self, conn: Conn) -> bool:
        cur = await conn.execute(
            "SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = %s", (self.schema,)
        )
        return await cur.fetchone() is not None

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        await self._lease_conn.close()
        await self._group.close()
        await self.db.close()

    # -- wake-ups --------------------------------------------------------
    async def listen(self, callback: Callable[[], None]) -> None:
        if self._listener is None:
            self._listener = Listener(self.settings.conninfo, self.settings.channel)
        await self._listener.add(callback)

    async def unlisten(self, callback: Callable[[], None]) -> None:
        if self._listener is not None:
            await self._listener.remove(callback)

    # -- client side -----------------------------------------------------
    async def start_run(self, run: NewRun) -> tuple[str, bool]:
        # A client's start (no worker of this process takes the run): an insert that skips
        # a taken id, through group commit, like a start that goes with its first step.
        # Starts arriving together share a statement and a commit. If the id is taken, the
        # transaction below applies the id policies to the run holding it.
        if (
            self.settings.group_commit
            and plain_start(run)
            and (await self._group.submit((self._start_query, start_params(run))))[0] == 1
        ):
            return run.run_id, True
        return await self._starting(run, lambda conn: self.tx.insert_run(conn, run))

    async def signal_with_start(
        self, run: NewRun, signal: str, payload: list[Any]
    ) -> tuple[str, bool]:
        async def tx(conn: Conn) -> tuple[str, bool]:
            run_id, created = await self.tx.insert_run(conn, run)
            await self.tx.insert_inbox(
                conn, run.namespace, run.workflow_id, run_id, "signal", signal, payload
            )
            return run_id, created

        return await self._starting(run, tx)

    async def _starting(self, run: NewRun, tx: Callable[[Conn], Any]) -> tuple[str, bool]:
        # Two concurrent starts of one id can both pass the policy checks; the unique index
        # stops the second, and running it again applies the policies to the winner's run.
        for _ in range(3):
            try:
                result: tuple[str, bool] = await self.db.transaction(tx)
                return result
            except errors.UniqueViolation as exc:
                lost: Exception = exc
        raise WorkflowAlreadyStartedError(
            f"workflow {run.workflow_id!r} is being started concurrently by others; try again",
            workflow_id=run.workflow_id,
            workflow_type=run.workflow_type,
        ) from lost

    async def terminate_run(
        self, namespace: str, workflow_id: str, run_id: str | None, reason: str
    ) -> str:
        async def tx(conn: Conn) -> str:
            row = await self.tx.running_row(conn, namespace, workflow_id, run_id)
            await self.tx.terminate(conn, row, reason)
            return str(row["run_id"])

        return await self.db.transaction(tx)

    async def take_reply(self, reply_id: str) -> dict[str, Any] | None:
        rows = await self._write_all(self.q["take_reply"], {"reply_id": reply_id})
        return dict(rows[0]["outcome"]) if rows else None

    async def get_run(
        self, namespace: str, workflow_id: str, run_id: str | None = None
    ) -> RunRecord | None:
        if run_id is not None:
            record = await self.get_run_by_id(run_id)
            if record is None or record.workflow_id != workflow_id:
                return None
            return record if record.namespace == namespace else None
        row = await self._latest_run(namespace, workflow_id)
        return None if row is None else run_from_row(row)

    async def _latest_run(self, namespace: str, workflow_id: str) -> Row | None:
        """The row of ``workflow_id``'s newest run; on PostgreSQL through ``LatestRuns``
        (batched, and planned with the table's size at the time)."""
        if self.dialect == "postgres":
            return await self._latest_runs.row(namespace, workflow_id)
        key = {"namespace": namespace, "workflow_id": workflow_id}
        return await self._one(self.q["latest_run"], key)

    async def get_run_by_id(self, run_id: str) -> RunRecord | None:
        # Batched (ByRun): a thousand handles from start_workflow awaiting their results
        # in a process without the worker each read their run; one query reads them all.
        rows = await self._runs_by_id.rows(run_id)
        return run_from_row(rows[0]) if rows else None

    async def closed_runs(self, run_ids: list[str]) -> set[str]:
        rows = await self._all(self.q["closed_runs"], {"run_ids": text_array(run_ids)})
        return {r["run_id"] for r in rows}

    async def list_runs(self, flt: ListFilter) -> list[RunRecord]:
        clauses = ["namespace = %s"]
        params: list[Any] = [flt.namespace]
        if flt.status is not None:
            clauses.append("status = %s")
            params.append(flt.status)
        if flt.workflow_type is not None:
            clauses.append("workflow_type = %s")
            params.append(flt.workflow_type)
        if flt.workflow_id is not None:
            clauses.append("workflow_id = %s")
            params.append(flt.workflow_id)
        if flt.workflow_id_prefix is not None:
            clauses.append("substr(workflow_id, 1, %s) = %s")
            params += [len(flt.workflow_id_prefix), flt.workflow_id_prefix]
        for key, value in flt.search_attributes.items():
            clauses.append("search_attributes -> %s = %s::jsonb")
            params += [key, dumps(value)]
        query = self._sql(
            f"SELECT *, {HISTORY_NEXT_SEQ} FROM perdure.workflows w WHERE "
            + " AND ".join(clauses)
            + " ORDER BY created_at DESC, run_id DESC"
        )
        if flt.limit is not None:
            query += " LIMIT %s"
            params.append(flt.limit)
        return [run_from_row(r) for r in await self._all(query, params)]

    async def load_history(self, run_id: str) -> list[HistoryEvent]:
        return [event_from_row(r) for r in await self._histories.rows(run_id)]

    async def send_inbox(
        self,
        namespace: str,
        workflow_id: str,
        run_id: str | None,
        kind: str,
        name: str | None,
        payload: list[Any],
    ) -> None:
        if self.settings.group_commit:
            # One statement, committed with the other writes of its batch: a thousand
            # signals in flight are a few transactions, not a thousand.
            params = inbox_params(namespace, workflow_id, run_id, kind, name, payload)
            (sent,) = await self._group.submit((self._message_query, params))
            if sent != 1:
                latest = await self._latest_run(namespace, workflow_id)
                raise not_running(workflow_id, run_id, latest)
            return

        async def tx(conn: Conn) -> None:
            await self.tx.running_row(conn, namespace, workflow_id, run_id)
            await self.tx.insert_inbox(conn, namespace, workflow_id, run_id, kind, name, payload)

        try:
            await self.db.transaction(tx)
        except errors.NoDataFound:  # the run closed between the check and the insert
            raise WorkflowNotFoundError(
                f"no running workflow with id {workflow_id!r}"
                + (f" and run id {run_id!r}" if run_id else "")
            ) from None

    # -- worker side -----------------------------------------------------
    async def claim_runs(
        self,
        *,
        namespace: str,
        worker_id: str,
        task_queues: list[str],
        workflow_types: list[str],
        limit: int,
        lease_until: datetime,
    ) -> list[RunRecord]:
        params = {
            "namespace": namespace,
            "worker_id": worker_id,
            "task_queues": task_queues,
            "workflow_types": workflow_types,
            "limit": limit,
        }
        rows = await self._claim(self.q["claim_runs"], params, lease_until)
        return [run_from_row(r) for r in rows]

    async def load_tasks(self, run_id: str) -> list[ActivityTask]:
        return [task_from_row(r) for r in await self._runs_tasks.rows(run_id)]

    async def load_run_inbox(self, run_id: str) -> list[InboxItem]:
        return [inbox_from_row(r) for r in await self._runs_inbox.rows(run_id)]

    async def owned_inbox(self, worker_id: str, after_id: int = 0) -> list[InboxItem]:
        params = {"worker_id": worker_id, "after_id": after_id}
        rows = await self._all(self.q["owned_inbox"], params)
        return [inbox_from_row(r) for r in rows]

    async def commit_step(self, step: StepCommit) -> None:
        if not is_plain(step):
            await self._commit_in_transaction(step)
            return
        # Most steps touch only their own run's rows: one statement, grouped with others;
        # a run's first step goes with its start (an insert that skips a taken id).
        if self._closed_start_query is not None and closes_at_start(step):
            await self._commit_closed_start(step, self._closed_start_query)
            return
        params = plain_step_params(step)
        if step.lease_until is not None:  # counted from the commit, not the call (_claim)
            params["lease_ttl"] = step.lease_until - utcnow()
        query = self._lean_query if step.close is None else self._step_query
        if query is self._lean_query and self._stays_due(step):
            params["held"] = True  # the events alone, if it goes alone (_alone_query)
        statements: list[Statement] = [(query, params)]
        if step.start is not None:
            start = start_params(step.start)
            if step.start.lease_until is not None:
                start["lease_ttl"] = step.start.lease_until - utcnow()
            statements.insert(0, (self._start_query, start))
        fenced = (await self._send_step(statements))[-1]
        if fenced is None and params.pop("held", False) and step.start is None:
            # commit_step_held found the run not due, or not this worker's: the slim
            # statement decides (and moves the row on). (A start's first step is held
            # only when its fresh row passes the fence: no row means the insert skipped
            # a taken id and wrote nothing; the id policies decide, below.)
            fenced = (await self._send_step(statements))[-1]
        if fenced == 1:
            return
        if fenced == _ROW_KEPT:
            step.row_kept = step.start is None  # a start's insert wrote the lease
            return
        if step.start is not None:  # the id is taken: the id policies decide
            await self._commit_in_transaction(step)
            return
        raise StepRejected(step.run_id)

    def _stays_due(self, step: StepCommit) -> bool:
        """A step that may leave its run's row as it is (``commit_step_held``): the run
        stays this worker's and due, and nothing of the row changes (no search attribute,
        no close, no release)."""
        wake_at, start = step.wake_at, step.start
        return (
            self._held_query is not None
            and wake_at is not None
            and not step.release
            and not step.search_attributes
            and wake_at <= utcnow()
            # a run started with this step: inserted due and this worker's (then its
            # row passes the held fence, unless the insert skipped a taken id)
            and (
                start is None
                or (
                    start.owner == step.worker_id
                    and start.wake_at is not None
                    and start.wake_at <= wake_at
                )
            )
        )

    async def _send_step(self, statements: list[Statement]) -> list[Any]:
        if self.settings.group_commit:
            return await self._group.submit(*statements)
        statements = [(self._alone_query(query, params), params) for query, params in statements]
        return await self.db.statement(partial(self._alone, statements))

    async def _commit_closed_start(self, step: StepCommit, query: RawQuery) -> None:
        """A run that its first step ends, inserted closed (``insert_runs_closed``); if its
        workflow id is running or an update waits for it, the whole transaction decides."""
        statement: Statement = (query, closed_start_params(step))
        if self.settings.group_commit:
            values = await self._group.submit(statement)
        else:
            values = await self.db.statement(partial(self._alone, [statement]))
        if values[-1] != 1:
            await self._commit_in_transaction(step)

    def _alone_query(self, query: RawQuery, params: dict[str, Any]) -> RawQuery:
        """The statement for a write that goes alone: a lean step with no task rows to add
        or delete and no message to consume takes ``commit_step_slim`` (less server work),
        or ``commit_step_held`` if its run stays due (``_stays_due``: less again)."""
        if query is self._lean_query and touches_no_other_rows(params):
            held = self._held_query
            return held if held is not None and params.get("held") else self._slim_query
        return query

    @staticmethod
    async def _alone(statements: list[Statement], conn: Conn) -> list[Any]:
        """Without group commit: the statements in one transaction, pipelined."""
        if len(statements) == 1:
            query, params = statements[0]
            return [await query.first(conn, _fresh_lease(params))]
        return (await pipelined(conn, [statements], _fresh_lease))[0]

    async def _commit_in_transaction(self, step: StepCommit) -> None:
        # A step that also starts its run can meet a concurrent start of the same id: the
        # unique index stops one, and running it again applies the id policies.
        tx = self._step_tx(step)
        for attempt in range(3):
            try:
                await self.db.transaction(tx)
                return
            except errors.UniqueViolation:
                if step.start is None or attempt == 2:
                    raise

    def _step_tx(self, step: StepCommit) -> Callable[[Conn], Awaitable[None]]:
        """A step's transaction; its lease counts from the commit, not the call (_claim)."""
        ttl = None if step.lease_until is None else step.lease_until - utcnow()

        async def tx(conn: Conn) -> None:
            fresh = step if ttl is None else replace(step, lease_until=utcnow() + ttl)
            await self.tx.commit_step(conn, fresh)

        return tx

    async def retry_activity(
        self,
        *,
        run_id: str,
        worker_id: str,
        activity: ActivityProgress,
        visible_at: datetime,
        last_failure: dict[str, Any],
    ) -> None:
        params = {
            **progress_params(run_id, activity),
            "worker_id": worker_id,
            "visible_at": visible_at,
            "last_failure": dumps(last_failure),
        }
        if await self._write(self.q["retry_task"], params) != 1:
            raise StepRejected(run_id)

    async def claim_activity_tasks(
        self,
        *,
        namespace: str,
        worker_id: str,
        task_queues: list[str],
        activity_types: list[str],
        limit: int,
        lease_until: datetime,
    ) -> list[RemoteTask]:
        params = {
            "namespace": namespace,
            "worker_id": worker_id,
            "task_queues": task_queues,
            "activity_types": activity_types,
            "limit": limit,
        }
        rows = await self._claim(self.q["claim_activity_tasks"], params, lease_until)
        return [remote_task_from_row(r) for r in rows]

    async def finish_remote_task(
        self, task: RemoteTask, worker_id: str, outcome: dict[str, Any]
    ) -> bool:
        report = task.report(outcome)
        if self.settings.group_commit:
            # One statement, committed with the other writes of its batch: the outcomes of
            # the activities a worker finishes together are one transaction, not one each.
            params = inbox_params(*report)
            params["activity_id"] = task.activity_id
            params["worker_id"] = worker_id
            (finished,) = await self._group.submit((self._finish_query, params))
            return bool(finished == 1)

        async def tx(conn: Conn) -> bool:
            key = {"run_id": task.run_id, "activity_id": task.activity_id, "worker_id": worker_id}
            if (await conn.execute(self.q["finish_remote_task"], key)).rowcount != 1:
                return False
            await self.tx.insert_inbox(conn, *report)
            return True

        return await self.db.transaction(tx)

    async def retry_remote_task(
        self,
        task: RemoteTask,
        worker_id: str,
        *,
        attempt: int,
        visible_at: datetime,
        heartbeat_details: list[Any],
        last_failure: dict[str, Any],
    ) -> None:
        params = {
            "run_id": task.run_id,
            "activity_id": task.activity_id,
            "worker_id": worker_id,
            "attempt": attempt,
            "visible_at": visible_at,
            "heartbeat_details": dumps(heartbeat_details),
            "last_failure": dumps(last_failure),
        }
        await self._write(self.q["retry_remote_task"], params)

    async def release_tasks(self, worker_id: str) -> None:
        await self._write(self.q["release_tasks"], {"worker_id": worker_id})

    async def save_heartbeat(self, run_id: str, activity: ActivityProgress) -> None:
        await self._lease_write(self.q["save_heartbeat"], progress_params(run_id, activity))

    async def renew_leases(self, worker_id: str, lease_until: datetime) -> dict[str, bool]:
        ttl = lease_until - utcnow()

        async def statements(conn: Conn) -> dict[str, bool]:
            params = {"worker_id": worker_id, "lease_until": utcnow() + ttl}
            # Two statements, each its own transaction: no lock outlives its statement.
            await conn.execute(self.q["renew_task_leases"], params)
            rows = await (await conn.execute(self.q["renew_leases"], params)).fetchall()
            return {r["run_id"]: r["renewed"] for r in rows}

        return await self._lease_conn.statements(statements)

    async def release_run(self, run_id: str, worker_id: str, wake_at: datetime | None) -> None:
        params = {"run_id": run_id, "worker_id": worker_id, "wake_at": wake_at}
        await self._write(self.q["release_run"], params)

    async def park_run(self, run_id: str, worker_id: str, error: str) -> None:
        params = {"run_id": run_id, "worker_id": worker_id, "parked_error": error}
        await self._write(self.q["park_run"], params)

    async def unpark_runs(self, namespace: str, workflow_types: list[str]) -> int:
        params = {"namespace": namespace, "workflow_types": workflow_types, "now": utcnow()}
        return await self._write(self.q["unpark_runs"], params)

    async def register_worker(
        self, *, worker_id: str, namespace: str, hostname: str, pid: int, task_queues: list[str]
    ) -> None:
        params = {
            "worker_id": worker_id,
            "namespace": namespace,
            "hostname": hostname,
            "pid": pid,
            "task_queues": dumps(task_queues),
            "now": utcnow(),
        }
        await self._lease_write(self.q["upsert_worker"], params)

    async def deregister_worker(self, worker_id: str) -> None:
        await self._write(self.q["delete_worker"], {"worker_id": worker_id})

    # -- helpers: one statement, one transaction ---------------------------
    @staticmethod
    async def _fetch_one(conn: Conn, query: str, params: Any) -> Row | None:
        return await (await conn.execute(query, params)).fetchone()

    async def _one(self, query: str, params: Any) -> Row | None:
        return await self.db.read(lambda conn: self._fetch_one(conn, query, params))

    async def _all(self, query: str, params: Any) -> list[Row]:
        async def read(conn: Conn) -> list[Row]:
            return await (await conn.execute(query, params)).fetchall()

        return await self.db.read(read)

    async def _write(self, query: str, params: Any) -> int:
        async def tx(conn: Conn) -> int:
            return (await conn.execute(query, params)).rowcount

        return await self.db.statement(tx)

    # -- schedules -------------------------------------------------------
    async def create_schedule(self, schedule: ScheduleRecord) -> None:
        if not await self._write(self.q["insert_schedule"], schedule_params(schedule)):
            raise ValueError(
                f"schedule {schedule.schedule_id!r} already exists; delete it first "
                "(app.get_schedule(...).delete()) to replace it"
            )

    async def get_schedule(self, namespace: str, schedule_id: str) -> ScheduleRecord | None:
        key = {"namespace": namespace, "schedule_id": schedule_id}

        async def read(conn: Conn) -> ScheduleRecord | None:
            row = await self.tx.one(conn, "get_schedule", key)
            return None if row is None else schedule_from_row(row)

        return await self.db.read(read)

    async def list_schedules(self, namespace: str) -> list[ScheduleRecord]:
        async def read(conn: Conn) -> list[ScheduleRecord]:
            rows = await self.tx.all(conn, "list_schedules", {"namespace": namespace})
            return [schedule_from_row(r) for r in rows]

        return await self.db.read(read)

    async def delete_schedule(self, namespace: str, schedule_id: str) -> bool:
        key = {"namespace": namespace, "schedule_id": schedule_id}
        return bool(await self._write(self.q["delete_schedule"], key))

    async def due_schedules(self, namespace: str, now: datetime, limit: int) -> list[str]:
        params = {"namespace": namespace, "now": now, "limit": limit}

        async def read(conn: Conn) -> list[str]:
            return [r["schedule_id"] for r in await self.tx.all(conn, "due_schedules", params)]

        return await self.db.read(read)

    async def change_schedule(
        self,
        namespace: str,
        schedule_id: str,
        decide: ScheduleDecision,
        *,
        skip_locked: bool = False,
    ) -> tuple[bool, list[NewRun]]:
        async def tx(conn: Conn) -> tuple[bool, list[NewRun]]:
            return await self.tx.change_schedule(conn, namespace, schedule_id, decide, skip_locked)

        return await self.db.transaction(tx)

    async def _lease_write(self, query: str, params: Any) -> int:
        async def tx(conn: Conn) -> int:
            return (await conn.execute(query, params)).rowcount

        return await self._lease_conn.statements(tx)

    async def _claim(self, query: str, params: dict[str, Any], lease_until: datetime) -> list[Row]:
        """Claim rows with a lease as long as asked, counted from when the claim runs.

        Under load a claim can wait seconds for a pooled connection: a lease counted
        from the call would be over, or nearly, by the time it is written, and another
        worker would take the rows straight back (and run their activities again).
        """
        ttl = lease_until - utcnow()

        async def tx(conn: Conn) -> list[Row]:
            now = utcnow()
            timed = {**params, "now": now, "lease_until": now + ttl}
            return await (await conn.execute(query, timed)).fetchall()

        return await self.db.statement(tx)

    async def _write_all(self, query: str, params: Any) -> list[Row]:
        async def tx(conn: Conn) -> list[Row]:
            return await (await conn.execute(query, params)).fetchall()

        return await self.db.statement(tx)


# What commit_step_held returns when it applied: the step's events are in, the run's
# row was left as it was (its lease and next_event_seq trail; StepCommit.row_kept).
_ROW_KEPT = 2


def _fresh_lease(params: dict[str, Any]) -> dict[str, Any]:
    """A step's parameters with its lease counted from now (``lease_ttl`` if it has one)."""
    ttl = params.get("lease_ttl")
    return params if ttl is None else {**params, "lease_until": utcnow() + ttl}


def emulating_cockroach() -> bool:
    """Tests only: run the CockroachDB code paths against a PostgreSQL server."""
    return os.environ.get("PERDURE_TEST_COCKROACH_EMULATION", "") not in ("", "0")


def _every_write(params: dict[str, Any]) -> bool:
    """Every write of the kind can go in its ``many`` statement (messages in
    ``insert_inbox_many``, closed starts in ``insert_runs_closed``)."""
    return True


class LatestRuns(Gathered[tuple[str, str], Row | None]):
    """``latest_run`` of many workflow ids asked for together: ONE query for them all
    (per namespace), as ``ByRun`` does for reads by run.

    A thousand handles awaiting their results each look up their workflow's latest run:
    one pooled round trip each cost the client more CPU (the pool's wait queue, the
    cursor) than anything else it did for them.

    The query's values are bound on the client, so the server plans it at each execution
    with the table's size at that time: a plan kept from when the table was nearly empty
    may find a workflow's runs by the namespace alone (``workflows_by_created``) and read
    every run of the namespace for each id. Planning once per batch costs little.
    """

    _task_name = "perdure-latest-runs"

    def __init__(self, db: Database, query: str) -> None:
        super().__init__()
        self._db = db
        self._query = query

    async def row(self, namespace: str, workflow_id: str) -> Row | None:
        """The latest run's row of ``workflow_id`` in ``namespace``, if any."""
        return await self._get((namespace, workflow_id))

    async def _fetch(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], Row | None]:
        ids: dict[str, list[str]] = {}
        for namespace, workflow_id in keys:
            ids.setdefault(namespace, []).append(workflow_id)
        found: dict[tuple[str, str], Row | None] = {}
        for namespace, workflow_ids in ids.items():
            params = {"namespace": namespace, "workflow_ids": workflow_ids}
            for row in await self._db.read(partial(self._rows, params)):
                found[(namespace, row["workflow_id"])] = row
        return found

    def _missing(self) -> Row | None:
        return None

    async def _rows(self, params: dict[str, Any], conn: Conn) -> list[Row]:
        async with AsyncClientCursor(conn) as cur:
            await cur.execute(self._query, params)
            return await cur.fetchall()
