"""The embedded SQLite store (stdlib ``sqlite3``, WAL, full sync)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from datetime import datetime
from typing import Any

from perdure._errors import (
    WorkflowAlreadyStartedError,
    WorkflowNotFoundError,
    failure_to_dict,
)
from perdure._history import EventType, HistoryEvent
from perdure._store._base import (
    ActivityProgress,
    ActivityTask,
    InboxItem,
    ListFilter,
    NewRun,
    RemoteTask,
    RunExists,
    RunRecord,
    StepCommit,
    StepRejected,
    Store,
    utcnow,
)
from perdure._store._queries import load_queries, migration_files
from perdure._store._sqlite_db import SQLiteDB
from perdure._store._times import fmt, fmt_opt, parse, parse_opt

_Q = load_queries("sqlite")
_EPOCH = "1970-01-01T00:00:00.000000Z"


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _run_from_row(row: sqlite3.Row) -> RunRecord:
    return RunRecord(
        run_id=row["run_id"],
        namespace=row["namespace"],
        workflow_id=row["workflow_id"],
        workflow_type=row["workflow_type"],
        task_queue=row["task_queue"],
        status=row["status"],
        input=json.loads(row["input"]),
        result=None if row["result"] is None else json.loads(row["result"]),
        error=None if row["error"] is None else json.loads(row["error"]),
        parent_workflow_id=row["parent_workflow_id"],
        parent_run_id=row["parent_run_id"],
        parent_close_policy=row["parent_close_policy"],
        child_id=row["child_id"],
        search_attributes=json.loads(row["search_attributes"]),
        memo=json.loads(row["memo"]),
        continued_run_id=row["continued_run_id"],
        next_event_seq=row["next_event_seq"],
        wake_at=parse_opt(row["wake_at"]),
        owner=row["owner"],
        parked_error=row["parked_error"],
        created_at=parse(row["created_at"]),
        closed_at=parse_opt(row["closed_at"]),
    )


def _event_from_row(row: sqlite3.Row) -> HistoryEvent:
    return HistoryEvent(
        seq=row["seq"],
        event_type=row["event_type"],
        name=row["name"],
        attributes=json.loads(row["attributes"]),
        created_at=parse(row["created_at"]),
    )


def _inbox_from_row(row: sqlite3.Row) -> InboxItem:
    undecodable = None
    try:
        payload = json.loads(row["payload"])
    except ValueError:
        payload, undecodable = [], str(row["payload"])
    if not isinstance(payload, list):
        payload = [payload]
    return InboxItem(
        inbox_id=row["inbox_id"],
        run_id=row["run_id"],
        kind=row["kind"],
        name=row["name"],
        payload=payload,
        created_at=parse(row["created_at"]),
        undecodable=undecodable,
    )


def _progress_params(run_id: str, activity: ActivityProgress) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "activity_id": activity.activity_id,
        "activity_type": activity.activity_type,
        "label": activity.label,
        "attempt": activity.attempt,
        "scheduled_at": fmt(activity.scheduled_at),
        "heartbeat_details": _dumps(activity.heartbeat_details),
    }


def _event_params(run_id: str, event: HistoryEvent) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "seq": event.seq,
        "event_type": str(event.event_type),
        "name": event.name,
        "attributes": _dumps(event.attributes),
        "created_at": fmt(event.created_at),
    }


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
        return await self.db.write(lambda conn: _insert_run(conn, run))

    async def signal_with_start(
        self, run: NewRun, signal: str, payload: list[Any]
    ) -> tuple[str, bool]:
        def tx(conn: sqlite3.Connection) -> tuple[str, bool]:
            run_id, created = _insert_run(conn, run)
            _insert_inbox(conn, run.namespace, run.workflow_id, run_id, "signal", signal, payload)
            return run_id, created

        return await self.db.write(tx)

    async def terminate_run(
        self, namespace: str, workflow_id: str, run_id: str | None, reason: str
    ) -> str:
        def tx(conn: sqlite3.Connection) -> str:
            row = _running_row(conn, namespace, workflow_id, run_id)
            _terminate(conn, row, reason)
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
                row = conn.execute(_Q["get_run"], {"run_id": run_id}).fetchone()
                if row is not None and (
                    row["workflow_id"] != workflow_id or row["namespace"] != namespace
                ):
                    row = None
            else:
                row = conn.execute(
                    _Q["latest_run"], {"namespace": namespace, "workflow_id": workflow_id}
                ).fetchone()
            return None if row is None else _run_from_row(row)

        return await self.db.read(read)

    async def get_run_by_id(self, run_id: str) -> RunRecord | None:
        def read(conn: sqlite3.Connection) -> RunRecord | None:
            row = conn.execute(_Q["get_run"], {"run_id": run_id}).fetchone()
            return None if row is None else _run_from_row(row)

        return await self.db.read(read)

    async def closed_runs(self, run_ids: list[str]) -> set[str]:
        params = {"run_ids": _dumps(run_ids)}

        def read(conn: sqlite3.Connection) -> set[str]:
            return {r["run_id"] for r in conn.execute(_Q["closed_runs"], params)}

        return await self.db.read(read)

    async def list_runs(self, flt: ListFilter) -> list[RunRecord]:
        clauses = ["namespace = ?"]
        params: list[Any] = [flt.namespace]
        if flt.status is not None:
            clauses.append("status = ?")
            params.append(flt.status)
        if flt.workflow_type is not None:
            clauses.append("workflow_type = ?")
            params.append(flt.workflow_type)
        if flt.workflow_id_prefix is not None:
            clauses.append("substr(workflow_id, 1, ?) = ?")
            params += [len(flt.workflow_id_prefix), flt.workflow_id_prefix]
        for key, value in flt.search_attributes.items():
            clauses.append("json_extract(search_attributes, ?) = json_extract(?, '$')")
            params += [f'$."{key}"', _dumps(value)]
        sql = (
            "SELECT * FROM perdure_workflows WHERE "
            + " AND ".join(clauses)
            + " ORDER BY created_at DESC, rowid DESC"
        )
        if flt.limit is not None:
            sql += " LIMIT ?"
            params.append(flt.limit)

        def read(conn: sqlite3.Connection) -> list[RunRecord]:
            return [_run_from_row(r) for r in conn.execute(sql, params)]

        return await self.db.read(read)

    async def load_history(self, run_id: str) -> list[HistoryEvent]:
        def read(conn: sqlite3.Connection) -> list[HistoryEvent]:
            return [
                _event_from_row(r) for r in conn.execute(_Q["load_history"], {"run_id": run_id})
            ]

        return await self.db.read(read)

    async def send_inbox(
        self,
        namespace: str,
        workflow_id: str,
        run_id: str | None,
        kind: str,
        name: str | None,
        payload: list[Any],
    ) -> str:
        def tx(conn: sqlite3.Connection) -> str:
            row = _running_row(conn, namespace, workflow_id, run_id)
            _insert_inbox(conn, namespace, workflow_id, run_id, kind, name, payload)
            return str(row["run_id"])

        return await self.db.write(tx)

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
            "task_queues": _dumps(task_queues),
            "workflow_types": _dumps(workflow_types),
            "limit": limit,
            "lease_until": fmt(lease_until),
            "now": fmt(utcnow()),
        }

        def tx(conn: sqlite3.Connection) -> list[RunRecord]:
            return [_run_from_row(r) for r in conn.execute(_Q["claim_runs"], params).fetchall()]

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
            return [_inbox_from_row(r) for r in conn.execute(_Q["run_inbox"], {"run_id": run_id})]

        return await self.db.read(read)

    async def owned_inbox(self, worker_id: str, after_id: int = 0) -> list[InboxItem]:
        def read(conn: sqlite3.Connection) -> list[InboxItem]:
            rows = conn.execute(_Q["owned_inbox"], {"worker_id": worker_id, "after_id": after_id})
            return [_inbox_from_row(r) for r in rows]

        return await self.db.read(read)

    async def commit_step(self, step: StepCommit) -> None:
        await self.db.write(lambda conn: _commit_step(conn, step))

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
            **_progress_params(run_id, activity),
            "worker_id": worker_id,
            "visible_at": fmt(visible_at),
            "last_failure": _dumps(last_failure),
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
            "task_queues": _dumps(task_queues),
            "activity_types": _dumps(activity_types),
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
            _insert_inbox(
                conn,
                task.namespace,
                task.workflow_id,
                task.run_id,
                "activity_result",
                task.label,
                [outcome],
            )
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
            "heartbeat_details": _dumps(heartbeat_details),
            "last_failure": _dumps(last_failure),
        }
        await self.db.write(lambda conn: conn.execute(_Q["retry_remote_task"], params))

    async def release_tasks(self, worker_id: str) -> None:
        await self.db.write(
            lambda conn: conn.execute(_Q["release_tasks"], {"worker_id": worker_id})
        )

    async def save_heartbeat(self, run_id: str, activity: ActivityProgress) -> None:
        params = _progress_params(run_id, activity)
        await self.db.write(lambda conn: conn.execute(_Q["save_heartbeat"], params))

    async def renew_leases(self, worker_id: str, lease_until: datetime) -> set[str]:
        params = {"worker_id": worker_id, "lease_until": fmt(lease_until)}

        def tx(conn: sqlite3.Connection) -> set[str]:
            conn.execute(_Q["renew_task_leases"], params)
            return {r["run_id"] for r in conn.execute(_Q["renew_leases"], params).fetchall()}

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
            "workflow_types": _dumps(workflow_types),
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
            "task_queues": _dumps(task_queues),
            "now": fmt(utcnow()),
        }
        await self.db.write(lambda conn: conn.execute(_Q["upsert_worker"], params))

    async def deregister_worker(self, worker_id: str) -> None:
        await self.db.write(
            lambda conn: conn.execute(_Q["delete_worker"], {"worker_id": worker_id})
        )


def _running_row(
    conn: sqlite3.Connection, namespace: str, workflow_id: str, run_id: str | None
) -> sqlite3.Row:
    row = conn.execute(
        _Q["running_run"], {"namespace": namespace, "workflow_id": workflow_id}
    ).fetchone()
    if row is None or (run_id is not None and row["run_id"] != run_id):
        latest = conn.execute(
            _Q["latest_run"], {"namespace": namespace, "workflow_id": workflow_id}
        ).fetchone()
        detail = f" (its last run is {latest['status']})" if latest is not None else ""
        raise WorkflowNotFoundError(
            f"no running workflow with id {workflow_id!r}"
            + (f" and run id {run_id!r}" if run_id else "")
            + detail
        )
    found: sqlite3.Row = row
    return found


def _insert_inbox(
    conn: sqlite3.Connection,
    namespace: str,
    workflow_id: str,
    run_id: str | None,
    kind: str,
    name: str | None,
    payload: list[Any],
) -> None:
    conn.execute(
        _Q["insert_inbox"],
        {
            "namespace": namespace,
            "workflow_id": workflow_id,
            "run_id": run_id,
            "kind": kind,
            "name": name,
            "payload": _dumps(payload),
            "created_at": fmt(utcnow()),
        },
    )


def _insert_run(conn: sqlite3.Connection, run: NewRun) -> tuple[str, bool]:
    """Insert a run, applying its id reuse and conflict policies."""
    key = {"namespace": run.namespace, "workflow_id": run.workflow_id}
    running = conn.execute(_Q["running_run"], key).fetchone()
    if running is not None:
        if run.id_conflict_policy == "use_existing":
            return running["run_id"], False
        if run.id_conflict_policy == "terminate_existing":
            _terminate(conn, running, "terminated by a new start (terminate_existing)")
        else:
            raise WorkflowAlreadyStartedError(
                f"workflow {run.workflow_id!r} is already running (run "
                f"{running['run_id']}); pass id_conflict_policy='use_existing' to get it",
                workflow_id=run.workflow_id,
                run_id=running["run_id"],
                workflow_type=running["workflow_type"],
            )
    if run.id_reuse_policy != "allow_duplicate":
        latest = conn.execute(_Q["latest_run"], key).fetchone()
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
    conn.execute(
        _Q["insert_run"],
        {
            "run_id": run.run_id,
            "namespace": run.namespace,
            "workflow_id": run.workflow_id,
            "workflow_type": run.workflow_type,
            "task_queue": run.task_queue,
            "input": _dumps(run.input),
            "parent_workflow_id": run.parent_workflow_id,
            "parent_run_id": run.parent_run_id,
            "parent_close_policy": run.parent_close_policy,
            "child_id": run.child_id,
            "search_attributes": _dumps(run.search_attributes),
            "memo": _dumps(run.memo),
            "wake_at": fmt(run.wake_at),
            "owner": run.owner,
            "lease_until": fmt_opt(run.lease_until),
            "created_at": fmt(run.created_at or utcnow()),
        },
    )
    return run.run_id, True


def _commit_step(conn: sqlite3.Connection, step: StepCommit) -> None:
    if step.start is not None:
        run_id, created = _insert_run(conn, step.start)
        if not created:
            raise RunExists(run_id)
    fenced = conn.execute(
        _Q["fence_step"],
        {
            "run_id": step.run_id,
            "worker_id": step.worker_id,
            "expected_seq": step.expected_seq,
            "next_event_seq": step.expected_seq + len(step.events),
            "wake_at": fmt_opt(step.wake_at),
            "lease_until": fmt_opt(step.lease_until),
            "release": step.release,
            "consumed": _dumps(step.consumed_inbox),
        },
    )
    if fenced.rowcount != 1:
        raise StepRejected(step.run_id)
    conn.executemany(_Q["append_event"], [_event_params(step.run_id, e) for e in step.events])
    for activity_id in step.finished_tasks:
        conn.execute(_Q["delete_task"], {"run_id": step.run_id, "activity_id": activity_id})
    conn.executemany(
        _Q["insert_task"],
        [
            {
                "namespace": step.namespace,
                "run_id": step.run_id,
                "activity_id": t.activity_id,
                "activity_type": t.activity_type,
                "task_queue": t.task_queue,
                "label": t.label,
                "args": _dumps(t.args),
                "options": _dumps(t.options),
                "scheduled_at": fmt(t.scheduled_at),
                "visible_at": fmt(t.visible_at),
            }
            for t in step.new_tasks
        ],
    )
    conn.executemany(_Q["delete_inbox"], [{"inbox_id": i} for i in step.consumed_inbox])
    if step.search_attributes:
        conn.execute(
            _Q["merge_search_attributes"],
            {"run_id": step.run_id, "patch": _dumps(step.search_attributes)},
        )
    for child in step.children:
        _start_child(conn, step, child)
    for msg in step.messages:
        # Addressed to the workflow id (its current run, after any continue-as-new);
        # a workflow that is no longer running simply does not get it.
        if conn.execute(
            _Q["running_run"], {"namespace": msg.namespace, "workflow_id": msg.workflow_id}
        ).fetchone():
            _insert_inbox(
                conn, msg.namespace, msg.workflow_id, None, msg.kind, msg.name, msg.payload
            )
    for reply_id, outcome in step.replies.items():
        _insert_reply(conn, reply_id, step.run_id, outcome)
    if step.close is not None:
        close = step.close
        conn.execute(
            _Q["close_run"],
            {
                "run_id": step.run_id,
                "status": close.status,
                "result": None if close.result is None else _dumps(close.result),
                "error": None if close.error is None else _dumps(close.error),
                "closed_at": fmt(utcnow()),
                "continued_run_id": close.continued_run_id,
            },
        )
        row = conn.execute(_Q["get_run"], {"run_id": step.run_id}).fetchone()
        _after_close(
            conn, row, close.status, close.result, close.error, had_children=close.had_children
        )
        if step.continue_as_new is not None:
            _insert_run(conn, step.continue_as_new)


def _start_child(conn: sqlite3.Connection, step: StepCommit, child: NewRun) -> None:
    """Start a child run; if its id is taken, tell the parent through its inbox."""
    conn.execute("SAVEPOINT child")
    try:
        _insert_run(conn, child)
    except WorkflowAlreadyStartedError as exc:
        conn.execute("ROLLBACK TO child")
        _insert_inbox(
            conn,
            step.namespace,
            str(child.parent_workflow_id),
            step.run_id,
            "child_result",
            child.workflow_type,
            [
                {
                    "child_id": child.child_id,
                    "workflow_id": child.workflow_id,
                    "run_id": child.run_id,
                    "status": "failed",
                    "error": failure_to_dict(exc),
                }
            ],
        )
    conn.execute("RELEASE child")


def _insert_reply(
    conn: sqlite3.Connection, reply_id: str, run_id: str, outcome: dict[str, Any]
) -> None:
    conn.execute(
        _Q["insert_reply"],
        {
            "reply_id": reply_id,
            "run_id": run_id,
            "outcome": _dumps(outcome),
            "created_at": fmt(utcnow()),
        },
    )


def _after_close(
    conn: sqlite3.Connection,
    row: sqlite3.Row,
    status: str,
    result: Any,
    error: Any,
    *,
    had_children: bool = True,
) -> None:
    """What a run's end means for others: its parent, its children, waiting updates."""
    run_id = row["run_id"]
    if status != "continued_as_new" and row["parent_run_id"] is not None:
        parent = conn.execute(_Q["get_run"], {"run_id": row["parent_run_id"]}).fetchone()
        if parent is not None and parent["status"] == "running":
            _insert_inbox(
                conn,
                parent["namespace"],
                parent["workflow_id"],
                parent["run_id"],
                "child_result",
                row["workflow_type"],
                [
                    {
                        "child_id": row["child_id"],
                        "workflow_id": row["workflow_id"],
                        "run_id": run_id,
                        "status": status,
                        "result": result,
                        "error": error,
                    }
                ],
            )
    if status != "continued_as_new" and had_children:
        for child in conn.execute(_Q["running_children"], {"run_id": run_id}).fetchall():
            policy = child["parent_close_policy"] or "terminate"
            if policy == "terminate":
                _terminate(conn, child, f"parent {row['workflow_id']!r} closed ({status})")
            elif policy == "request_cancel":
                _insert_inbox(
                    conn,
                    child["namespace"],
                    child["workflow_id"],
                    child["run_id"],
                    "cancel",
                    None,
                    [f"parent {row['workflow_id']!r} closed ({status})"],
                )
    for update in conn.execute(
        _Q["pending_updates"],
        {"namespace": row["namespace"], "workflow_id": row["workflow_id"], "run_id": run_id},
    ).fetchall():
        if status == "continued_as_new" and update["run_id"] is None:
            continue  # addressed to the workflow, not this run: the next run takes it
        payload = json.loads(update["payload"])
        update_id = (payload[0] if isinstance(payload, list) else payload).get("update_id")
        conn.execute(_Q["delete_inbox"], {"inbox_id": update["inbox_id"]})
        if update_id:
            _insert_reply(
                conn,
                str(update_id),
                run_id,
                {
                    "rejected": True,
                    "error": {
                        "type": "UpdateRejectedError",
                        "message": f"workflow {row['workflow_id']!r} closed ({status}) first",
                    },
                },
            )


def _terminate(conn: sqlite3.Connection, row: sqlite3.Row, reason: str) -> None:
    """End a running run at once, without running its code."""
    seq = conn.execute(_Q["bump_seq"], {"run_id": row["run_id"]}).fetchone()["seq"]
    now = utcnow()
    conn.execute(
        _Q["append_event"],
        _event_params(
            row["run_id"],
            HistoryEvent(
                seq=seq,
                event_type=EventType.WORKFLOW_TERMINATED,
                name=None,
                attributes={"reason": reason},
                created_at=now,
            ),
        ),
    )
    error = {"type": "TerminatedError", "message": reason, "attrs": {"reason": reason}}
    conn.execute(
        _Q["close_run"],
        {
            "run_id": row["run_id"],
            "status": "terminated",
            "result": None,
            "error": _dumps(error),
            "closed_at": fmt(now),
            "continued_run_id": None,
        },
    )
    conn.execute(_Q["delete_run_tasks"], {"run_id": row["run_id"]})
    _after_close(conn, row, "terminated", None, error)


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
