"""The database's own limit: raw loops of durable commits, no engine in the way.

* single-row: one ``INSERT`` of one ~100-byte row per transaction, one client
  (and 64 clients on PostgreSQL): the ceiling of a sequential workflow, whose every
  step needs its own durable commit.
* 100-row: 100 such rows per transaction: the ceiling of work that can be batched.
* single-row after CPU: the same loop spinning 0.1-0.4 ms on the CPU before each
  commit, as an engine does between the sequential steps of a workflow. A commit
  that follows work is slower than one that follows another commit (on this
  machine's virtual disk 0.23 -> 0.33 ms after 0.3 ms), so this is what a raw loop
  with an engine's CPU per step would reach: the bound W4 is read against.
* the floor (``benchmarks/floor.py``): a bare asyncio loop doing only what every
  sequential step of any engine does, with a fence and history rows like perdure's.

SQLite: a temporary file in WAL mode with ``synchronous=FULL`` (perdure's default;
``synchronous=NORMAL`` for the separately labelled ``sqlite-normal`` backend), timed
after untimed commits have grown the WAL to its working size.
PostgreSQL: the suite's server with default durability (``fsync=on``,
``synchronous_commit=on``); one client is a psycopg loop, 64 clients are ``pgbench``
(a C client, so Python is not the bottleneck) or, without it, 64 psycopg threads.
"""

from __future__ import annotations

import itertools
import os
import re
import sqlite3
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.floor import postgres_floor, sqlite_floor
from benchmarks.spec import Sizes
from benchmarks.wal import wal_pages_per_commit

PAYLOAD = "x" * 100
_ROWS = 100
CPU_GAPS_US = (100, 200, 300, 400)


def _spin(seconds: float) -> None:
    """Busy, like an engine between two steps (a sleep would idle the CPU instead)."""
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


def commits_after_cpu(commit: Callable[[int], object], count: int) -> dict[str, float]:
    """Single-row commits with ``CPU_GAPS_US`` of CPU before each: rate and p50 per gap.

    ``commit(i)`` runs one durable single-row commit.
    """
    out: dict[str, float] = {}
    i = 0
    for gap_us in CPU_GAPS_US:
        latencies = []
        started = time.perf_counter()
        for _ in range(count):
            _spin(gap_us / 1e6)
            t = time.perf_counter()
            commit(i)
            latencies.append(time.perf_counter() - t)
            i += 1
        out[f"after_cpu_{gap_us}us_commits_per_s"] = count / (time.perf_counter() - started)
        out[f"after_cpu_{gap_us}us_p50_ms"] = percentile(latencies, 0.5) * 1000
    return out


