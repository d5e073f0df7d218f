"""Four worker processes share one PostgreSQL database; one is SIGKILLed mid-run.

1,000 workflows of 5 activities each. Every activity run appends
``<workflow_id> <step> <pid> <token>`` to a log file (append mode: each short line lands
whole, in the order the runs started) and returns its token with its value, so the
history tells which run's result was recorded. At the end:

- every workflow completed exactly once (one run, one close) with the right result;
- every activity has exactly one recorded completion, and the run it recorded is the
  LAST run of that activity in the log: nothing ran an activity again once the run
  whose completion was recorded had started;
- every other run is accounted for: it ran on the killed worker, or on a worker that
  lost the run (its lease ran out, which a CPU-starved worker renewing a 2s lease can
  let happen; the worker logs the run's id when it finds out).
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import textwrap
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

import perdure

WORKFLOWS = 1000
STEPS = 5

APP = textwrap.dedent(
    """
    import asyncio, logging, os, uuid
    import perdure
    from perdure import WorkflowContext

    app = perdure.App(os.environ["PERDURE_DATABASE_URL"])
    LOG = os.environ["CRASH_LOG"]

    @app.activity(name="step")
    async def step(workflow_id: str, i: int, n: int) -> dict:
        token = uuid.uuid4().hex[:12]
        with open(LOG, "a") as f:
            f.write(f"{workflow_id} {i} {os.getpid()} {token}\\n")
        return {"value": n * 10 + i, "token": token}

    @app.workflow(name="chain")
    async def chain(ctx: WorkflowContext, workflow_id: str, n: int) -> list[int]:
        values = []
        for i in range(5):
            values.append((await ctx.activity(step, workflow_id, i, n))["value"])
        return values

    if __name__ == "__main__":
        logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s")
        logging.getLogger("perdure.worker").setLevel(logging.INFO)  # runs it drops
        asyncio.run(app.run_worker(lease_duration="2s"))
    """
)

pytestmark = [
    pytest.mark.parametrize("database_url", ["postgres"], indirect=True),
    pytest.mark.timeout(300),
]

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _expected(n: int) -> list[int]:
    return [n * 10 + i for i in range(STEPS)]


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def _recorded(url: str) -> dict[tuple[str, int], list[str]]:
    """(workflow id, step) -> tokens of the runs whose completion is in the history."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT w.workflow_id, h.attributes FROM perdure.history h "
            "JOIN perdure.workflows w USING (run_id) WHERE h.event_type = 'activity_completed'"
        ).fetchall()
    recorded: dict[tuple[str, int], list[str]] = collections.defaultdict(list)
    for workflow_id, attributes in rows:
        result = _json(attributes)["result"]
        recorded[(workflow_id, result["value"] % 10)].append(result["token"])
    return recorded


