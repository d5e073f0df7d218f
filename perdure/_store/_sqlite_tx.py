"""Transaction bodies of the SQLite store: each runs inside one write transaction.

They take a connection that is already in a transaction (``SQLiteDB`` opens and
commits it, grouping many of them) and speak rows, not coroutines.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from typing import Any

import pydantic_core

from perdure._errors import (
    WorkflowAlreadyStartedError,
    WorkflowNotFoundError,
    failure_to_dict,
)
from perdure._history import EventType, HistoryEvent
from perdure._store._base import (
    ActivityProgress,
    InboxItem,
    NewRun,
    RunClose,
    RunExists,
    RunRecord,
    ScheduleChange,
    ScheduleDecision,
    ScheduleRecord,
    StepCommit,
    StepRejected,
    utcnow,
)
from perdure._store._queries import load_queries
from perdure._store._times import parse, parse_opt, whole_second

Q = load_queries("sqlite")

_json_dumps = json.JSONEncoder(separators=(",", ":")).encode


def dumps(value: Any) -> str:
    """JSON text of a JSON-able value.

    pydantic-core (already a dependency) encodes 4-6x faster than ``json``; the text
    differs only in not escaping non-ASCII (same JSON values), and ``NaN``/``Infinity``
    are kept as ``json`` writes them. What it refuses (lone surrogates) goes to ``json``.
    """
    try:
        return pydantic_core.to_json(value, inf_nan_mode="constants").decode()
    except (pydantic_core.PydanticSerializationError, UnicodeError, ValueError):
        return _json_dumps(value)


_last_fmt: tuple[datetime | None, str] = (None, "")


def fmt(value: datetime) -> str:
    """UTC text as the schema stores it; a step formats the same ``now`` several times."""
    global _last_fmt
    last = _last_fmt
    if value is last[0]:
        return last[1]
    text = fmt_once(value)
    _last_fmt = (value, text)
    return text


def fmt_once(value: datetime) -> str:
    """``fmt`` for a time no other column of the step shares (keeps the cache for ``now``)."""
    utc = value if value.tzinfo is UTC else value.astimezone(UTC)
    return f"{whole_second(utc)}.{utc.microsecond:06d}Z"


def fmt_opt(value: datetime | None) -> str | None:
    return None if value is None else fmt(value)


# Runs as the client reads them: next_event_seq from the history itself, which a held
# run's row may trail (see FENCE_HELD_DUE). Not in queries.sql: SQLite's alone.
_HISTORY_END = (
    "(SELECT coalesce(max(h.seq), 0) + 1 FROM perdure_history h WHERE h.run_id = w.run_id)"
)
RUNS_WITH_HISTORY_END = f"SELECT w.*, {_HISTORY_END} AS history_next_seq FROM perdure_workflows w"
GET_RUN_EXACT = f"{RUNS_WITH_HISTORY_END} WHERE w.run_id = :run_id"
LATEST_RUN_EXACT = (
    f"{RUNS_WITH_HISTORY_END} WHERE w.namespace = :namespace AND w.workflow_id = :workflow_id"
    " ORDER BY w.created_at DESC, w.rowid DESC LIMIT 1"
)


def run_from_row(row: sqlite3.Row, *, exact: bool = False) -> RunRecord:
    """``exact``: the row comes from RUNS_WITH_HISTORY_END (next_event_seq from history)."""
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
        next_event_seq=row["history_next_seq" if exact else "next_event_seq"],
        wake_at=parse_opt(row["wake_at"]),
        owner=row["owner"],
        parked_error=row["parked_error"],
        created_at=parse(row["created_at"]),
        closed_at=parse_opt(row["closed_at"]),
    )


def event_from_row(row: sqlite3.Row) -> HistoryEvent:
    return HistoryEvent(
        seq=row["seq"],
        event_type=row["event_type"],
        name=row["name"],
        attributes=json.loads(row["attributes"]),
        created_at=parse(row["created_at"]),
    )


def inbox_from_row(row: sqlite3.Row) -> InboxItem:
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


def progress_params(run_id: str, activity: ActivityProgress) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "activity_id": activity.activity_id,
        "activity_type": activity.activity_type,
        "label": activity.label,
        "attempt": activity.attempt,
        "scheduled_at": fmt(activity.scheduled_at),
        "heartbeat_details": dumps(activity.heartbeat_details),
    }


def event_params(run_id: str, event: HistoryEvent) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "seq": event.seq,
        "event_type": event.event_type,
        "name": event.name,
        "attributes": dumps(event.attributes),
        "created_at": fmt(event.created_at),
    }


def running_row(
    conn: sqlite3.Connection, namespace: str, workflow_id: str, run_id: str | None
) -> sqlite3.Row:
    row = conn.execute(
        Q["running_run"], {"namespace": namespace, "workflow_id": workflow_id}
    ).fetchone()
    if row is None or (run_id is not None and row["run_id"] != run_id):
        latest = conn.execute(
            Q["latest_run"], {"namespace": namespace, "workflow_id": workflow_id}
        ).fetchone()
        detail = f" (its last run is {latest['status']})" if latest is not None else ""
        raise WorkflowNotFoundError(
            f"no running workflow with id {workflow_id!r}"
            + (f" and run id {run_id!r}" if run_id else "")
            + detail
        )
    found: sqlite3.Row = row
    return found


def insert_inbox(
    conn: sqlite3.Connection,
    namespace: str,
    workflow_id: str,
    run_id: str | None,
    kind: str,
    name: str | None,
    payload: list[Any],
) -> None:
    conn.execute(
        Q["insert_inbox"],
        {
            "namespace": namespace,
            "workflow_id": workflow_id,
            "run_id": run_id,
            "kind": kind,
            "name": name,
            "payload": dumps(payload),
            "created_at": fmt(utcnow()),
        },
    )


def insert_run(
    conn: sqlite3.Connection, run: NewRun, first_step: StepCommit | None = None
) -> tuple[str, bool]:
    """Insert a run, applying its id reuse and conflict policies; with ``first_step``
    (see ``stepped_start``), as that step's fence would leave its row."""
    params = run_params(run)
    insert = Q["insert_run"]
    if first_step is not None:
        insert = Q["insert_run_stepped"]
        params["next_event_seq"] = first_step.expected_seq + len(first_step.events)
        params["wake_at"] = fmt_opt(first_step.wake_at)
        params["lease_until"] = fmt_opt(first_step.lease_until)
    if run.id_reuse_policy == "allow_duplicate":
        # Most starts conflict with nothing: try the insert first (the unique index on
        # running runs refuses a conflict, changing nothing), look for a conflict after.
        try:
            conn.execute(insert, params)
            return run.run_id, True
        except sqlite3.IntegrityError:
            pass
    key = {"namespace": run.namespace, "workflow_id": run.workflow_id}
    running = conn.execute(Q["running_run"], key).fetchone()
    if running is not None:
        if run.id_conflict_policy == "use_existing":
            return running["run_id"], False
        if run.id_conflict_policy == "terminate_existing":
            terminate(conn, running, "terminated by a new start (terminate_existing)")
        else:
            raise WorkflowAlreadyStartedError(
                f"workflow {run.workflow_id!r} is already running (run "
                f"{running['run_id']}); pass id_conflict_policy='use_existing' to get it",
                workflow_id=run.workflow_id,
                run_id=running["run_id"],
                workflow_type=running["workflow_type"],
            )
    if run.id_reuse_policy != "allow_duplicate":
        latest = conn.execute(Q["latest_run"], key).fetchone()
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
    conn.execute(insert, params)
    return run.run_id, True