def rate_after_cpu(metrics: dict[str, Any], cpu_ms: float) -> float | None:
    """Commits/s of a raw single-row loop spending ``cpu_ms`` before each commit,
    interpolated between the measured gaps (0 is the back-to-back loop)."""
    points = [(0.0, metrics.get("single_commits_per_s"))]
    points += [(g / 1000, metrics.get(f"after_cpu_{g}us_commits_per_s")) for g in CPU_GAPS_US]
    known = [(x, 1.0 / y) for x, y in points if isinstance(y, int | float) and y > 0]
    if len(known) < 2:
        return None
    # Per-commit time is close to linear in the CPU before it: interpolate it in the
    # segment around cpu_ms, or extrapolate the last one.
    (x0, t0), (x1, t1) = next(
        (pair for pair in itertools.pairwise(known) if cpu_ms <= pair[1][0]),
        (known[-2], known[-1]),
    )
    return 1.0 / (t0 + (t1 - t0) * (cpu_ms - x0) / (x1 - x0))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def sqlite_limits(path: str, sizes: Sizes, synchronous: str = "FULL") -> dict[str, Any]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, k TEXT, v TEXT)")
    conn.execute("CREATE INDEX IF NOT EXISTS t_k ON t (k)")
    # Untimed, until the WAL has reached its working size and started over once: while
    # it grows, each fsync also commits the file's new size (~1.5x slower). perdure's
    # W3 and W4 start after 400 sequential steps, so both are measured at steady state.
    for i in range(int(conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])):
        conn.execute("INSERT INTO t (k, v) VALUES (?, ?)", (f"w{i}", PAYLOAD))
    latencies = []
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(sizes.limit_single_commits):
        t = time.perf_counter()
        conn.execute("INSERT INTO t (k, v) VALUES (?, ?)", (f"k{i}", PAYLOAD))
        latencies.append(time.perf_counter() - t)
    single_elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    single_pages = wal_pages_per_commit(path)
    after_cpu = commits_after_cpu(
        lambda i: conn.execute("INSERT INTO t (k, v) VALUES (?, ?)", (f"c{i}", PAYLOAD)),
        max(100, sizes.limit_single_commits // 3),
    )
    floor = sqlite_floor(conn, sizes.limit_single_commits, run_id=f"floor-{uuid.uuid4()}")
    rows = [(f"b{i}", PAYLOAD) for i in range(_ROWS)]
    started = time.perf_counter()
    for _ in range(sizes.limit_batch_commits):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO t (k, v) VALUES (?, ?)", rows)
        conn.execute("COMMIT")
    batch_elapsed = time.perf_counter() - started
    conn.close()
    batch_commits = sizes.limit_batch_commits / batch_elapsed
    return {
        "single_commits_per_s": sizes.limit_single_commits / single_elapsed,
        "single_cpu_ms": cpu / sizes.limit_single_commits * 1000,
        "single_p50_ms": percentile(latencies, 0.5) * 1000,
        "single_p99_ms": percentile(latencies, 0.99) * 1000,
        "single_wal_pages_per_commit": single_pages,
        "batch_commits_per_s": batch_commits,
        "batch_rows_per_s": batch_commits * _ROWS,
        **after_cpu,
        **floor,
        "how": f"sqlite3, WAL, synchronous={synchronous}",
    }


def _pg_prepare(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t (id BIGSERIAL PRIMARY KEY, k TEXT, v TEXT)")
        conn.execute("CREATE INDEX IF NOT EXISTS t_k ON t (k)")


def _pg_single_loop(url: str, seconds: float) -> tuple[int, list[float], float]:
    import psycopg

    latencies = []
    with psycopg.connect(url, autocommit=True) as conn:
        deadline, cpu = time.perf_counter() + seconds, time.process_time()
        i = 0
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            conn.execute("INSERT INTO t (k, v) VALUES (%s, %s)", (f"k{i}", PAYLOAD))
            latencies.append(time.perf_counter() - t)
            i += 1
    return i, latencies, time.process_time() - cpu


def _pg_batch_loop(url: str, seconds: float, stop_at: float | None = None) -> int:
    import psycopg

    rows = [(f"b{i}", PAYLOAD) for i in range(_ROWS)]
    commits = 0
    with psycopg.connect(url, autocommit=True) as conn:
        deadline = stop_at or (time.perf_counter() + seconds)
        while time.perf_counter() < deadline:
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany("INSERT INTO t (k, v) VALUES (%s, %s)", rows)
            commits += 1
    return commits


def _pgbench(pgbench: Path, url: str, script: str, clients: int, seconds: float) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script)
    try:
        proc = subprocess.run(
            [
                str(pgbench),
                "-n",
                "-c",
                str(clients),
                "-j",
                str(min(clients, os.cpu_count() or 2)),
                "-T",
                str(max(1, round(seconds))),
                "-f",
                f.name,
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        os.unlink(f.name)
    match = re.search(r"tps = ([\d.]+)", proc.stdout)
    if match is None:
        raise RuntimeError(f"no tps in pgbench output:\n{proc.stdout}\n{proc.stderr}")
    return float(match.group(1))


def _threads(target: Any, clients: int, seconds: float) -> int:
    stop_at = time.perf_counter() + seconds
    counts = [0] * clients

    def work(i: int) -> None:
        counts[i] = target(stop_at)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts)


def postgres_limits(url: str, sizes: Sizes, pgbench: Path | None) -> dict[str, Any]:
    import psycopg

    _pg_prepare(url)
    seconds = sizes.limit_seconds
    commits, latencies, cpu = _pg_single_loop(url, seconds)
    elapsed = sum(latencies)
    batch = _pg_batch_loop(url, seconds)
    with psycopg.connect(url, autocommit=True) as conn:
        after_cpu = commits_after_cpu(
            lambda i: conn.execute("INSERT INTO t (k, v) VALUES (%s, %s)", (f"c{i}", PAYLOAD)),
            max(100, sizes.limit_single_commits // 3),
        )
    floor = postgres_floor(url, sizes.limit_single_commits, run_id=f"floor-{uuid.uuid4()}")
    out: dict[str, Any] = {
        "single_commits_per_s": commits / seconds,
        "single_p50_ms": percentile(latencies, 0.5) * 1000,
        "single_p99_ms": percentile(latencies, 0.99) * 1000,
        "single_mean_ms": elapsed / max(commits, 1) * 1000,
        "single_cpu_ms": cpu / max(commits, 1) * 1000,
        "batch_commits_per_s": batch / seconds,
        "batch1_rows_per_s": batch / seconds * _ROWS,
        **after_cpu,
        **floor,
    }
    clients = 64
    if pgbench is not None:
        single = "INSERT INTO t (k, v) VALUES ('k', repeat('x', 100));\n"
        many = (
            "INSERT INTO t (k, v) SELECT 'b' || g, repeat('x', 100) "
            "FROM generate_series(1, 100) g;\n"
        )
        out["single64_commits_per_s"] = _pgbench(pgbench, url, single, clients, seconds)
        out["batch64_rows_per_s"] = _pgbench(pgbench, url, many, clients, seconds) * _ROWS
        out["how"] = "1 client: psycopg loop; 64 clients: pgbench"
    else:

        def single_until(stop_at: float) -> int:
            n = 0
            with psycopg.connect(url, autocommit=True) as conn:
                while time.perf_counter() < stop_at:
                    conn.execute("INSERT INTO t (k, v) VALUES ('k', %s)", (PAYLOAD,))
                    n += 1
            return n

        out["single64_commits_per_s"] = _threads(single_until, clients, seconds) / seconds
        out["batch64_rows_per_s"] = (
            _threads(lambda s: _pg_batch_loop(url, 0, s), clients, seconds) / seconds * _ROWS
        )
        out["how"] = "psycopg: 1 client loop, 64 client threads"
    out["batch_rows_per_s"] = max(out["batch1_rows_per_s"], out["batch64_rows_per_s"])
    return out


def sqlite_version() -> str:
    return sqlite3.sqlite_version
