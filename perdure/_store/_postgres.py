"""The PostgreSQL store (psycopg 3, async, a connection pool; LISTEN/NOTIFY wake-ups).

Tables live in their own schema (``perdure``, or ``?schema=...`` in the URL) with the
SQLite store's table and column names. Every method is one transaction; a workflow step
is one statement (``commit_step`` in queries.sql), and concurrent steps are committed
together (group commit) unless the URL says ``group_commit=off``.
"""

from __future__ import annotations

import asyncio
import json
import os
import zlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

from psycopg import errors

from perdure._errors import WorkflowAlreadyStartedError, WorkflowNotFoundError
from perdure._history import EventType, HistoryEvent
from perdure._store._base import (
    ActivityTask,
    InboxItem,
    ListFilter,
    NewRun,
    RunRecord,
    StepCommit,
    StepRejected,
    Store,
    utcnow,
)
from perdure._store._postgres_db import (
    Conn,
    Database,
    GroupCommit,
    Listener,
    Settings,
    dialect_queries,
    in_schema,
    parse_url,
)
from perdure._store._queries import migration_files

Row = dict[str, Any]


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _json(value: Any) -> Any:
    """A JSON column as Python: jsonb/json arrive decoded, text (CockroachDB) does not."""
    return json.loads(value) if isinstance(value, str) else value


def run_from_row(row: Row) -> RunRecord:
    return RunRecord(
        run_id=row["run_id"],
        namespace=row["namespace"],
        workflow_id=row["workflow_id"],
        workflow_type=row["workflow_type"],
        task_queue=row["task_queue"],
        status=row["status"],
        input=row["input"],
        result=row["result"],
        error=row["error"],
        parent_workflow_id=row["parent_workflow_id"],
        parent_run_id=row["parent_run_id"],
        search_attributes=row["search_attributes"],
        memo=row["memo"],
        continued_run_id=row["continued_run_id"],
        next_event_seq=row["next_event_seq"],
        wake_at=row["wake_at"],
        owner=row["owner"],
        parked_error=row["parked_error"],
        created_at=row["created_at"],
        closed_at=row["closed_at"],
    )


def _event_from_row(row: Row) -> HistoryEvent:
    return HistoryEvent(
        seq=row["seq"],
        event_type=row["event_type"],
        name=row["name"],
        attributes=_json(row["attributes"]),
        created_at=row["created_at"],
    )


def _inbox_from_row(row: Row) -> InboxItem:
    payload = row["payload"]
    return InboxItem(
        inbox_id=row["inbox_id"],
        run_id=row["run_id"],
        kind=row["kind"],
        name=row["name"],
        payload=payload if isinstance(payload, list) else [payload],
        created_at=row["created_at"],
    )


def _task_from_row(row: Row) -> ActivityTask:
    return ActivityTask(
        run_id=row["run_id"],
        activity_id=row["activity_id"],
        activity_type=row["activity_type"],
        task_queue=row["task_queue"],
        attempt=row["attempt"],
        scheduled_at=row["scheduled_at"],
        visible_at=row["visible_at"],
        heartbeat_details=row["heartbeat_details"],
        last_failure=row["last_failure"],
    )


def _event_params(run_id: str, event: HistoryEvent) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "seq": event.seq,
        "event_type": str(event.event_type),
        "name": event.name,
        "attributes": _dumps(event.attributes),
        "created_at": event.created_at,
    }


