"""The benchmark suite runs end to end at a tiny scale and prints its table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_suite_prints_the_table(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    md = tmp_path / "BENCH.md"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--scale",
            "0.01",
            "--no-peers",
            "--backends",
            "sqlite",
            "--json",
            str(out),
            "--markdown",
            str(md),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout
    assert "perdure benchmarks" in text
    for workload in ("W1", "W2", "W3", "W4", "W5", "W6", "W7"):
        assert workload in text
    assert "single-row commits/s" in text
    assert "0.3 ms of CPU before each" in text  # the limit after an engine's CPU per step
    assert "bare asyncio loop" in text  # the floor under W4 (benchmarks/floor.py)
    assert "error" not in text and "timeout" not in text, text
    data = json.loads(out.read_text())
    statuses = {(r["system"], r["workload"]): r["status"] for r in data["results"]}
    assert statuses[("perdure", "W4")] == "ok"
    assert statuses[("limit", "L")] == "ok"
    assert all(s == "ok" for s in statuses.values()), statuses
    w4 = next(r for r in data["results"] if (r["system"], r["workload"]) == ("perdure", "W4"))
    assert w4["metrics"]["cpu_ms_per_step"] > 0
    # a step writes at least the history page its events go to
    assert w4["metrics"]["wal_pages_per_commit"] >= 1
    limit = next(r for r in data["results"] if r["system"] == "limit")
    assert limit["metrics"]["single_wal_pages_per_commit"] >= 1
    assert any("pages to the WAL" in n for n in data["notes"]), data["notes"]
    assert any(n.startswith("W4 (sqlite): a step costs") for n in data["notes"]), data["notes"]
    assert any(n.startswith("W3 (sqlite): a round trip is") for n in data["notes"]), data["notes"]
    assert "bench:begin" in md.read_text()


@pytest.mark.parametrize("far", [False, True], ids=["no-activity", "far-activity"])
def test_client_starts_probe_runs_a_worker_in_another_process(tmp_path: Path, far: bool) -> None:
    """``benchmarks/client_starts.py``: ``perdure worker`` in a subprocess runs what this
    process starts (with ``--far``, a second worker runs their activities); it prints the
    rate and each process's CPU."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.client_starts",
            f"sqlite:///{tmp_path / 'clients.db'}",
            "--workflows",
            "20",
            "--rounds",
            "2",
            *(["--far"] if far else []),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "'workflows_per_s'" in proc.stdout and "'worker_cpu_ms_per_workflow'" in proc.stdout
    assert ("'activity_worker_cpu_ms_per_workflow'" in proc.stdout) == far
    assert "Traceback" not in proc.stderr
