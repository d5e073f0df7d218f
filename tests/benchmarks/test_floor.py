"""The bare asyncio loop under W4 (benchmarks/floor.py) really commits fenced steps."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from benchmarks.floor import postgres_floor, sqlite_floor

STEPS = 25


def _sqlite(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def _check(metrics: dict[str, float], rows: list[Any]) -> None:
    assert metrics["floor_steps_per_s"] > 0 and metrics["floor_cpu_ms"] > 0
    # Every activity but the last is followed by a step: its result and the next one.
    assert [r[0] for r in rows] == list(range(1, 2 * (STEPS - 1) + 1))
    assert {r[1] for r in rows[0::2]} == {"activity_completed"}
    assert {r[1] for r in rows[1::2]} == {"activity_scheduled"}


def test_sqlite_floor_commits_every_step(tmp_path: Path) -> None:
    conn = _sqlite(tmp_path / "floor.db")
    metrics = sqlite_floor(conn, STEPS, run_id="r1")
    rows = conn.execute(
        "SELECT seq, event_type FROM floor_history WHERE run_id = 'r1' ORDER BY seq"
    ).fetchall()
    _check(metrics, rows)
    # Durable: another connection sees them.
    other = _sqlite(tmp_path / "floor.db")
    assert other.execute("SELECT count(*) FROM floor_history").fetchone()[0] == len(rows)


def test_sqlite_floor_is_fenced(tmp_path: Path) -> None:
    """A history that already runs past the step fails it, and nothing of it stays."""
    conn = _sqlite(tmp_path / "floor.db")
    sqlite_floor(conn, 2, run_id="warm")  # creates the tables
    conn.execute(
        "INSERT INTO floor_history VALUES ('r2', 7, 'timer_fired', NULL, '{}', '2026-01-01')"
    )
    with pytest.raises(RuntimeError, match="fence failed"):
        sqlite_floor(conn, STEPS, run_id="r2")
    assert conn.execute("SELECT seq FROM floor_history WHERE run_id = 'r2'").fetchall() == [(7,)]
    assert not conn.in_transaction


def test_postgres_floor_commits_every_step(postgres: Any) -> None:
    import psycopg

    url = postgres.url_for(postgres.create())
    metrics = postgres_floor(url, STEPS, run_id="r1")
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT seq, event_type FROM floor_history WHERE run_id = 'r1' ORDER BY seq"
        ).fetchall()
        assert conn.execute("SELECT next_seq FROM floor_runs").fetchone() == (2 * STEPS - 1,)
    _check(metrics, rows)
