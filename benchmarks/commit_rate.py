"""How many workflow steps per second a store commits, with many runs stepping at once.

    python benchmarks/commit_rate.py postgresql://postgres@127.0.0.1:5432/bench \
        --runs 200 --steps 20

Each run is claimed by one worker id, then every run commits ``--steps`` steps (one
history event and one new activity task each, as an activity step does), all runs
concurrently. Compare ``?group_commit=off`` (one statement per step, from a pool) with
the default (concurrent steps batched into one transaction), and ``cockroachdb://``
(several statements per step; needs PERDURE_TEST_COCKROACH_EMULATION=1 on PostgreSQL).
Each run of the script uses a fresh schema name, so the database can be reused.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from datetime import timedelta
from typing import Any

from perdure._history import EventType, HistoryEvent
from perdure._store import open_store
from perdure._store._base import NewRun, NewTask, StepCommit, Store, utcnow


async def bench(url: str, runs: int, steps: int) -> dict[str, Any]:
    store: Store = open_store(url)
    await store.migrate()
    try:
        ids = []
        for i in range(runs):
            run_id, _ = await store.start_run(
                NewRun(
                    namespace="bench",
                    workflow_id=f"wf-{i}",
                    run_id=uuid.uuid4().hex,
                    workflow_type="t",
                    task_queue="q",
                    input=[],
                    wake_at=utcnow(),
                )
            )
            ids.append(run_id)
        lease = utcnow() + timedelta(minutes=10)
        claimed = await store.claim_runs(
            namespace="bench",
            worker_id="w",
            task_queues=["q"],
            workflow_types=["t"],
            limit=runs,
            lease_until=lease,
        )
        assert len(claimed) == runs

        async def drive(run_id: str) -> None:
            for seq in range(1, steps + 1):
                now = utcnow()
                await store.commit_step(
                    StepCommit(
                        namespace="bench",
                        run_id=run_id,
                        worker_id="w",
                        expected_seq=seq,
                        events=[
                            HistoryEvent(
                                seq=seq,
                                event_type=EventType.ACTIVITY_SCHEDULED,
                                name="a",
                                attributes={"activity_id": seq, "args": [seq, "x" * 40]},
                                created_at=now,
                            )
                        ],
                        new_tasks=[
                            NewTask(
                                activity_id=seq,
                                activity_type="a",
                                task_queue=None,
                                scheduled_at=now,
                                visible_at=now,
                            )
                        ],
                        finished_tasks=[seq - 1] if seq > 1 else [],
                        wake_at=now,
                        lease_until=lease,
                    )
                )

        started = time.perf_counter()
        await asyncio.gather(*(drive(r) for r in ids))
        elapsed = time.perf_counter() - started
        result: dict[str, Any] = {"steps_per_s": round(runs * steps / elapsed)}
        group = getattr(store, "_group", None)
        if group is not None and group.writes:
            result["steps_per_transaction"] = round(group.writes / max(group.transactions, 1), 1)
        return result
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    url = args.url
    if not url.startswith("sqlite"):
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        url += ("&" if "?" in url else "?") + f"schema={schema}"
    print(url, asyncio.run(bench(url, args.runs, args.steps)))


if __name__ == "__main__":
    main()
