"""The statements of the PostgreSQL and CockroachDB stores' transactions.

Rows in, rows out; the same steps as the SQLite store's, in the same order, so the
dialects stay alike. Every method runs inside a transaction its caller opened.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pydantic_core
from psycopg import errors

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
    NewRun,
    RemoteTask,
    RunExists,
    RunRecord,
    ScheduleChange,
    ScheduleDecision,
    ScheduleRecord,
    StepCommit,
    StepRejected,
    utcnow,
)
from perdure._store._postgres_db import Conn
from perdure._store._times import iso

Row = dict[str, Any]


_json_dumps = json.JSONEncoder(separators=(",", ":")).encode
_json_string: Callable[[str], str] = json.encoder.encode_basestring


def dumps(value: Any) -> str:
    """JSON text of a JSON-able value (as the SQLite store writes it).

    pydantic-core (already a dependency) encodes several times faster than ``json``; the
    text differs only in not escaping non-ASCII (same JSON values), and ``NaN`` and
    ``Infinity`` stay as ``json`` writes them. What it refuses goes to ``json``.
    """
    try:
        return pydantic_core.to_json(value, inf_nan_mode="constants").decode()
    except (pydantic_core.PydanticSerializationError, UnicodeError, ValueError):
        return _json_dumps(value)


def _json(value: Any) -> Any:
    """A JSON column as Python: json/jsonb arrive decoded, text (CockroachDB) does not."""
    return json.loads(value) if isinstance(value, str) else value


# A running run's next_event_seq from its history (queries.sql: latest_run), for
# list_runs, whose query is put together in Python.
HISTORY_NEXT_SEQ = (
    "CASE WHEN w.status = 'running' THEN (SELECT coalesce(max(h.seq), 0) + 1"
    " FROM perdure.history h WHERE h.run_id = w.run_id) END AS history_next_seq"
)


def run_from_row(row: Row) -> RunRecord:
    """``history_next_seq``, where the query reads it (what clients read of a running run):
    next_event_seq from the history, which a held run's row may trail (commit_step_held)."""
    next_seq = row.get("history_next_seq")
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
        parent_close_policy=row["parent_close_policy"],
        child_id=row["child_id"],
        search_attributes=row["search_attributes"],
        memo=row["memo"],
        continued_run_id=row["continued_run_id"],
        next_event_seq=row["next_event_seq"] if next_seq is None else next_seq,
        wake_at=row["wake_at"],
        owner=row["owner"],
        parked_error=row["parked_error"],
        created_at=row["created_at"],
        closed_at=row["closed_at"],
    )


def event_from_row(row: Row) -> HistoryEvent:
    return HistoryEvent(
        seq=row["seq"],
        event_type=row["event_type"],
        name=row["name"],
        attributes=_json(row["attributes"]),
        created_at=row["created_at"],
    )


def inbox_from_row(row: Row) -> InboxItem:
    payload = row["payload"]  # jsonb: always valid JSON, whoever inserted it
    return InboxItem(
        inbox_id=row["inbox_id"],
        run_id=row["run_id"],
        kind=row["kind"],
        name=row["name"],
        payload=payload if isinstance(payload, list) else [payload],
        created_at=row["created_at"],
    )


def task_from_row(row: Row) -> ActivityTask:
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


def remote_task_from_row(row: Row) -> RemoteTask:
    return RemoteTask(
        namespace=row["namespace"],
        run_id=row["run_id"],
        workflow_id=row["workflow_id"],
        workflow_type=row["workflow_type"],
        activity_id=row["activity_id"],
        activity_type=row["activity_type"],
        task_queue=row["task_queue"],
        label=row["label"],
        args=row["args"],
        options=row["options"],
        attempt=row["attempt"],
        scheduled_at=row["scheduled_at"],
        heartbeat_details=row["heartbeat_details"],
    )


def progress_params(run_id: str, activity: ActivityProgress) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "activity_id": activity.activity_id,
        "activity_type": activity.activity_type,
        "label": activity.label,
        "attempt": activity.attempt,
        "scheduled_at": activity.scheduled_at,
        "heartbeat_details": dumps(activity.heartbeat_details),
    }


def event_params(run_id: str, event: HistoryEvent) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "seq": event.seq,
        "event_type": event.event_type,
        "name": event.name,
        "attributes": dumps(event.attributes),
        "created_at": event.created_at,
    }


