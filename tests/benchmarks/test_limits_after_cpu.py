"""The limit after CPU: a raw commit loop's rate interpolated at an engine's CPU per step."""

from __future__ import annotations

import pytest

from benchmarks.limits import commits_after_cpu, rate_after_cpu

# Per-commit time: 0.25 ms back to back, then 0.4, 0.55, 0.7, 0.85 ms with 0.1-0.4 ms
# of CPU before each commit.
METRICS = {
    "single_commits_per_s": 1 / 0.25e-3,
    "after_cpu_100us_commits_per_s": 1 / 0.40e-3,
    "after_cpu_200us_commits_per_s": 1 / 0.55e-3,
    "after_cpu_300us_commits_per_s": 1 / 0.70e-3,
    "after_cpu_400us_commits_per_s": 1 / 0.85e-3,
}


def test_measured_points_come_back() -> None:
    assert rate_after_cpu(METRICS, 0.0) == pytest.approx(4000)
    assert rate_after_cpu(METRICS, 0.1) == pytest.approx(2500)
    assert rate_after_cpu(METRICS, 0.4) == pytest.approx(1 / 0.85e-3)


def test_between_points_the_time_per_commit_is_interpolated() -> None:
    assert rate_after_cpu(METRICS, 0.05) == pytest.approx(1 / 0.325e-3)
    assert rate_after_cpu(METRICS, 0.25) == pytest.approx(1 / 0.625e-3)


def test_beyond_the_last_point_it_extrapolates() -> None:
    assert rate_after_cpu(METRICS, 0.5) == pytest.approx(1 / 1.0e-3)


def test_missing_figures_give_no_rate() -> None:
    assert rate_after_cpu({"single_commits_per_s": 4000.0}, 0.2) is None
    assert rate_after_cpu({}, 0.2) is None


def test_commits_after_cpu_times_every_gap() -> None:
    done: list[int] = []
    out = commits_after_cpu(done.append, 20)
    assert done == list(range(80))  # 20 commits per gap, numbered on
    for us in (100, 200, 300, 400):
        # 20 commits each preceded by `us` of spinning take at least 20 * us
        assert 0 < out[f"after_cpu_{us}us_commits_per_s"] <= 1e6 / us
        assert out[f"after_cpu_{us}us_p50_ms"] >= 0
