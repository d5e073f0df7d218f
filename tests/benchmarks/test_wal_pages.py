"""Pages per commit read from a real SQLite WAL file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from benchmarks.wal import wal_pages_per_commit


def _open(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")  # the tests decide when the log restarts
    conn.execute("CREATE TABLE a (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("CREATE TABLE b (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("INSERT INTO a VALUES (1, 'x'), (2, 'y')")
    conn.execute("INSERT INTO b VALUES (1, 'x')")
    conn.execute("PRAGMA wal_checkpoint(RESTART)")
    conn.execute("UPDATE a SET v = 'z' WHERE id = 1")  # the first commit of a new log
    return conn


def _two_page_commits(conn: sqlite3.Connection, count: int) -> None:
    for i in range(count):
        conn.execute("BEGIN")
        conn.execute("UPDATE a SET v = ? WHERE id = 1", (str(i),))
        conn.execute("UPDATE b SET v = ? WHERE id = 1", (str(i),))
        conn.execute("COMMIT")


def test_one_page_per_commit(tmp_path: Path) -> None:
    path = tmp_path / "one.db"
    conn = _open(path)
    for i in range(20):
        conn.execute("UPDATE a SET v = ? WHERE id = 1", (str(i),))
    assert wal_pages_per_commit(path) == pytest.approx(1.0)
    conn.close()


def test_commits_touching_two_tables_write_two(tmp_path: Path) -> None:
    path = tmp_path / "two.db"
    conn = _open(path)
    _two_page_commits(conn, 20)
    # the first commit (one page) and twenty of two
    assert wal_pages_per_commit(path) == pytest.approx(41 / 21)
    conn.close()


def test_frames_of_an_earlier_generation_are_not_counted(tmp_path: Path) -> None:
    path = tmp_path / "gen.db"
    conn = _open(path)
    _two_page_commits(conn, 30)
    conn.execute("PRAGMA wal_checkpoint(RESTART)")
    for i in range(5):  # overwrites the start of the log; the two-page frames stay after
        conn.execute("UPDATE a SET v = ? WHERE id = 2", (str(i),))
    assert wal_pages_per_commit(path) == pytest.approx(1.0)
    conn.close()


def test_no_log_no_figure(tmp_path: Path) -> None:
    assert wal_pages_per_commit(tmp_path / "missing.db") is None
    path = tmp_path / "fresh.db"
    conn = _open(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert wal_pages_per_commit(path) is None
    conn.close()


def test_not_a_wal_file(tmp_path: Path) -> None:
    (tmp_path / "x.db-wal").write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match="not a SQLite WAL"):
        wal_pages_per_commit(tmp_path / "x.db")