def _closed(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM perdure.workflows WHERE status <> 'running'")
        return int(row.fetchone()[0])  # type: ignore[index]


async def _start_all(client: perdure.App) -> None:
    async def start(numbers: range) -> None:
        for n in numbers:
            await client.start_workflow("chain", f"wf-{n}", n, workflow_id=f"wf-{n}")

    await asyncio.gather(*(start(range(lo, WORKFLOWS, 10)) for lo in range(10)))


async def test_four_workers_one_sigkilled_every_workflow_once(
    worker_processes: Any, database_url: str
) -> None:
    began = time.monotonic()
    wp = worker_processes(APP)
    workers = [wp.start() for _ in range(4)]
    async with perdure.App(database_url) as client:
        await _start_all(client)
        started = time.monotonic()

        # Kill one worker once about half of the activities have run.
        victim = workers[0]
        deadline = time.monotonic() + 120
        while len(wp.lines()) < WORKFLOWS * STEPS // 2:
            assert time.monotonic() < deadline, f"slow progress: {len(wp.lines())} activities"
            for proc in workers:
                assert proc.poll() is None, wp.output(proc)
            await asyncio.sleep(0.05)
        wp.kill(victim)
        killed_at = time.monotonic()
        # A commit the victim sent just before dying may still land: let it, then look.
        # (Nobody else can record its runs' activities before its 2s leases run out.)
        await asyncio.sleep(0.3)
        at_kill = await asyncio.to_thread(_recorded, database_url)
        workers.append(wp.start())

        deadline = time.monotonic() + 180
        while (closed := await asyncio.to_thread(_closed, database_url)) < WORKFLOWS:
            assert time.monotonic() < deadline, f"only {closed} of {WORKFLOWS} workflows closed"
            for proc in workers[1:]:
                assert proc.poll() is None, wp.output(proc)
            await asyncio.sleep(0.2)
        finished = time.monotonic()

        for n in (0, WORKFLOWS // 2, WORKFLOWS - 1):
            assert await client.get_handle(f"wf-{n}").result(timeout=5) == _expected(n)
    for proc in workers[1:]:
        wp.stop(proc)

    run_ids = await asyncio.to_thread(_check_database, database_url)
    recorded = await asyncio.to_thread(_recorded, database_url)
    for key, tokens in at_kill.items():
        assert recorded[key] == tokens, key  # a recorded completion stays what it was
    lost = _lost_runs(wp, workers, run_ids)
    reruns = _check_log(wp.log, recorded, str(victim.pid), lost)
    print(
        f"\n{WORKFLOWS}x{STEPS}: started in {started - began:.1f}s, killed at "
        f"{killed_at - began:.1f}s, all done at {finished - began:.1f}s; "
        f"{reruns['victim']} activities of the killed worker ran again, "
        f"{reruns['lost']} of runs other workers lost ({len(lost)} runs lost)"
    )


def _check_database(url: str) -> dict[str, str]:
    """Check runs and histories; return the run id of each workflow id."""
    with psycopg.connect(url) as conn:
        runs = conn.execute(
            "SELECT workflow_id, run_id, status, result FROM perdure.workflows"
        ).fetchall()
        events = conn.execute(
            "SELECT run_id, seq, event_type FROM perdure.history ORDER BY run_id, seq"
        ).fetchall()
        leftovers = conn.execute(
            "SELECT (SELECT count(*) FROM perdure.tasks), (SELECT count(*) FROM perdure.inbox)"
        ).fetchone()
    # Each workflow ran once (one run), completed, with its own result.
    assert len(runs) == WORKFLOWS
    assert sorted(r[0] for r in runs) == sorted(f"wf-{n}" for n in range(WORKFLOWS))
    for workflow_id, _, status, result in runs:
        assert status == "completed", (workflow_id, status)
        assert _json(result) == _expected(int(workflow_id.removeprefix("wf-"))), workflow_id
    by_run: dict[str, list[tuple[int, str]]] = collections.defaultdict(list)
    for run_id, seq, event_type in events:
        by_run[run_id].append((seq, event_type))
    assert len(by_run) == WORKFLOWS
    for run_id, history in by_run.items():
        assert [seq for seq, _ in history] == list(range(1, len(history) + 1)), run_id
        types = collections.Counter(t for _, t in history)
        assert types["workflow_completed"] == 1, (run_id, types)
        assert types["activity_scheduled"] == STEPS, (run_id, types)
        assert types["activity_completed"] == STEPS, (run_id, types)
    assert leftovers == (0, 0)
    return {workflow_id: run_id for workflow_id, run_id, _, _ in runs}


def _lost_runs(wp: Any, workers: list[Any], run_ids: dict[str, str]) -> set[tuple[str, str]]:
    """(pid, workflow id) of every run a worker logged about: a lost lease, a dropped run."""
    workflow_of = {run_id: workflow_id for workflow_id, run_id in run_ids.items()}
    return {
        (str(proc.pid), workflow_of[run_id])
        for proc in workers
        for run_id in _UUID.findall(wp.output(proc))
        if run_id in workflow_of
    }


def _check_log(
    log: Path,
    recorded: dict[tuple[str, int], list[str]],
    victim: str,
    lost: set[tuple[str, str]],
) -> collections.Counter[str]:
    runs: dict[tuple[str, int], list[tuple[str, str]]] = collections.defaultdict(list)
    for line in log.read_text().splitlines():
        workflow_id, step, pid, token = line.split()
        runs[(workflow_id, int(step))].append((pid, token))
    assert set(runs) == {(f"wf-{n}", i) for n in range(WORKFLOWS) for i in range(STEPS)}
    reruns: collections.Counter[str] = collections.Counter()
    for key, started in runs.items():
        [token] = recorded[key]  # exactly one completion recorded
        tokens = [t for _, t in started]
        assert token in tokens, (key, started, token)
        # The recorded run is the last one: once it had started, nothing ran it again
        # (so no earlier run's completion was ever recorded).
        assert tokens[-1] == token, ("ran again after the recorded run", key, started, token)
        for pid, _ in started[:-1]:
            if pid == victim:
                reruns["victim"] += 1
            else:
                assert (pid, key[0]) in lost, ("ran twice, its worker kept the run", key, started)
                reruns["lost"] += 1
    return reruns
