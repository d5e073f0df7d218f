"""Workflows started by a client process and run by a worker in another: the usual deployment.

    python -m benchmarks.client_starts [URL] [--workflows 1000] [--rounds 3] [--far]

The suite's W1 runs the worker in the process that starts the workflows, as the peers'
own benchmarks do. Here ``perdure worker`` runs in a subprocess and this process is
only a client: it starts ``--workflows`` workflows with no steps at once, awaits their
results, ``--rounds`` times, and prints workflows/s (start to result), the starts' own
rate, and the CPU per workflow of the worker, of the client and, for the throwaway
PostgreSQL server it starts when no URL is given, of the server's processes. With
``--far`` each workflow runs one activity on a task queue of its own, served by a
second ``perdure worker`` (its CPU printed too).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import perdure
from benchmarks.systems.perdure_bench import FAR_QUEUE, empty, one_far

ROOT = Path(__file__).resolve().parents[1]
WORKER_APP = "benchmarks.systems.perdure_bench:worker_app"
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def tree_cpu_seconds(root: int) -> float:
    """CPU of a process and its children (a PostgreSQL server: its postmaster's)."""
    total = cpu_seconds(root)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == root:
                total += (int(fields[11]) + int(fields[12])) / _TICK
        except (OSError, IndexError, ValueError):
            continue  # the process ended meanwhile
    return total


def start_worker(url: str, log: Path, *options: str) -> subprocess.Popen[bytes]:
    worker = subprocess.Popen(
        [sys.executable, "-m", "perdure", "worker", WORKER_APP, "--database-url", url, *options],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while b"perdure worker ready" not in log.read_bytes():
        if worker.poll() is not None or time.monotonic() > deadline:
            worker.kill()
            raise RuntimeError(f"the worker did not start:\n{log.read_text()}")
        time.sleep(0.05)
    return worker


async def measure(
    url: str,
    workers: dict[str, int],
    server_pid: int | None,
    workflows: int,
    rounds: int,
    far: bool,
) -> dict[str, Any]:
    app = perdure.App(url)
    app.workflow(one_far if far else empty)
    args = (lambda i: (i,)) if far else (lambda i: ())
    wf = one_far if far else empty
    try:
        await (await app.start_workflow(wf, *args(0))).result(timeout=60)  # connected, warm
        me = os.getpid()
        before = {name: cpu_seconds(pid) for name, pid in workers.items()}
        client0 = cpu_seconds(me)
        server0 = tree_cpu_seconds(server_pid) if server_pid else 0.0
        starting = 0.0
        began = time.perf_counter()
        for _ in range(rounds):
            t = time.perf_counter()
            handles = await asyncio.gather(
                *(app.start_workflow(wf, *args(i)) for i in range(workflows))
            )
            starting += time.perf_counter() - t
            results = await asyncio.gather(*(h.result(timeout=120) for h in handles))
            assert results == [i if far else 0 for i in range(workflows)]
        wall = time.perf_counter() - began
        n = workflows * rounds
        result: dict[str, Any] = {
            "workflows_per_s": round(n / wall),
            "starts_per_s": round(n / starting),
        }
        for name, pid in workers.items():
            cpu = cpu_seconds(pid) - before[name]
            result[f"{name}_cpu_ms_per_workflow"] = round(cpu / n * 1e3, 3)
        result["client_cpu_ms_per_workflow"] = round((cpu_seconds(me) - client0) / n * 1e3, 3)
        if server_pid:
            server = tree_cpu_seconds(server_pid) - server0
            result["server_cpu_ms_per_workflow"] = round(server / n * 1e3, 3)
        return result
    finally:
        await app.close()


def run(
    url: str, server_pid: int | None, workflows: int, rounds: int, far: bool, log: Path
) -> None:
    processes = {"worker": start_worker(url, log.with_suffix(".worker.log"))}
    try:
        if far:
            processes["activity_worker"] = start_worker(
                url, log.with_suffix(".far.log"), "--task-queue", FAR_QUEUE
            )
        workers = {name: p.pid for name, p in processes.items()}
        result = asyncio.run(measure(url, workers, server_pid, workflows, rounds, far))
    finally:
        for process in processes.values():
            process.terminate()
            process.wait(30)
    print(url.split("@")[-1], result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", help="default: a throwaway PostgreSQL server")
    parser.add_argument("--workflows", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--far", action="store_true", help="one activity per workflow, on its own task queue"
    )
    args = parser.parse_args()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"perdure-client-starts-{os.getpid()}.log"
    if args.url:
        run(args.url, None, args.workflows, args.rounds, args.far, log)
        return
    from benchmarks.pg import PostgresServer

    server = PostgresServer()
    server.start()
    try:
        postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
        url = server.create_database("clients")
        run(url, postmaster, args.workflows, args.rounds, args.far, log)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
