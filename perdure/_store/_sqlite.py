"""The embedded SQLite store (stdlib ``sqlite3``, WAL, full sync)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Awaitable
from datetime import datetime
from functools import partial
from typing import Any

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
from perdure._store._queries import migration_files
from perdure._store._sqlite_db import SQLiteDB
from perdure._store._sqlite_tx import (
    GET_RUN_EXACT,
    LATEST_RUN_EXACT,
    RUNS_WITH_HISTORY_END,
    change_schedule,
    commit_step,
    dumps,
    event_from_row,
    fmt,
    fmt_opt,
    inbox_from_row,
    insert_inbox,
    insert_run,
    insert_schedule,
    progress_params,
    run_from_row,
    running_row,
    schedule_from_row,
    terminate,
)
from perdure._store._sqlite_tx import Q as _Q
from perdure._store._times import parse


class SQLiteStore(Store):
    dialect = "sqlite"

    def __init__(self, path: str, *, synchronous: str = "FULL", io: str = "loop") -> None:
        self.path = path
        self.db = SQLiteDB(path, synchronous=synchronous, io=io)
        self._migrated = False
        self._migrate_lock = asyncio.Lock()

    # -- schema ----------------------------------------------------------
    async def migrate(self) -> None:
        async with self._migrate_lock:
            if not self._migrated:
                await self.db.write(_apply_migrations)
                self._migrated = True

    async def close(self) -> None:
        await self.db.close()

    # -- client side -----------------------------------------------------
    async def start_run(self, run: NewRun) -> tuple[str, bool]:
        return await self.db.write(lambda conn: insert_run(conn, run))

    async def signal_with_start(
        self, run: NewRun, signal: str, payload: list[Any]
    ) -> tuple[str, bool]:
        def tx(conn: sqlite3.Connection) -> tuple[str, bool]:
            run_id, created = insert_run(conn, run)
            insert_inbox(conn, run.namespace, run.workflow_id, run_id, "signal", signal, payload)
            return run_id, created

        return await self.db.write(tx)

    async def terminate_run(
        self, namespace: str, workflow_id: str, run_id: str | None, reason: str
    ) -> str:
        def tx(conn: sqlite3.Connection) -> str:
            row = running_row(conn, namespace, workflow_id, run_id)
            terminate(conn, row, reason)
            return str(row["run_id"])

        return await self.db.write(tx)

    async def take_reply(self, reply_id: str) -> dict[str, Any] | None:
        def tx(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute(_Q["take_reply"], {"reply_id": reply_id}).fetchone()
            return None if row is None else dict(json.loads(row["outcome"]))

        return await self.db.write(tx)

    async def get_run(
        self, namespace: str, workflow_id: str, run_id: str | None = None
    ) -> RunRecord | None:
        def read(conn: sqlite3.Connection) -> RunRecord | None:
            if run_id is not None:
                row = conn.execute(GET_RUN_EXACT, {"run_id": run_id}).fetchone()
                if row is not None and (
                    row["workflow_id"] != workflow_id or row["namespace"] != namespace
                ):
                    row = None
            else:
                row = conn.execute(
                    LATEST_RUN_EXACT, {"namespace": namespace, "workflow_id": workflow_id}
                ).fetchone()
            return None if row is None else run_from_row(row, exact=True)

        return await self.db.read(read)

    async def get_run_by_id(self, run_id: str) -> RunRecord | None:
        def read(conn: sqlite3.Connection) -> RunRecord | None:
            row = conn.execute(GET_RUN_EXACT, {"run_id": run_id}).fetchone()
            return None if row is None else run_from_row(row, exact=True)

        return await self.db.read(read)

    async def closed_runs(self, run_ids: list[str]) -> set[str]:
        params = {"run_ids": dumps(run_ids)}

        def read(conn: sqlite3.Connection) -> set[str]:
            return {r["run_id"] for r in conn.execute(_Q["closed_runs"], params)}

        return await self.db.read(read)

    async def list_runs(self, flt: ListFilter) -> list[RunRecord]:
        clauses = ["w.namespace = ?"]
        params: list[Any] = [flt.namespace]
        if flt.status is not None:
            clauses.append("status = ?")
            params.append(flt.status)
        if flt.workflow_type is not None:
            clauses.append("workflow_type = ?")
            params.append(flt.workflow_type)
        if flt.workflow_id is not None:
            clauses.append("workflow_id = ?")
            params.append(flt.workflow_id)
        if flt.workflow_id_prefix is not None:
            clauses.append("substr(workflow_id, 1, ?) = ?")
            params += [len(flt.workflow_id_prefix), flt.workflow_id_prefix]
        for key, value in flt.search_attributes.items():
            # json_each, not a JSON path: a path cannot name a key that holds a '"'.
            clauses.append(
                "EXISTS (SELECT 1 FROM json_each(w.search_attributes) AS a"
                " WHERE a.key = ? AND a.value = json_extract(?, '$'))"
            )
            params += [key, dumps(value)]
        sql = (
            f"{RUNS_WITH_HISTORY_END} WHERE "
            + " AND ".join(clauses)
            + " ORDER BY w.created_at DESC, w.rowid DESC"
        )
        if flt.limit is not None:
            sql += " LIMIT ?"
            params.append(flt.limit)

        def read(conn: sqlite3.Connection) -> list[RunRecord]:
            return [run_from_row(r, exact=True) for r in conn.execute(sql, params)]

        return await self.db.read(read)

    async def load_history(self, run_id: str) -> list[HistoryEvent]:
        def read(conn: sqlite3.Connection) -> list[HistoryEvent]:
            return [event_from_row(r) for r in conn.execute(_Q["load_history"], {"run_id": run_id})]

        return await self.db.read(read)

    async def send_inbox(
        self,
        namespace: str,
        workflow_id: str,
        run_id: str | None,
        kind: str,
        name: str | None,
        payload: list[Any],
    ) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            running_row(conn, namespace, workflow_id, run_id)
            insert_inbox(conn, namespace, workflow_id, run_id, kind, name, payload)

        await self.db.write(tx)

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
            "task_queues": dumps(task_queues),
            "workflow_types": dumps(workflow_types),
            "limit": limit,
            "lease_until": fmt(lease_until),
            "now": fmt(utcnow()),
        }

        def tx(conn: sqlite3.Connection) -> list[RunRecord]:
            return [run_from_row(r) for r in conn.execute(_Q["claim_runs"], params).fetchall()]

        return await self.db.write(tx)

    async def load_tasks(self, run_id: str) -> list[ActivityTask]:
        def read(conn: sqlite3.Connection) -> list[ActivityTask]:
            return [
                ActivityTask(
                    run_id=r["run_id"],
                    activity_id=r["activity_id"],
                    activity_type=r["activity_type"],
                    task_queue=r["task_queue"],
                    attempt=r["attempt"],
                    scheduled_at=parse(r["scheduled_at"]),
                    visible_at=parse(r["visible_at"]),
                    heartbeat_details=json.loads(r["heartbeat_details"]),
                    last_failure=None
                    if r["last_failure"] is None
                    else json.loads(r["last_failure"]),
                )
                for r in conn.execute(_Q["load_tasks"], {"run_id": run_id})
            ]

        return await self.db.read(read)

    async def load_run_inbox(self, run_id: str) -> list[InboxItem]:
        def read(conn: sqlite3.Connection) -> list[InboxItem]:
            return [inbox_from_row(r) for r in conn.execute(_Q["run_inbox"], {"run_id": run_id})]

        return await self.db.read(read)

    async def owned_inbox(self, worker_id: str, after_id: int = 0) -> list[InboxItem]:
        def read(conn: sqlite3.Connection) -> list[InboxItem]:
            rows = conn.execute(_Q["owned_inbox"], {"worker_id": worker_id, "after_id": after_id})
            return [inbox_from_row(r) for r in rows]

        return await self.db.read(read)

    def commit_step(self, step: StepCommit) -> Awaitable[None]:
        # The batch's future itself: no coroutine or closure alive per step in flight.
        return self.db.write_now(partial(commit_step, step=step))

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
            "visible_at": fmt(visible_at),
            "last_failure": dumps(last_failure),
        }

        def tx(conn: sqlite3.Connection) -> None:
            if conn.execute(_Q["retry_task"], params).rowcount != 1:
                raise StepRejected(run_id)

        await self.db.write(tx)

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
            "task_queues": dumps(task_queues),
            "activity_types": dumps(activity_types),
            "limit": limit,
            "lease_until": fmt(lease_until),
            "now": fmt(utcnow()),
        }

        def tx(conn: sqlite3.Connection) -> list[RemoteTask]:
            rows = conn.execute(_Q["claim_activity_tasks"], params).fetchall()
            tasks = []
            for r in rows:
                run = conn.execute(_Q["get_run"], {"run_id": r["run_id"]}).fetchone()
                tasks.append(
                    RemoteTask(
                        namespace=r["namespace"],
                        run_id=r["run_id"],
                        workflow_id=run["workflow_id"],
                        workflow_type=run["workflow_type"],
                        activity_id=r["activity_id"],
                        activity_type=r["activity_type"],
                        task_queue=r["task_queue"],
                        label=r["label"],
                        args=json.loads(r["args"]),
                        options=json.loads(r["options"]),
                        attempt=r["attempt"],
                        scheduled_at=parse(r["scheduled_at"]),
                        heartbeat_details=json.loads(r["heartbeat_details"]),
                    )
                )
            return tasks

        return await self.db.write(tx)

    async def finish_remote_task(
        self, task: RemoteTask, worker_id: str, outcome: dict[str, Any]
    ) -> bool:
        def tx(conn: sqlite3.Connection) -> bool:
            deleted = conn.execute(
                _Q["finish_remote_task"],
                {"run_id": task.run_id, "activity_id": task.activity_id, "worker_id": worker_id},
            ).rowcount
            if deleted != 1:
                return False
            insert_inbox(conn, *task.report(outcome))
            return True

        return await self.db.write(tx)

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
            "visible_at": fmt(visible_at),
            "heartbeat_details": dumps(heartbeat_details),
            "last_failure": dumps(last_failure),
        }
        await self.db.write(lambda conn: conn.execute(_Q["retry_remote_task"], params))

    async def release_tasks(self, worker_id: str) -> None:
        await self.db.write(
            lambda conn: conn.execute(_Q["release_tasks"], {"worker_id": worker_id})
        )

    async def save_heartbeat(self, run_id: str, activity: ActivityProgress) -> None:
        params = progress_params(run_id, activity)
        await self.db.write(lambda conn: conn.execute(_Q["save_heartbeat"], params))

    async def renew_leases(self, worker_id: str, lease_until: datetime) -> dict[str, bool]:
        params = {"worker_id": worker_id, "lease_until": fmt(lease_until)}

        def tx(conn: sqlite3.Connection) -> dict[str, bool]:
            # One writer at a time: every run still ours is renewed.
            conn.execute(_Q["renew_task_leases"], params)
            rows = conn.execute(_Q["renew_leases"], params).fetchall()
            return {r["run_id"]: True for r in rows}

        return await self.db.write(tx)

    async def release_run(self, run_id: str, worker_id: str, wake_at: datetime | None) -> None:
        params = {"run_id": run_id, "worker_id": worker_id, "wake_at": fmt_opt(wake_at)}
        await self.db.write(lambda conn: conn.execute(_Q["release_run"], params))

    async def park_run(self, run_id: str, worker_id: str, error: str) -> None:
        params = {"run_id": run_id, "worker_id": worker_id, "parked_error": error}
        await self.db.write(lambda conn: conn.execute(_Q["park_run"], params))

    async def unpark_runs(self, namespace: str, workflow_types: list[str]) -> int:
        params = {
            "namespace": namespace,
            "workflow_types": dumps(workflow_types),
            "now": fmt(utcnow()),
        }
        return await self.db.write(lambda conn: conn.execute(_Q["unpark_runs"], params).rowcount)

    async def register_worker(
        self, *, worker_id: str, namespace: str, hostname: str, pid: int, task_queues: list[str]
    ) -> None:
        params = {
            "worker_id": worker_id,
            "namespace": namespace,
            "hostname": hostname,
            "pid": pid,
            "task_queues": dumps(task_queues),
            "now": fmt(utcnow()),
        }
        await self.db.write(lambda conn: conn.execute(_Q["upsert_worker"], params))

    async def deregister_worker(self, worker_id: str) -> None:
        await self.db.write(
            lambda conn: conn.execute(_Q["delete_worker"], {"worker_id": worker_id})
        )

    # -- schedules -------------------------------------------------------
    async def create_schedule(self, schedule: ScheduleRecord) -> None:
        await self.db.write(lambda conn: insert_schedule(conn, schedule))

    async def get_schedule(self, namespace: str, schedule_id: str) -> ScheduleRecord | None:
        key = {"namespace": namespace, "schedule_id": schedule_id}

        def read(conn: sqlite3.Connection) -> ScheduleRecord | None:
            row = conn.execute(_Q["get_schedule"], key).fetchone()
            return None if row is None else schedule_from_row(row)

        return await self.db.read(read)

    async def list_schedules(self, namespace: str) -> list[ScheduleRecord]:
        def read(conn: sqlite3.Connection) -> list[ScheduleRecord]:
            rows = conn.execute(_Q["list_schedules"], {"namespace": namespace})
            return [schedule_from_row(r) for r in rows]

        return await self.db.read(read)

    async def delete_schedule(self, namespace: str, schedule_id: str) -> bool:
        key = {"namespace": namespace, "schedule_id": schedule_id}
        deleted = await self.db.write(
            lambda conn: conn.execute(_Q["delete_schedule"], key).rowcount
        )
        return bool(deleted)

    async def due_schedules(self, namespace: str, now: datetime, limit: int) -> list[str]:
        params = {"namespace": namespace, "now": fmt(now), "limit": limit}

        def read(conn: sqlite3.Connection) -> list[str]:
            return [r["schedule_id"] for r in conn.execute(_Q["due_schedules"], params)]

        return await self.db.read(read)

    async def change_schedule(
        self,
        namespace: str,
        schedule_id: str,
        decide: ScheduleDecision,
        *,
        skip_locked: bool = False,
    ) -> tuple[bool, list[NewRun]]:
        return await self.db.write(
            lambda conn: change_schedule(conn, namespace, schedule_id, decide)
        )


def _apply_migrations(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS perdure_schema_version ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    applied = {r[0] for r in conn.execute("SELECT version FROM perdure_schema_version")}
    for version, name, sql in migration_files("sqlite"):
        if version in applied:
            continue
        for statement in split_statements(sql):
            conn.execute(statement)
        conn.execute(
            "INSERT INTO perdure_schema_version (version, name, applied_at) VALUES (?, ?, ?)",
            (version, name, fmt(utcnow())),
        )


def split_statements(sql: str) -> list[str]:
    """Split a script into statements (triggers keep their inner semicolons)."""
    statements, current = [], ""
    for line in sql.splitlines(keepends=True):
        if not current and (not line.strip() or line.lstrip().startswith("--")):
            continue
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip():
        statements.append(current.strip())
    return statements