def stepped_start(step: StepCommit) -> bool:
    """Whether the run this step starts can be inserted as its fence would leave it.

    The fence of a run inserted by the same transaction, owned by this worker, always
    passes; what it writes can go into the insert. Steps that release the run or
    consume inbox messages take the general path (insert, then fence).
    """
    start = step.start
    return (
        start is not None
        and start.owner == step.worker_id
        and step.expected_seq == 1
        and not step.release
        and not step.consumed_inbox
    )


# The statements every step runs, with positional parameters (cheaper to bind than
# named ones). They are not in queries.sql, whose names every dialect must share.
#
# Every fence checks where the run's history ends (its last seq is the step's expected
# seq less one), not the row's next_event_seq: a step that leaves the row alone
# (FENCE_HELD_DUE) appends events without moving it, so a held run's row may trail its
# history until its next full fence. max() is one probe of the history's primary key.
#
# A step of a run that stays held does not assign ``owner`` (so the owner index is not
# rewritten), and one that consumed no inbox row needs no json_each. A message that
# arrived after the worker last read its inbox keeps the run due, as in fence_step.
_HISTORY_ENDS_BEFORE = (
    "(SELECT coalesce(max(h.seq), 0) FROM perdure_history h WHERE h.run_id = {run}) = {seq} - 1"
)
_FENCE_HELD = """
UPDATE perdure_workflows
SET next_event_seq = ?1,
    wake_at = CASE
        WHEN EXISTS (SELECT 1 FROM perdure_inbox i
                     WHERE i.namespace = perdure_workflows.namespace
                       AND i.workflow_id = perdure_workflows.workflow_id
                       AND (i.run_id IS NULL OR i.run_id = perdure_workflows.run_id){consumed})
        THEN '1970-01-01T00:00:00.000000Z'
        ELSE ?2
    END,
    lease_expires_at = ?3
WHERE run_id = ?4 AND owner = ?5 AND status = 'running'
  AND {history_ends}
"""
_HELD_HISTORY = _HISTORY_ENDS_BEFORE.format(run="?4", seq="?6")
FENCE_HELD = _FENCE_HELD.format(consumed="", history_ends=_HELD_HISTORY)
FENCE_HELD_CONSUMED = _FENCE_HELD.format(
    consumed="\n                       AND i.inbox_id NOT IN (SELECT value FROM json_each(?7))",
    history_ends=_HELD_HISTORY,
)
# A step of a held run that was due before it and is due after it (most steps: an
# activity just scheduled makes the run due "now") writes its events and leaves the
# run's row as it was: a worker that took the run over would run it at once either
# way, no message left unread can make a due run more due, and the worker's lease loop
# renews the lease. One page less per commit (the row's) and no row rewrite: SQLite
# takes one writer at a time, so this check holds until the commit. It matches no row
# when the run was not due before (or is fenced out): fence() then runs FENCE_HELD,
# which decides. wake_at of a held run thus reads "due since".
FENCE_HELD_DUE = f"""
SELECT 1 FROM perdure_workflows
WHERE run_id = ?1 AND owner = ?2 AND status = 'running' AND wake_at <= ?4
  AND {_HISTORY_ENDS_BEFORE.format(run="?1", seq="?3")}
"""
# close_run handing back the closed row (what after_close needs) instead of a SELECT.
CLOSE_RUN_RETURNING = Q["close_run"].rstrip().rstrip(";") + " RETURNING *"
# The step that ends a held run, fenced and closed in one statement (``fences_by_closing``):
# FENCE_HELD's conditions, close_run's columns. The fence's wake_at and lease would be
# overwritten by the close at once; one UPDATE of the row instead of two.
FENCE_AND_CLOSE = f"""
UPDATE perdure_workflows
SET next_event_seq = :next_event_seq, status = :status, result = :result, error = :error,
    closed_at = :closed_at, continued_run_id = :continued_run_id, owner = NULL,
    lease_expires_at = NULL, wake_at = NULL
WHERE run_id = :run_id AND owner = :worker_id AND status = 'running'
  AND {_HISTORY_ENDS_BEFORE.format(run=":run_id", seq=":expected_seq")}
RETURNING *
"""
# A run whose first step, in the same transaction, also ends it (a workflow that closes
# without waiting, like W1's) is written closed at once, instead of inserted running and
# then updated: that update takes the row out of three indexes it was just put in. The
# unique index on running runs does not see a closed row, so the caller checks the id.
INSERT_RUN_CLOSED = """
INSERT INTO perdure_workflows (
    run_id, namespace, workflow_id, workflow_type, task_queue, status, input,
    parent_workflow_id, parent_run_id, parent_close_policy, child_id,
    search_attributes, memo, created_at, next_event_seq, result, error, closed_at,
    continued_run_id
) VALUES (
    :run_id, :namespace, :workflow_id, :workflow_type, :task_queue, :status, :input,
    :parent_workflow_id, :parent_run_id, :parent_close_policy, :child_id,
    :search_attributes, :memo, :created_at, :next_event_seq, :result, :error, :closed_at,
    :continued_run_id
)
RETURNING *
"""
APPEND_EVENT = (
    "INSERT INTO perdure_history (run_id, seq, event_type, name, attributes, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)


def run_params(run: NewRun) -> dict[str, Any]:
    return run.insert_params(dumps, fmt_opt)


def commit_step(conn: sqlite3.Connection, step: StepCommit) -> None:
    run_id = step.run_id
    step.row_kept = False
    closed = start_or_fence(conn, step)
    events = step.events
    if len(events) == 1:
        conn.execute(APPEND_EVENT, event_row(run_id, events[0]))
    elif events:
        conn.executemany(APPEND_EVENT, [event_row(run_id, e) for e in events])
    for activity_id in step.finished_tasks:
        conn.execute(Q["delete_task"], {"run_id": run_id, "activity_id": activity_id})
    if step.new_tasks:
        insert_tasks(conn, step)
    if step.consumed_inbox:
        conn.executemany(Q["delete_inbox"], [{"inbox_id": i} for i in step.consumed_inbox])
    if step.search_attributes:
        conn.execute(
            Q["merge_search_attributes"],
            {"run_id": run_id, "patch": dumps(step.search_attributes)},
        )
    for child in step.children:
        start_child(conn, step, child)
    if step.messages:
        send_messages(conn, step)
    for reply_id, outcome in step.replies.items():
        insert_reply(conn, reply_id, run_id, outcome)
    if step.close is not None:
        close_run(conn, step, closed)


def start_or_fence(conn: sqlite3.Connection, step: StepCommit) -> sqlite3.Row | None:
    """Insert the run the step starts, or pass the step's fence (``StepRejected`` if it
    fails); the row of a run this step has closed already, if any."""
    fenced, closed = start_with_step(conn, step)
    if fenced:
        return closed
    if fences_by_closing(step):
        closed = fence_and_close(conn, step)
        if closed is None:
            raise StepRejected(step.run_id)
        return closed
    if fence(conn, step) != 1:
        raise StepRejected(step.run_id)
    return None


def start_with_step(conn: sqlite3.Connection, step: StepCommit) -> tuple[bool, sqlite3.Row | None]:
    """Insert the run a step starts, if any: (whether its fence is passed already, the
    row of a run that this step also closes, inserted closed)."""
    if step.start is None:
        return False, None
    fenced = stepped_start(step)
    closed = insert_closed_run(conn, step) if fenced else None
    if closed is None:
        created_id, created = insert_run(conn, step.start, step if fenced else None)
        if not created:
            raise RunExists(created_id)
    return fenced, closed


def insert_closed_run(conn: sqlite3.Connection, step: StepCommit) -> sqlite3.Row | None:
    """The row of a run that its first step (``stepped_start``) also closes, inserted
    closed; None when the general path must run (insert, then close): the run starts
    children or sends messages (those look at it running), continues as new, or an id
    policy other than the default's has a say, or its id is held by a running run."""
    run, close = step.start, step.close
    if (
        run is None
        or close is None
        or step.children
        or step.messages
        or step.continue_as_new is not None
        or run.id_reuse_policy != "allow_duplicate"
    ):
        return None
    key = {"namespace": run.namespace, "workflow_id": run.workflow_id}
    if conn.execute(Q["running_run"], key).fetchone() is not None:
        return None  # the conflict policy decides, in insert_run
    params = {**run_params(run), **close_params(close)}
    params["next_event_seq"] = step.expected_seq + len(step.events)
    row: sqlite3.Row = conn.execute(INSERT_RUN_CLOSED, params).fetchone()
    return row


def fences_by_closing(step: StepCommit) -> bool:
    """A step that ends a run it did not start, and whose other writes do not look at the
    run as running (children it starts and messages it sends do; so does a release and
    a successor): its fence is the close itself (FENCE_AND_CLOSE)."""
    return (
        step.close is not None
        and step.start is None
        and not step.release
        and not step.children
        and not step.messages
        and step.continue_as_new is None
    )


def fence_and_close(conn: sqlite3.Connection, step: StepCommit) -> sqlite3.Row | None:
    """The closed row, or None if the fence fails (nothing written)."""
    assert step.close is not None
    params = close_params(step.close)
    params["run_id"] = step.run_id
    params["worker_id"] = step.worker_id
    params["expected_seq"] = step.expected_seq
    params["next_event_seq"] = step.expected_seq + len(step.events)
    row: sqlite3.Row | None = conn.execute(FENCE_AND_CLOSE, params).fetchone()
    return row


def send_messages(conn: sqlite3.Connection, step: StepCommit) -> None:
    for msg in step.messages:
        # Addressed to the workflow id (its current run, after any continue-as-new);
        # a workflow that is no longer running simply does not get it.
        if conn.execute(
            Q["running_run"], {"namespace": msg.namespace, "workflow_id": msg.workflow_id}
        ).fetchone():
            insert_inbox(
                conn, msg.namespace, msg.workflow_id, None, msg.kind, msg.name, msg.payload
            )


def fence(conn: sqlite3.Connection, step: StepCommit) -> int:
    """1 if this worker still holds the run and its history still ends just before the
    step (then the run's row is moved on, unless the step may leave it: ``row_kept``)."""
    next_seq = step.expected_seq + len(step.events)
    wake_at = None if step.wake_at is None else fmt(step.wake_at)
    if step.wake_at is not None and not step.release and step.wake_at <= utcnow():
        due = (step.run_id, step.worker_id, step.expected_seq, wake_at)
        if conn.execute(FENCE_HELD_DUE, due).fetchone() is not None:
            step.row_kept = True
            return 1
    lease_until = None if step.lease_until is None else fmt_once(step.lease_until)
    if step.release:
        params: dict[str, Any] | tuple[Any, ...] = {
            "run_id": step.run_id,
            "worker_id": step.worker_id,
            "expected_seq": step.expected_seq,
            "next_event_seq": next_seq,
            "wake_at": wake_at,
            "lease_until": lease_until,
            "release": True,
            "consumed": dumps(step.consumed_inbox),
        }
        return conn.execute(Q["fence_step"], params).rowcount
    params = (next_seq, wake_at, lease_until, step.run_id, step.worker_id, step.expected_seq)
    if step.consumed_inbox:
        return conn.execute(FENCE_HELD_CONSUMED, (*params, dumps(step.consumed_inbox))).rowcount
    return conn.execute(FENCE_HELD, params).rowcount


def insert_tasks(conn: sqlite3.Connection, step: StepCommit) -> None:
    conn.executemany(
        Q["insert_task"],
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
                "scheduled_at": fmt(t.scheduled_at),
                "visible_at": fmt(t.visible_at),
            }
            for t in step.new_tasks
        ],
    )