def step_params(step: StepCommit) -> dict[str, Any]:
    """The parameters of the one-statement ``commit_step`` query."""
    close = step.close
    return {
        "run_id": step.run_id,
        "namespace": step.namespace,
        "worker_id": step.worker_id,
        "expected_seq": step.expected_seq,
        "next_event_seq": step.expected_seq + len(step.events),
        "wake_at": step.wake_at,
        "lease_until": step.lease_until,
        "release": step.release,
        "closing": close is not None,
        "status": None if close is None else close.status,
        "result": None if close is None or close.result is None else _dumps(close.result),
        "error": None if close is None or close.error is None else _dumps(close.error),
        "closed_at": None if close is None else utcnow(),
        "continued_run_id": None if close is None else close.continued_run_id,
        "seqs": [e.seq for e in step.events],
        "event_types": [str(e.event_type) for e in step.events],
        "names": [e.name for e in step.events],
        "attributes": [_dumps(e.attributes) for e in step.events],
        "created_ats": [e.created_at for e in step.events],
        "finished_tasks": list(step.finished_tasks),
        "task_ids": [t.activity_id for t in step.new_tasks],
        "task_types": [t.activity_type for t in step.new_tasks],
        "task_queues": [t.task_queue for t in step.new_tasks],
        "task_scheduled": [t.scheduled_at for t in step.new_tasks],
        "task_visible": [t.visible_at for t in step.new_tasks],
        "consumed_inbox": list(step.consumed_inbox),
    }


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
        self.db = Database(self.settings, fault_rate=self._fault_rate())
        self._listener: Listener | None = None
        self._group = GroupCommit(self.db, self.q["commit_step"])
        self._migrated = False
        self._migrate_lock = asyncio.Lock()

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

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
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
        async def tx(conn: Conn) -> tuple[str, bool]:
            key = {"namespace": run.namespace, "workflow_id": run.workflow_id}
            running = await (await conn.execute(self.q["running_run"], key)).fetchone()
            if running is not None:
                if run.id_conflict_policy == "use_existing":
                    return running["run_id"], False
                if run.id_conflict_policy != "terminate_existing":
                    raise WorkflowAlreadyStartedError(
                        f"workflow {run.workflow_id!r} is already running (run "
                        f"{running['run_id']}); pass id_conflict_policy='use_existing' to get it",
                        workflow_id=run.workflow_id,
                        run_id=running["run_id"],
                        workflow_type=running["workflow_type"],
                    )
                await self._terminate(
                    conn, running, "terminated by a new start (terminate_existing)"
                )
            if run.id_reuse_policy != "allow_duplicate":
                latest = await (await conn.execute(self.q["latest_run"], key)).fetchone()
                if latest is not None and (
                    run.id_reuse_policy == "reject_duplicate" or latest["status"] == "completed"
                ):
                    raise WorkflowAlreadyStartedError(
                        f"workflow id {run.workflow_id!r} was already used (last run "
                        f"{latest['run_id']} {latest['status']}) and id_reuse_policy is "
                        f"{run.id_reuse_policy!r}",
                        workflow_id=run.workflow_id,
                        run_id=latest["run_id"],
                        workflow_type=latest["workflow_type"],
                    )
            await conn.execute(
                self.q["insert_run"],
                {
                    "run_id": run.run_id,
                    "namespace": run.namespace,
                    "workflow_id": run.workflow_id,
                    "workflow_type": run.workflow_type,
                    "task_queue": run.task_queue,
                    "input": _dumps(run.input),
                    "parent_workflow_id": run.parent_workflow_id,
                    "parent_run_id": run.parent_run_id,
                    "search_attributes": _dumps(run.search_attributes),
                    "memo": _dumps(run.memo),
                    "wake_at": run.wake_at,
                    "created_at": utcnow(),
                },
            )
            return run.run_id, True

        # Two concurrent starts of one id can both pass the check; the unique index stops
        # the second, and running it again applies the policies to the winner's run.
        for _ in range(3):
            try:
                return await self.db.transaction(tx)
            except errors.UniqueViolation as exc:
                lost: Exception = exc
        raise WorkflowAlreadyStartedError(
            f"workflow {run.workflow_id!r} is being started concurrently by others; try again",
            workflow_id=run.workflow_id,
            workflow_type=run.workflow_type,
        ) from lost

    async def _terminate(self, conn: Conn, row: Row, reason: str) -> None:
        """End a running run at once, without running its code."""
        seq = row["next_event_seq"]
        now = utcnow()
        await conn.execute(
            self._sql("UPDATE perdure.workflows SET next_event_seq = %s WHERE run_id = %s"),
            (seq + 1, row["run_id"]),
        )
        event = HistoryEvent(
            seq=seq,
            event_type=EventType.WORKFLOW_TERMINATED,
            name=None,
            attributes={"reason": reason},
            created_at=now,
        )
        await conn.execute(self.q["append_event"], _event_params(row["run_id"], event))
        error = {"type": "TerminatedError", "message": reason, "attrs": {"reason": reason}}
        await conn.execute(
            self.q["close_run"],
            {
                "run_id": row["run_id"],
                "status": "terminated",
                "result": None,
                "error": _dumps(error),
                "closed_at": now,
                "continued_run_id": None,
            },
        )
        await conn.execute(self.q["delete_run_tasks"], {"run_id": row["run_id"]})

    async def get_run(
        self, namespace: str, workflow_id: str, run_id: str | None = None
    ) -> RunRecord | None:
        if run_id is not None:
            record = await self.get_run_by_id(run_id)
            if record is None or record.workflow_id != workflow_id:
                return None
            return record if record.namespace == namespace else None
        key = {"namespace": namespace, "workflow_id": workflow_id}
        row = await self._one(self.q["latest_run"], key)
        return None if row is None else run_from_row(row)

    async def get_run_by_id(self, run_id: str) -> RunRecord | None:
        row = await self._one(self.q["get_run"], {"run_id": run_id})
        return None if row is None else run_from_row(row)

    async def list_runs(self, flt: ListFilter) -> list[RunRecord]:
        clauses = ["namespace = %s"]
        params: list[Any] = [flt.namespace]
        if flt.status is not None:
            clauses.append("status = %s")
            params.append(flt.status)
        if flt.workflow_type is not None:
            clauses.append("workflow_type = %s")
            params.append(flt.workflow_type)
        if flt.workflow_id_prefix is not None:
            clauses.append("substr(workflow_id, 1, %s) = %s")
            params += [len(flt.workflow_id_prefix), flt.workflow_id_prefix]
        for key, value in flt.search_attributes.items():
            clauses.append("search_attributes -> %s = %s::jsonb")
            params += [key, _dumps(value)]
        query = self._sql(
            "SELECT * FROM perdure.workflows WHERE "
            + " AND ".join(clauses)
            + " ORDER BY created_at DESC, run_id DESC"
        )
        if flt.limit is not None:
            query += " LIMIT %s"
            params.append(flt.limit)
        return [run_from_row(r) for r in await self._all(query, params)]

    async def load_history(self, run_id: str) -> list[HistoryEvent]:
        rows = await self._all(self.q["load_history"], {"run_id": run_id})
        return [_event_from_row(r) for r in rows]

    async def send_inbox(
        self,
        namespace: str,
        workflow_id: str,
        run_id: str | None,
        kind: str,
        name: str | None,
        payload: list[Any],
    ) -> str:
        async def tx(conn: Conn) -> str:
            key = {"namespace": namespace, "workflow_id": workflow_id}
            row = await (await conn.execute(self.q["running_run"], key)).fetchone()
            if row is None or (run_id is not None and row["run_id"] != run_id):
                raise WorkflowNotFoundError(
                    f"no running workflow with id {workflow_id!r}"
                    + (f" and run id {run_id!r}" if run_id else "")
                )
            await conn.execute(
                self.q["insert_inbox"],
                {
                    **key,
                    "run_id": run_id,
                    "kind": kind,
                    "name": name,
                    "payload": _dumps(payload),
                    "created_at": utcnow(),
                },
            )
            return str(row["run_id"])

        return await self.db.transaction(tx)

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
            "lease_until": lease_until,
            "now": utcnow(),
        }
        rows = await self._write_all(self.q["claim_runs"], params)
        return [run_from_row(r) for r in rows]

    async def load_tasks(self, run_id: str) -> list[ActivityTask]:
        return [
            _task_from_row(r) for r in await self._all(self.q["load_tasks"], {"run_id": run_id})
        ]

    async def load_run_inbox(self, run_id: str) -> list[InboxItem]:
        rows = await self._all(self.q["run_inbox"], {"run_id": run_id})
        return [_inbox_from_row(r) for r in rows]

    async def owned_inbox(self, worker_id: str) -> list[InboxItem]:
        rows = await self._all(self.q["owned_inbox"], {"worker_id": worker_id})
        return [_inbox_from_row(r) for r in rows]

    async def commit_step(self, step: StepCommit) -> None:
        params = step_params(step)
        if self.settings.group_commit:
            fenced = await self._group.submit(params)
        else:
            row = await self.db.statement(
                lambda conn: self._fetch_one(conn, self.q["commit_step"], params)
            )
            fenced = None if row is None else row["fenced"]
        if fenced != 1:
            raise StepRejected(step.run_id)

    async def retry_activity(
        self,
        *,
        run_id: str,
        activity_id: int,
        worker_id: str,
        attempt: int,
        visible_at: datetime,
        heartbeat_details: list[Any],
        last_failure: dict[str, Any],
    ) -> None:
        params = {
            "run_id": run_id,
            "activity_id": activity_id,
            "worker_id": worker_id,
            "attempt": attempt,
            "visible_at": visible_at,
            "heartbeat_details": _dumps(heartbeat_details),
            "last_failure": _dumps(last_failure),
        }
        if await self._write(self.q["retry_task"], params) != 1:
            raise StepRejected(run_id)

    async def save_heartbeat(self, run_id: str, activity_id: int, details: list[Any]) -> None:
        params = {
            "run_id": run_id,
            "activity_id": activity_id,
            "heartbeat_details": _dumps(details),
        }
        await self._write(self.q["save_heartbeat"], params)

    async def renew_leases(self, worker_id: str, lease_until: datetime) -> set[str]:
        params = {"worker_id": worker_id, "lease_until": lease_until}
        return {r["run_id"] for r in await self._write_all(self.q["renew_leases"], params)}

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
            "task_queues": _dumps(task_queues),
            "now": utcnow(),
        }
        await self._write(self.q["upsert_worker"], params)

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

    async def _write_all(self, query: str, params: Any) -> list[Row]:
        async def tx(conn: Conn) -> list[Row]:
            return await (await conn.execute(query, params)).fetchall()

        return await self.db.statement(tx)


def emulating_cockroach() -> bool:
    """Tests only: run the CockroachDB code paths against a PostgreSQL server."""
    return os.environ.get("PERDURE_TEST_COCKROACH_EMULATION", "") not in ("", "0")