def is_plain(step: StepCommit) -> bool:
    """A step the one-statement ``commit_step`` query can take (with the run's start ahead).

    It touches only its own run's rows, its parent's inbox and waiting updates: no
    children to start or close, messages, replies or continue-as-new, and a start only
    with the id policies that a plain insert decides (``start_insert``).
    """
    if step.children or step.messages or step.replies or step.continue_as_new:
        return False
    close = step.close
    if close is not None and (close.had_children or close.status == "continued_as_new"):
        return False
    start = step.start
    return start is None or (
        plain_start(start) and not step.consumed_inbox and not step.finished_tasks
    )


def closes_at_start(step: StepCommit) -> bool:
    """Of a plain step (``is_plain``, which the caller checked): it starts its run and
    also ends it (a workflow that returns without waiting), a run with no parent and no
    search attributes to merge, so the run can be inserted closed
    (``insert_runs_closed``)."""
    start = step.start
    return (
        start is not None
        and step.close is not None
        and start.parent_run_id is None
        and not step.search_attributes
        and not step.new_tasks
    )


def closed_start_params(step: StepCommit) -> dict[str, Any]:
    """The parameters of ``insert_run_closed`` (one run of ``insert_runs_closed``); its
    ``body`` is the run's JSON object without its position, for ``merged_closed_starts``."""
    run, close = step.start, step.close
    assert run is not None and close is not None
    body = (
        f'"run_id":{_text(run.run_id)},"namespace":{_text(run.namespace)},'
        f'"workflow_id":{_text(run.workflow_id)},'
        f'"workflow_type":{_text(run.workflow_type)},"task_queue":{_text(run.task_queue)},'
        f'"input":{dumps(run.input)},"parent_close_policy":{_text(run.parent_close_policy)},'
        f'"search_attributes":{dumps(run.search_attributes)},"memo":{dumps(run.memo)},'
        f'"created_at":{_json_time(run.created_at or utcnow())},'
        f'"next_event_seq":{step.expected_seq + len(step.events)},'
        f'"status":{_text(close.status)},'
        f'"result":{"null" if close.result is None else dumps(close.result)},'
        f'"error":{"null" if close.error is None else dumps(close.error)},'
        f'"closed_at":{_json_time(utcnow())},"events":{events_json(step.events)}'
    )
    return {"runs": f'[{{"i":0,{body}}}]', "body": body}


def merged_closed_starts(starts: list[dict[str, Any]]) -> dict[str, Any]:
    """The parameters of ``insert_runs_closed``: many runs' ``closed_start_params``."""
    parts = [f'{{"i":{i},{p["body"]}}}' for i, p in enumerate(starts)]
    return {"runs": "[" + ",".join(parts) + "]"}


def plain_start(run: NewRun) -> bool:
    """Whether a plain insert that skips a taken id decides this start (``start_insert``)."""
    return run.id_reuse_policy == "allow_duplicate" and run.id_conflict_policy in (
        "fail",
        "use_existing",
    )


def inbox_params(
    namespace: str,
    workflow_id: str,
    run_id: str | None,
    kind: str,
    name: str | None,
    payload: list[Any],
) -> dict[str, Any]:
    """The parameters of ``insert_inbox`` and ``insert_inbox_running``."""
    return {
        "namespace": namespace,
        "workflow_id": workflow_id,
        "run_id": run_id,
        "kind": kind,
        "name": name,
        "payload": dumps(payload),
        "created_at": utcnow(),
    }