def close_params(close: RunClose) -> dict[str, Any]:
    """The closed row's columns, as close_run and INSERT_RUN_CLOSED write them."""
    return {
        "status": close.status,
        "result": None if close.result is None else dumps(close.result),
        "error": None if close.error is None else dumps(close.error),
        "closed_at": fmt(utcnow()),
        "continued_run_id": close.continued_run_id,
    }


def close_run(
    conn: sqlite3.Connection, step: StepCommit, closed: sqlite3.Row | None = None
) -> None:
    """The run ended in this step: close its row (unless it is ``closed`` already, by
    INSERT_RUN_CLOSED or FENCE_AND_CLOSE) and tell whoever must know."""
    close = step.close
    assert close is not None
    if closed is not None:  # no successor (neither path takes one)
        after_close(
            conn,
            closed,
            close.status,
            close.result,
            close.error,
            had_children=step.start is None and close.had_children,
        )
        return
    row = conn.execute(
        CLOSE_RUN_RETURNING, {"run_id": step.run_id, **close_params(close)}
    ).fetchall()[0]
    after_close(conn, row, close.status, close.result, close.error, had_children=close.had_children)
    if step.continue_as_new is not None:
        insert_run(conn, step.continue_as_new)


def event_row(run_id: str, event: HistoryEvent) -> tuple[Any, ...]:
    """APPEND_EVENT's parameters for one event."""
    return (
        run_id,
        event.seq,
        event.event_type,
        event.name,
        dumps(event.attributes),
        fmt(event.created_at),
    )


