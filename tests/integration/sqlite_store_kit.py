"""What the SQLite store's start tests share: a migrated store, a new run, its raw row."""

from __future__ import annotations

import sqlite3
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from perdure._store._base import NewRun, utcnow
from perdure._store._sqlite import SQLiteStore


async def migrated_store(path: Path) -> SQLiteStore:
    store = SQLiteStore(str(path))
    await store.migrate()
    return store


def new_run(workflow_id: str, *, owner: str | None = "w1", **options: Any) -> NewRun:
    """A run of type ``t`` on queue ``q``, leased to ``owner`` (None: not taken)."""
    return NewRun(
        namespace="default",
        workflow_id=workflow_id,
        run_id=str(uuid.uuid4()),
        workflow_type="t",
        task_queue="q",
        input=[1],
        wake_at=utcnow(),
        owner=owner,
        lease_until=utcnow() + timedelta(seconds=30) if owner else None,
        **options,
    )


def row_of(store: SQLiteStore, run_id: str) -> dict[str, Any]:
    """The run's row as stored, read over a connection of its own."""
    conn = sqlite3.connect(store.db.path)
    conn.row_factory = sqlite3.Row
    try:
        row = conn.execute("SELECT * FROM perdure_workflows WHERE run_id = ?", (run_id,))
        return dict(row.fetchone())
    finally:
        conn.close()