def merged_message_params(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The parameters of ``insert_inbox_many``: many messages' ``inbox_params`` as one
    JSON array (each payload is a JSON text already and goes in as it is)."""
    parts = [
        f'{{"i":{i},"namespace":{_text(p["namespace"])},'
        f'"workflow_id":{_text(p["workflow_id"])},"run_id":{_text(p["run_id"])},'
        f'"kind":{_text(p["kind"])},"name":{_text(p["name"])},"payload":{p["payload"]},'
        f'"created_at":{_json_time(p["created_at"])}}}'
        for i, p in enumerate(messages)
    ]
    return {"messages": "[" + ",".join(parts) + "]"}


def not_running(workflow_id: str, run_id: str | None, latest: Row | None) -> WorkflowNotFoundError:
    """What to say when no run of ``workflow_id`` (or not ``run_id``) is running."""
    detail = f" (its last run is {latest['status']})" if latest is not None else ""
    return WorkflowNotFoundError(
        f"no running workflow with id {workflow_id!r}"
        + (f" and run id {run_id!r}" if run_id else "")
        + detail
    )


def id_array(ids: list[int]) -> str:
    """An integer array literal: a text parameter costs far less to send than a list."""
    return "{" + ",".join(str(int(i)) for i in ids) + "}"


def events_json(events: list[HistoryEvent]) -> str:
    """History events as one JSON array, for the statements that insert them as a set."""
    return dumps(
        [
            {
                "seq": e.seq,
                "event_type": e.event_type,
                "name": e.name,
                "attributes": e.attributes,
                "created_at": iso(e.created_at),
            }
            for e in events
        ]
    )


def plain_step_params(step: StepCommit) -> dict[str, Any]:
    """The parameters of the one-statement ``commit_step`` (or ``commit_step_lean``) query."""
    close = step.close
    params: dict[str, Any] = {
        "run_id": step.run_id,
        "worker_id": step.worker_id,
        "expected_seq": step.expected_seq,
        "next_event_seq": step.expected_seq + len(step.events),
        "wake_at": step.wake_at,
        "lease_until": step.lease_until,
        "release": step.release,
        "events": events_json(step.events),
        "tasks": dumps(
            [
                {
                    "activity_id": t.activity_id,
                    "activity_type": t.activity_type,
                    "task_queue": t.task_queue,
                    "label": t.label,
                    "args": t.args,
                    "options": t.options,
                    "scheduled_at": iso(t.scheduled_at),
                    "visible_at": iso(t.visible_at),
                }
                for t in step.new_tasks
            ]
        ),
        "finished_tasks": id_array(step.finished_tasks),
        "consumed_inbox": id_array(step.consumed_inbox),
        "patch": None if not step.search_attributes else dumps(step.search_attributes),
    }
    if close is not None:  # only commit_step reads these (commit_step_lean does not close)
        params["status"] = close.status
        params["result"] = None if close.result is None else dumps(close.result)
        params["error"] = None if close.error is None else dumps(close.error)
        params["closed_at"] = utcnow()
    return params


def _text(value: str | None) -> str:
    """A JSON string (or null), without a JSON encoder's per-call overhead."""
    return "null" if value is None else _json_string(value)


def _int(value: int | None) -> str:
    return "null" if value is None else str(int(value))


def _json_time(value: datetime | None) -> str:
    return "null" if value is None else f'"{iso(value)}"'


def touches_no_other_rows(params: dict[str, Any]) -> bool:
    """A lean step that adds no task rows, deletes none and consumes no inbox message:
    its run's row and its events are all it writes (``commit_step_slim``)."""
    return bool(
        params["tasks"] == "[]"
        and params["finished_tasks"] == "{}"
        and params["consumed_inbox"] == "{}"
    )


def mergeable_held(params: dict[str, Any]) -> bool:
    """Whether a lean step can go in ``commit_steps_held``: its run stays due and its row
    has nothing to change (``held``, set by the store), and it writes nothing else."""
    return bool(params.get("held")) and touches_no_other_rows(params)


def merged_held_params(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The parameters of ``commit_steps_held``: the fences and events of many steps."""
    parts = [
        f'{{"i":{i},"run_id":{_text(p["run_id"])},"worker_id":{_text(p["worker_id"])},'
        f'"expected_seq":{int(p["expected_seq"])},"wake_at":{_json_time(p["wake_at"])},'
        f'"events":{p["events"]}}}'
        for i, p in enumerate(steps)
    ]
    return {"steps": "[" + ",".join(parts) + "]", "run_ids": [p["run_id"] for p in steps]}


def mergeable(params: dict[str, Any]) -> bool:
    """Whether a lean step can go in ``commit_steps_lean``: it deletes no rows."""
    return bool(params["finished_tasks"] == "{}" and params["consumed_inbox"] == "{}")


def mergeable_close(params: dict[str, Any]) -> bool:
    """Whether a closing step can go in ``commit_steps_close``: it deletes no task rows
    (the inbox messages it took go by their ids)."""
    return bool(params["finished_tasks"] == "{}")


def _step_json(i: int, p: dict[str, Any], extra: str) -> str:
    """One step of a merged statement as a JSON object: what every kind of step has
    (its fence, events, tasks and patch), then ``extra``, its kind's own fields."""
    return (
        f'{{"i":{i},"run_id":{_text(p["run_id"])},"worker_id":{_text(p["worker_id"])},'
        f'"expected_seq":{int(p["expected_seq"])},'
        f'"next_event_seq":{int(p["next_event_seq"])},'
        f'"patch":{"null" if p["patch"] is None else p["patch"]},'
        f'"events":{p["events"]},"tasks":{p["tasks"]},{extra}}}'
    )


def _merged_steps(
    steps: list[dict[str, Any]], fields: Callable[[dict[str, Any]], str]
) -> dict[str, Any]:
    """Many steps as one JSON array (``_step_json`` with each kind's own ``fields``)."""
    parts = [_step_json(i, p, fields(p)) for i, p in enumerate(steps)]
    return {"steps": "[" + ",".join(parts) + "]", "run_ids": [p["run_id"] for p in steps]}


def merged_step_params(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The parameters of ``commit_steps_lean``: many steps' ``plain_step_params`` in one.

    The steps go as one JSON array; their events and tasks are JSON texts already and go
    in as they are (not decoded and encoded again).
    """
    return _merged_steps(steps, _lean_fields)


def _lean_fields(p: dict[str, Any]) -> str:
    return (
        f'"wake_at":{_json_time(p["wake_at"])},'
        f'"lease_until":{_json_time(p["lease_until"])},'
        f'"release":{"true" if p["release"] else "false"}'
    )


def merged_close_params(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The parameters of ``commit_steps_close``: many closing steps' ``plain_step_params``."""
    return _merged_steps(steps, _close_fields)


def _close_fields(p: dict[str, Any]) -> str:
    return (
        f'"status":{_text(p["status"])},'
        f'"result":{"null" if p["result"] is None else p["result"]},'
        f'"error":{"null" if p["error"] is None else p["error"]},'
        f'"closed_at":{_json_time(p["closed_at"])},'
        f'"consumed":[{p["consumed_inbox"][1:-1]}]'
    )


def merged_start_params(starts: list[dict[str, Any]]) -> dict[str, Any]:
    """The parameter of ``insert_runs``: many runs' ``start_params`` as one JSON array.

    Their JSON columns are JSON texts already and go in as they are.
    """
    parts = [
        f'{{"i":{i},"run_id":{_text(p["run_id"])},"namespace":{_text(p["namespace"])},'
        f'"workflow_id":{_text(p["workflow_id"])},'
        f'"workflow_type":{_text(p["workflow_type"])},'
        f'"task_queue":{_text(p["task_queue"])},"input":{p["input"]},'
        f'"parent_workflow_id":{_text(p["parent_workflow_id"])},'
        f'"parent_run_id":{_text(p["parent_run_id"])},'
        f'"parent_close_policy":{_text(p["parent_close_policy"])},'
        f'"child_id":{_int(p["child_id"])},'
        f'"search_attributes":{p["search_attributes"]},"memo":{p["memo"]},'
        f'"wake_at":{_json_time(p["wake_at"])},"owner":{_text(p["owner"])},'
        f'"lease_until":{_json_time(p["lease_until"])},'
        f'"created_at":{_json_time(p["created_at"])}}}'
        for i, p in enumerate(starts)
    ]
    return {"runs": "[" + ",".join(parts) + "]"}


def start_params(run: NewRun) -> dict[str, Any]:
    """The parameters of ``insert_run`` (and of ``start_insert``)."""
    return run.insert_params(dumps, _as_is)


def _as_is(when: datetime | None) -> datetime | None:
    return when  # psycopg sends datetimes as timestamptz


def start_insert(insert_run: str) -> str:
    """``insert_run`` that inserts nothing (instead of failing) when the id is taken.

    A start that loses to a running run of the same workflow id then leaves its batch
    alone; the transaction path runs it again and applies the id policies.
    """
    return insert_run.rstrip().rstrip(";") + "\nON CONFLICT DO NOTHING RETURNING 1 AS inserted"


def schedule_from_row(row: Row) -> ScheduleRecord:
    return ScheduleRecord(
        namespace=row["namespace"],
        schedule_id=row["schedule_id"],
        workflow_type=row["workflow_type"],
        task_queue=row["task_queue"],
        args=_json(row["args"]),
        spec=_json(row["spec"]),
        overlap=row["overlap"],
        catchup_window=float(row["catchup_window"]),
        paused=bool(row["paused"]),
        next_fire_at=row["next_fire_at"],
        due_at=row["due_at"],
        last_fire_at=row["last_fire_at"],
        last_run_id=row["last_run_id"],
        buffered_fire_at=row["buffered_fire_at"],
        recent_runs=_json(row["recent_runs"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def schedule_params(schedule: ScheduleRecord) -> dict[str, Any]:
    return schedule.insert_params(dumps, _as_is)


def change_params(change: ScheduleChange, started: list[NewRun]) -> dict[str, Any]:
    dropped = {r.run_id for r in change.starts} - {r.run_id for r in started}
    return {
        "paused": change.paused,
        "next_fire_at": change.next_fire_at,
        "due_at": change.due_at,
        "last_fire_at": change.last_fire_at,
        "last_run_id": None if change.last_run_id in dropped else change.last_run_id,
        "buffered_fire_at": change.buffered_fire_at,
        "recent_runs": dumps([r for r in change.recent_runs if r.get("run_id") not in dropped]),
        "now": utcnow(),
    }


class Statements:
    """Transaction bodies over one schema's named queries (``q``)."""

    def __init__(self, q: dict[str, str], *, bulk_starts: bool = False) -> None:
        self.q = q
        # PostgreSQL: a step's children go in as one insert_runs statement (start_children),
        # and its events as one append_events statement.
        self.bulk_starts = bulk_starts

    async def one(self, conn: Conn, name: str, params: Any) -> Row | None:
        return await (await conn.execute(self.q[name], params)).fetchone()

    async def all(self, conn: Conn, name: str, params: Any) -> list[Row]:
        return await (await conn.execute(self.q[name], params)).fetchall()

    async def running_row(
        self, conn: Conn, namespace: str, workflow_id: str, run_id: str | None
    ) -> Row:
        key = {"namespace": namespace, "workflow_id": workflow_id}
        row = await self.one(conn, "running_run", key)
        if row is None or (run_id is not None and row["run_id"] != run_id):
            raise not_running(workflow_id, run_id, await self.one(conn, "latest_run", key))
        return row

    async def insert_inbox(
        self,
        conn: Conn,
        namespace: str,
        workflow_id: str,
        run_id: str | None,
        kind: str,
        name: str | None,
        payload: list[Any],
    ) -> None:
        await conn.execute(
            self.q["insert_inbox"],
            inbox_params(namespace, workflow_id, run_id, kind, name, payload),
        )

    async def insert_run(self, conn: Conn, run: NewRun) -> tuple[str, bool]:
        """Insert a run, applying its id reuse and conflict policies."""
        key = {"namespace": run.namespace, "workflow_id": run.workflow_id}
        running = await self.one(conn, "running_run", key)
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
            await self.terminate(conn, running, "terminated by a new start (terminate_existing)")
        if run.id_reuse_policy != "allow_duplicate":
            latest = await self.one(conn, "latest_run", key)
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
        await conn.execute(self.q["insert_run"], start_params(run))
        return run.run_id, True

    async def commit_step(self, conn: Conn, step: StepCommit) -> None:
        """Any step, as several statements; raises ``StepRejected`` if the fence fails."""
        if step.start is not None:  # the run's own start, in the same transaction
            run_id, created = await self.insert_run(conn, step.start)
            if not created:
                raise RunExists(run_id)
        fenced = await conn.execute(
            self.q["fence_step"],
            {
                "run_id": step.run_id,
                "worker_id": step.worker_id,
                "expected_seq": step.expected_seq,
                "next_event_seq": step.expected_seq + len(step.events),
                "wake_at": step.wake_at,
                "lease_until": step.lease_until,
                "release": step.release,
                "consumed_inbox": list(step.consumed_inbox),
            },
        )
        if fenced.rowcount != 1:
            raise StepRejected(step.run_id)
        async with conn.pipeline():  # writes that need no answer go out together
            await self._own_rows(conn, step)
        if step.children:
            await self.start_children(conn, step)
        for msg in step.messages:
            # Addressed to the workflow id (its current run, after any continue-as-new);
            # a workflow that is no longer running simply does not get it.
            key = {"namespace": msg.namespace, "workflow_id": msg.workflow_id}
            if await self.one(conn, "running_run", key):
                await self.insert_inbox(
                    conn,
                    msg.namespace,
                    msg.workflow_id,
                    None,
                    msg.kind,
                    msg.name,
                    msg.payload,
                )
        for reply_id, outcome in step.replies.items():
            await self.insert_reply(conn, reply_id, step.run_id, outcome)
        if step.close is not None:
            close = step.close
            await conn.execute(
                self.q["close_run"],
                {
                    "run_id": step.run_id,
                    "status": close.status,
                    "result": None if close.result is None else dumps(close.result),
                    "error": None if close.error is None else dumps(close.error),
                    "closed_at": utcnow(),
                    "continued_run_id": close.continued_run_id,
                },
            )
            row = await self.one(conn, "get_run", {"run_id": step.run_id})
            assert row is not None
            await self.after_close(
                conn, row, close.status, close.result, close.error, had_children=close.had_children
            )
            if step.continue_as_new is not None:
                await self.insert_run(conn, step.continue_as_new)

    async def _own_rows(self, conn: Conn, step: StepCommit) -> None:
        cur = conn.cursor()
        if len(step.events) > 1 and self.bulk_starts:  # one statement, not one per event
            events = {"run_id": step.run_id, "events": events_json(step.events)}
            await conn.execute(self.q["append_events"], events)
        elif step.events:
            await cur.executemany(
                self.q["append_event"], [event_params(step.run_id, e) for e in step.events]
            )
        for activity_id in step.finished_tasks:
            await conn.execute(
                self.q["delete_task"], {"run_id": step.run_id, "activity_id": activity_id}
            )
        if step.new_tasks:
            await cur.executemany(
                self.q["insert_task"],
                [
                    {
                        "namespace": step.namespace,
                        "run_id": step.run_id,
                        "activity_id": t.activity_id,
                        "activity_type": t.activity_type,
                        "task_queue": t.task_queue,
                        "label": t.label,
                        "args": dumps(t.args),
                        "options": dumps(t.options),
                        "scheduled_at": t.scheduled_at,
                        "visible_at": t.visible_at,
                    }
                    for t in step.new_tasks
                ],
            )
        if step.consumed_inbox:
            await cur.executemany(
                self.q["delete_inbox"], [{"inbox_id": i} for i in step.consumed_inbox]
            )
        if step.search_attributes:
            await conn.execute(
                self.q["merge_search_attributes"],
                {"run_id": step.run_id, "patch": dumps(step.search_attributes)},
            )

    async def start_children(self, conn: Conn, step: StepCommit) -> None:
        """Start a step's children, in order.

        One by one, each is a savepoint and two or three statements: a fan-out of 1,000
        children took ~4,000 round trips in one transaction. When every child's id
        policies are those a plain insert decides (``is_plain``'s starts), they go in as
        ONE ``insert_runs`` statement; a child whose id is taken inserts nothing there and
        then takes the one-by-one path, which applies its policies as before.
        """
        children = step.children
        if not self.bulk_starts or len(children) < 2 or not all(map(plain_start, children)):
            for child in children:
                await self.start_child(conn, step, child)
            return
        runs = merged_start_params([start_params(child) for child in children])
        cur = await conn.execute(self.q["insert_runs"], runs)
        inserted = {row["run_id"] for row in await cur.fetchall()}
        for child in children:
            if child.run_id not in inserted:
                await self.start_child(conn, step, child)

    async def start_child(self, conn: Conn, step: StepCommit, child: NewRun) -> None:
        """Start a child run; if its id is taken, tell the parent through its inbox."""
        try:
            async with conn.transaction():  # a savepoint
                await self.insert_run(conn, child)
        except (WorkflowAlreadyStartedError, errors.UniqueViolation) as exc:
            taken = (
                exc
                if isinstance(exc, WorkflowAlreadyStartedError)
                else WorkflowAlreadyStartedError(
                    f"workflow {child.workflow_id!r} was started by someone else meanwhile",
                    workflow_id=child.workflow_id,
                    workflow_type=child.workflow_type,
                )
            )
            await self.insert_inbox(
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
                        "error": failure_to_dict(taken),
                    }
                ],
            )

    async def insert_reply(
        self, conn: Conn, reply_id: str, run_id: str, outcome: dict[str, Any]
    ) -> None:
        await conn.execute(
            self.q["insert_reply"],
            {
                "reply_id": reply_id,
                "run_id": run_id,
                "outcome": dumps(outcome),
                "created_at": utcnow(),
            },
        )

    async def after_close(
        self,
        conn: Conn,
        row: Row,
        status: str,
        result: Any,
        error: Any,
        *,
        had_children: bool = True,
    ) -> None:
        """What a run's end means for others: its parent, its children, waiting updates."""
        run_id = row["run_id"]
        if status != "continued_as_new" and row["parent_run_id"] is not None:
            parent = await self.one(conn, "get_run", {"run_id": row["parent_run_id"]})
            if parent is not None and parent["status"] == "running":
                await self.insert_inbox(
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
            await self._close_children(conn, row, status)
        key = {"namespace": row["namespace"], "workflow_id": row["workflow_id"], "run_id": run_id}
        for update in await self.all(conn, "pending_updates", key):
            if status == "continued_as_new" and update["run_id"] is None:
                continue  # addressed to the workflow, not this run: the next run takes it
            payload = _json(update["payload"])
            first = payload[0] if isinstance(payload, list) and payload else payload
            update_id = first.get("update_id") if isinstance(first, dict) else None
            await conn.execute(self.q["delete_inbox"], {"inbox_id": update["inbox_id"]})
            if update_id:
                await self.insert_reply(
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

    async def _close_children(self, conn: Conn, row: Row, status: str) -> None:
        reason = f"parent {row['workflow_id']!r} closed ({status})"
        for child in await self.all(conn, "running_children", {"run_id": row["run_id"]}):
            policy = child["parent_close_policy"] or "terminate"
            if policy == "terminate":
                await self.terminate(conn, child, reason)
            elif policy == "request_cancel":
                await self.insert_inbox(
                    conn,
                    child["namespace"],
                    child["workflow_id"],
                    child["run_id"],
                    "cancel",
                    None,
                    [reason],
                )

    async def terminate(self, conn: Conn, row: Row, reason: str) -> None:
        """End a running run at once, without running its code."""
        bumped = await self.one(conn, "bump_seq", {"run_id": row["run_id"]})
        assert bumped is not None
        now = utcnow()
        event = HistoryEvent(
            seq=bumped["seq"],
            event_type=EventType.WORKFLOW_TERMINATED,
            name=None,
            attributes={"reason": reason},
            created_at=now,
        )
        await conn.execute(self.q["append_event"], event_params(row["run_id"], event))
        error = {"type": "TerminatedError", "message": reason, "attrs": {"reason": reason}}
        await conn.execute(
            self.q["close_run"],
            {
                "run_id": row["run_id"],
                "status": "terminated",
                "result": None,
                "error": dumps(error),
                "closed_at": now,
                "continued_run_id": None,
            },
        )
        await conn.execute(self.q["delete_run_tasks"], {"run_id": row["run_id"]})
        await self.after_close(conn, row, "terminated", None, error)

    async def change_schedule(
        self,
        conn: Conn,
        namespace: str,
        schedule_id: str,
        decide: ScheduleDecision,
        skip_locked: bool,
    ) -> tuple[bool, list[NewRun]]:
        """Lock the schedule's row, decide, then write the change (one transaction)."""
        key = {"namespace": namespace, "schedule_id": schedule_id}
        row = await self.one(conn, "claim_schedule" if skip_locked else "lock_schedule", key)
        if row is None:
            return False, []
        schedule = schedule_from_row(row)
        last_status = None
        if schedule.last_run_id is not None:
            last = await self.one(conn, "get_run", {"run_id": schedule.last_run_id})
            last_status = None if last is None else str(last["status"])
        change = decide(schedule, last_status)
        if change is None:
            return True, []
        reason = f"cancelled by schedule {schedule_id!r} (overlap cancel_other)"
        for workflow_id, run_id in change.cancels:
            running = await self.one(
                conn, "running_run", {"namespace": namespace, "workflow_id": workflow_id}
            )
            if running is not None and running["run_id"] == run_id:
                await self.insert_inbox(
                    conn, namespace, workflow_id, run_id, "cancel", None, [reason]
                )
        started: list[NewRun] = []
        for run in change.starts:
            try:
                await self.insert_run(conn, run)
            except WorkflowAlreadyStartedError:
                if change.strict:
                    raise
                continue  # this fire was already started: exactly once
            started.append(run)
        await conn.execute(self.q["update_schedule"], {**key, **change_params(change, started)})
        return True, started