def start_child(conn: sqlite3.Connection, step: StepCommit, child: NewRun) -> None:
    """Start a child run; if its id is taken, tell the parent through its inbox."""
    conn.execute("SAVEPOINT child")
    try:
        insert_run(conn, child)
    except WorkflowAlreadyStartedError as exc:
        conn.execute("ROLLBACK TO child")
        insert_inbox(
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


def insert_reply(
    conn: sqlite3.Connection, reply_id: str, run_id: str, outcome: dict[str, Any]
) -> None:
    conn.execute(
        Q["insert_reply"],
        {
            "reply_id": reply_id,
            "run_id": run_id,
            "outcome": dumps(outcome),
            "created_at": fmt(utcnow()),
        },
    )


def after_close(
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
        parent = conn.execute(Q["get_run"], {"run_id": row["parent_run_id"]}).fetchone()
        if parent is not None and parent["status"] == "running":
            insert_inbox(
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
        for child in conn.execute(Q["running_children"], {"run_id": run_id}).fetchall():
            policy = child["parent_close_policy"] or "terminate"
            if policy == "terminate":
                terminate(conn, child, f"parent {row['workflow_id']!r} closed ({status})")
            elif policy == "request_cancel":
                insert_inbox(
                    conn,
                    child["namespace"],
                    child["workflow_id"],
                    child["run_id"],
                    "cancel",
                    None,
                    [f"parent {row['workflow_id']!r} closed ({status})"],
                )
    for update in conn.execute(
        Q["pending_updates"],
        {"namespace": row["namespace"], "workflow_id": row["workflow_id"], "run_id": run_id},
    ).fetchall():
        if status == "continued_as_new" and update["run_id"] is None:
            continue  # addressed to the workflow, not this run: the next run takes it
        payload = json.loads(update["payload"])
        update_id = (payload[0] if isinstance(payload, list) else payload).get("update_id")
        conn.execute(Q["delete_inbox"], {"inbox_id": update["inbox_id"]})
        if update_id:
            insert_reply(
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


def terminate(conn: sqlite3.Connection, row: sqlite3.Row, reason: str) -> None:
    """End a running run at once, without running its code."""
    seq = conn.execute(Q["bump_seq"], {"run_id": row["run_id"]}).fetchone()["seq"]
    now = utcnow()
    conn.execute(
        Q["append_event"],
        event_params(
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
        Q["close_run"],
        {
            "run_id": row["run_id"],
            "status": "terminated",
            "result": None,
            "error": dumps(error),
            "closed_at": fmt(now),
            "continued_run_id": None,
        },
    )
    conn.execute(Q["delete_run_tasks"], {"run_id": row["run_id"]})
    after_close(conn, row, "terminated", None, error)


def schedule_from_row(row: sqlite3.Row) -> ScheduleRecord:
    return ScheduleRecord(
        namespace=row["namespace"],
        schedule_id=row["schedule_id"],
        workflow_type=row["workflow_type"],
        task_queue=row["task_queue"],
        args=json.loads(row["args"]),
        spec=json.loads(row["spec"]),
        overlap=row["overlap"],
        catchup_window=float(row["catchup_window"]),
        paused=bool(row["paused"]),
        next_fire_at=parse_opt(row["next_fire_at"]),
        due_at=parse_opt(row["due_at"]),
        last_fire_at=parse_opt(row["last_fire_at"]),
        last_run_id=row["last_run_id"],
        buffered_fire_at=parse_opt(row["buffered_fire_at"]),
        recent_runs=json.loads(row["recent_runs"]),
        created_at=parse(row["created_at"]),
        updated_at=parse(row["updated_at"]),
    )


def insert_schedule(conn: sqlite3.Connection, schedule: ScheduleRecord) -> None:
    inserted = conn.execute(Q["insert_schedule"], schedule.insert_params(dumps, fmt_opt)).rowcount
    if inserted != 1:
        raise ValueError(
            f"schedule {schedule.schedule_id!r} already exists; delete it first "
            "(app.get_schedule(...).delete()) to replace it"
        )


def change_schedule(
    conn: sqlite3.Connection,
    namespace: str,
    schedule_id: str,
    decide: ScheduleDecision,
) -> tuple[bool, list[NewRun]]:
    """Lock (SQLite: the write transaction), decide, then write the change."""
    key = {"namespace": namespace, "schedule_id": schedule_id}
    row = conn.execute(Q["lock_schedule"], key).fetchone()
    if row is None:
        return False, []
    schedule = schedule_from_row(row)
    last_status = None
    if schedule.last_run_id is not None:
        last = conn.execute(Q["get_run"], {"run_id": schedule.last_run_id}).fetchone()
        last_status = None if last is None else str(last["status"])
    change = decide(schedule, last_status)
    if change is None:
        return True, []
    reason = f"cancelled by schedule {schedule_id!r} (overlap cancel_other)"
    for workflow_id, run_id in change.cancels:
        running = conn.execute(
            Q["running_run"], {"namespace": namespace, "workflow_id": workflow_id}
        ).fetchone()
        if running is not None and running["run_id"] == run_id:
            insert_inbox(conn, namespace, workflow_id, run_id, "cancel", None, [reason])
    started: list[NewRun] = []
    for run in change.starts:
        try:
            insert_run(conn, run)
        except WorkflowAlreadyStartedError:
            if change.strict:
                raise
            continue  # this fire was already started: exactly once
        started.append(run)
    conn.execute(Q["update_schedule"], {**key, **_change_params(change, started)})
    return True, started


def _change_params(change: ScheduleChange, started: list[NewRun]) -> dict[str, Any]:
    dropped = {r.run_id for r in change.starts} - {r.run_id for r in started}
    return {
        "paused": change.paused,
        "next_fire_at": fmt_opt(change.next_fire_at),
        "due_at": fmt_opt(change.due_at),
        "last_fire_at": fmt_opt(change.last_fire_at),
        "last_run_id": None if change.last_run_id in dropped else change.last_run_id,
        "buffered_fire_at": fmt_opt(change.buffered_fire_at),
        "recent_runs": dumps([r for r in change.recent_runs if r.get("run_id") not in dropped]),
        "now": fmt(utcnow()),
    }
