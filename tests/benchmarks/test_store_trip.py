"""perdure's store alone (benchmarks/store_trip.py): the commits it times are the ones
perdure's worker makes, and they really go in, on both backends."""

from __future__ import annotations

from typing import Any

import perdure
from benchmarks.report import Result, Results, w3_bound_notes, w4_bound_notes
from benchmarks.store_trip import (
    activity_step,
    closing_step,
    start_step,
    store_round_trips,
    store_steps,
)
from benchmarks.systems.perdure_bench import noop, steps
from perdure._store._base import StepCommit


def _shape(step: StepCommit) -> dict[str, Any]:
    """What a step writes, without its ids, times and owner."""
    start = step.start
    return {
        "expected_seq": step.expected_seq,
        "events": [(e.seq, str(e.event_type), e.name, sorted(e.attributes)) for e in step.events],
        "wake_at": step.wake_at is not None,
        "lease_until": step.lease_until is not None,
        "close": None
        if step.close is None
        else (step.close.status, step.close.had_children, step.close.continued_run_id),
        "start": None
        if start is None
        else (
            start.workflow_type,
            start.input,
            start.id_reuse_policy,
            start.id_conflict_policy,
            start.owner is not None,
            start.lease_until is not None,
        ),
        "rest": (
            list(step.new_tasks),
            step.finished_tasks,
            step.consumed_inbox,
            step.release,
            list(step.children),
            list(step.messages),
            dict(step.replies),
            step.search_attributes,
            step.continue_as_new,
        ),
    }


async def test_the_timed_commits_are_the_workers_own(app: perdure.App) -> None:
    """A real run of two steps makes the same three commits as the builders."""
    app.workflow(steps)
    app.activity(noop)
    store = await app._get_store()
    made: list[StepCommit] = []
    commit = store.commit_step

    def record(step: StepCommit) -> Any:
        made.append(step)
        return commit(step)

    store.commit_step = record  # type: ignore[method-assign]
    async with app.worker():
        assert await app.execute_workflow(steps, 2) == 2
    store.commit_step = commit  # type: ignore[method-assign]
    assert [_shape(s) for s in made] == [
        _shape(start_step("r", "w", [2])),
        _shape(activity_step("r", 3, 1)),
        _shape(closing_step("r", 5, 2, 2)),
    ]


async def test_round_trips_and_steps_are_committed(app: perdure.App) -> None:
    store = await app._get_store()
    trips = await store_round_trips(store, 3, warm_up=2)
    assert trips["store_p50_ms"] > 0 and trips["store_cpu_ms_per_round_trip"] > 0
    closed = [d async for d in app.list_workflows(workflow_type="steps")]
    assert len(closed) == 5 and {d.status for d in closed} == {"completed"}
    history = await app.get_handle(closed[0].workflow_id).history()
    assert [str(e.event_type) for e in history] == [
        "workflow_started",
        "activity_scheduled",
        "activity_completed",
        "workflow_completed",
    ]

    metrics = await store_steps(store, 4, warm_up=3)
    assert metrics["store_steps_per_s"] > 0 and metrics["store_cpu_ms_per_step"] > 0
    runs = [d async for d in app.list_workflows(workflow_type="steps")]
    assert len(runs) == 6 and {d.status for d in runs} == {"completed"}
    (seven,) = [d for d in runs if d not in closed]
    history = await app.get_handle(seven.workflow_id).history()
    # The start, 3 + 4 steps (each an activity's result and the next one), the close.
    assert len(history) == 2 + 2 * 7 + 2
    assert [e.seq for e in history] == list(range(1, len(history) + 1))
    assert (await app.get_handle(seven.workflow_id).result()) == 4


def _results(w3: dict[str, float], w4: dict[str, float]) -> Results:
    limit = {
        "single_commits_per_s": 15000.0,
        "single_p50_ms": 0.066,
        "single_cpu_ms": 0.03,
        "after_cpu_100us_commits_per_s": 7000.0,
        "after_cpu_200us_commits_per_s": 4500.0,
    }
    return Results(
        [
            Result("limit", "sqlite", "L", metrics=limit),
            Result("perdure", "sqlite", "W3", metrics={"p50_ms": 0.8, **w3}),
            Result("perdure", "sqlite", "W4", metrics={"steps_per_s": 4500.0, **w4}),
        ]
    )


def test_the_notes_read_w3_and_w4_against_the_store_alone() -> None:
    results = _results(
        {"cpu_ms_per_round_trip": 0.7, "store_p50_ms": 0.5},
        {"cpu_ms_per_step": 0.17, "store_steps_per_s": 7200.0, "store_cpu_ms_per_step": 0.1},
    )
    (w3,) = w3_bound_notes(results, ["sqlite"])
    assert "store alone" in w3 and "0.50 ms, 7.6x the single-row p50" in w3
    assert "more than the target before any engine code runs" in w3
    (w4,) = w4_bound_notes(results, ["sqlite"])
    assert "reach 7,200/s, 48% of back-to-back, at 0.100 ms of CPU a step" in w4


def test_the_notes_claim_nothing_the_figures_do_not_show() -> None:
    fast = _results({"cpu_ms_per_round_trip": 0.7, "store_p50_ms": 0.15}, {"cpu_ms_per_step": 0.17})
    (w3,) = w3_bound_notes(fast, ["sqlite"])
    assert "2.3x the single-row p50" in w3 and "before any engine code" not in w3
    (w4,) = w4_bound_notes(fast, ["sqlite"])
    assert "store alone" not in w4  # not measured: not mentioned
