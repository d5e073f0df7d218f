"""What the PostgreSQL store tests build their runs and steps from.

A migrated store on a fresh database, runs of one workflow type on queue ``q``, a claimed
run, a start committed with its first step, a step that appends one marker event, many
held runs inserted at once, and a count of the store's pooled reads.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from pgserver import Databases

from perdure._history import EventType, HistoryEvent
from perdure._store import open_store
from perdure._store._base import NewRun, RunClose, StepCommit, Store, utcnow
from perdure._store._postgres import PostgresStore

T = "job"
FAR = datetime.fromisoformat("2100-01-01T00:00:00+00:00")


async def opened(postgres: Databases, group_commit: str = "on") -> PostgresStore:
    """A migrated store on a fresh database of the session's server; ``group_commit``
    "off" sends each write as its own transaction."""
    store = open_store(postgres.url_for(postgres.create(postgres.template("postgres"))))
    assert isinstance(store, PostgresStore)
    await store.migrate()
    if group_commit == "off":
        store.settings = replace(store.settings, group_commit=False)
    return store


def new_run(workflow_id: str | None = None, *, arg: Any = 1, **kw: Any) -> NewRun:
    """A run of workflow type ``T`` on queue ``q``, due now unless ``kw`` says otherwise."""
    kw.setdefault("wake_at", utcnow())
    return NewRun(
        namespace="default",
        workflow_id=workflow_id or uuid.uuid4().hex,
        run_id=uuid.uuid4().hex,
        workflow_type=T,
        task_queue="q",
        input=[arg],
        **kw,
    )


def start_with_first_step(
    workflow_id: str,
    owner: str,
    second: tuple[str, dict[str, Any]],
    *,
    close: RunClose | None = None,
    wake_at: datetime | None = None,
    **run: Any,
) -> StepCommit:
    """A run leased to ``owner`` and its first step, to commit together (a worker that
    takes the run at once): ``workflow_started`` (args ``[1, "é"]``), then ``second``
    (its event type and attributes); ``run``: the ``NewRun``'s other fields."""
    now = utcnow()
    new = NewRun(
        namespace="default",
        workflow_id=workflow_id,
        run_id=uuid.uuid4().hex,
        workflow_type=T,
        task_queue="q",
        input=[1, "é"],
        wake_at=now,
        owner=owner,
        lease_until=now + timedelta(seconds=30),
        created_at=now,
        **run,
    )
    event_type, attributes = second
    events = [
        HistoryEvent(
            seq=1,
            event_type=EventType.WORKFLOW_STARTED,
            name=T,
            attributes={"args": [1, "é"]},
            created_at=now,
        ),
        HistoryEvent(
            seq=2, event_type=event_type, name=None, attributes=attributes, created_at=now
        ),
    ]
    return StepCommit(
        namespace="default",
        run_id=new.run_id,
        worker_id=owner,
        expected_seq=1,
        events=events,
        wake_at=wake_at,
        lease_until=now + timedelta(seconds=30),
        close=close,
        start=new,
    )


async def claim(store: Store, worker_id: str = "w1", limit: int = 100) -> list[str]:
    """Claim the due runs for ``worker_id``; their run ids."""
    records = await store.claim_runs(
        namespace="default",
        worker_id=worker_id,
        task_queues=["q"],
        workflow_types=[T],
        limit=limit,
        lease_until=utcnow() + timedelta(seconds=30),
    )
    return [r.run_id for r in records]


async def claimed(store: PostgresStore, worker_id: str = "w1") -> str:
    """A new run, started and claimed by ``worker_id``."""
    await store.start_run(new_run())
    (run_id,) = await claim(store, worker_id, limit=1)
    return run_id


def step(run_id: str, seq: int, **kw: Any) -> StepCommit:
    """The step at ``seq`` of a run held by ``worker_id`` (w1): one marker event."""
    kw.setdefault("lease_until", utcnow() + timedelta(seconds=30))
    return StepCommit(
        namespace="default",
        run_id=run_id,
        worker_id=kw.pop("worker_id", "w1"),
        expected_seq=seq,
        events=[
            HistoryEvent(
                seq=seq,
                event_type=EventType.MARKER_RECORDED,
                name=None,
                attributes={"z": seq, "a": 0},
                created_at=utcnow(),
            )
        ],
        **kw,
    )


async def hold_many(conn: psycopg.AsyncConnection[Any], n: int) -> None:
    """``n`` more running runs inserted together (as a burst of starts fills the table's
    pages), held by w1 and waiting (no wake-up); ids held-0..., run ids held-run-0..."""
    await conn.execute(
        "INSERT INTO perdure.workflows (run_id, namespace, workflow_id, workflow_type,"
        " task_queue, status, input, wake_at, owner, lease_expires_at)"
        " SELECT 'held-run-' || i, 'default', 'held-' || i, 'job', 'q', 'running', '[]',"
        " NULL, 'w1', now() + interval '1 hour' FROM generate_series(0, %s - 1) AS i",
        (n,),
    )


def count_reads(store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """From now on, count the store's pooled reads (``db.read``); call the result to get
    the count so far. Batched lookups show as one read for many callers."""
    count = 0
    read = store.db.read

    async def counting(fn: Any) -> Any:
        nonlocal count
        count += 1
        return await read(fn)

    monkeypatch.setattr(store.db, "read", counting)
    return lambda: count
