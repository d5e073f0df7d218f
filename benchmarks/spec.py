"""The workloads of issue 5, their sizes, and how ``--scale`` shrinks them."""

from __future__ import annotations

from dataclasses import dataclass

WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W6", "W7")

TITLES = {
    "W1": "1,000 workflows, no steps, started concurrently",
    "W2": "1,000 workflows x 10 no-op activities, concurrently",
    "W3": "300 sequential start->result of a 1-activity workflow",
    "W4": "one workflow of 1,000 sequential no-op activities",
    "W5": "one workflow fanning out 1,000 children, gathered",
    "W6": "10,000 workflows waiting on a signal",
    "W7": "cold worker, run with a 10,000-event history",
}


@dataclass(frozen=True)
class Sizes:
    w1_workflows: int
    w2_workflows: int
    w2_steps: int
    w3_round_trips: int
    w4_steps: int
    w5_children: int
    w6_workflows: int
    w7_activities: int  # perdure and DBOS: 2 history events per activity in perdure
    w7_temporal_activities: int  # Temporal: about 6 history events per activity
    limit_single_commits: int  # SQLite loop lengths (PostgreSQL runs for limit_seconds)
    limit_batch_commits: int
    limit_seconds: float

    @classmethod
    def scaled(cls, scale: float) -> Sizes:
        def n(full: int, least: int) -> int:
            return max(least, round(full * scale))

        return cls(
            w1_workflows=n(1000, 5),
            w2_workflows=n(1000, 5),
            w2_steps=10,
            w3_round_trips=n(300, 5),
            w4_steps=n(1000, 10),
            w5_children=n(1000, 5),
            w6_workflows=n(10_000, 10),
            w7_activities=n(5000, 10),
            w7_temporal_activities=n(1667, 5),
            limit_single_commits=n(3000, 50),
            limit_batch_commits=n(300, 10),
            limit_seconds=max(0.5, 5.0 * min(scale, 1.0)),
        )


@dataclass(frozen=True)
class Metric:
    key: str  # the key in a result's "metrics"
    label: str
    unit: str
    higher_is_better: bool


# The headline metrics of each workload, in table order.
METRICS: dict[str, list[Metric]] = {
    "W1": [Metric("workflows_per_s", "workflows/s", "/s", True)],
    "W2": [
        Metric("workflows_per_s", "workflows/s", "/s", True),
        Metric("steps_per_s", "steps/s", "/s", True),
    ],
    "W3": [
        Metric("p50_ms", "p50 latency", "ms", False),
        Metric("p99_ms", "p99 latency", "ms", False),
    ],
    "W4": [Metric("steps_per_s", "steps/s", "/s", True)],
    "W5": [Metric("children_per_s", "children/s (fan-out + gather)", "/s", True)],
    "W6": [
        Metric("kb_per_workflow", "memory per waiting wf", "KB", False),
        Metric("complete_after_last_signal_s", "all done after last signal", "s", False),
    ],
    "W7": [Metric("seconds_to_next_step", "time to next step", "s", False)],
}

# Which raw database figure bounds a perdure metric (None: no comparable limit).
# Sequential workloads need one durable commit per step: the single-row commit loop
# of one client. Concurrent ones can batch: the best rows/s of 100-row commits.
LIMIT_FOR: dict[tuple[str, str], str] = {
    ("W1", "workflows_per_s"): "batch_rows_per_s",
    ("W2", "workflows_per_s"): "batch_rows_per_s",
    ("W2", "steps_per_s"): "batch_rows_per_s",
    ("W3", "p50_ms"): "single_p50_ms",
    ("W3", "p99_ms"): "single_p99_ms",
    ("W4", "steps_per_s"): "single_commits_per_s",
    ("W5", "children_per_s"): "batch_rows_per_s",
}
