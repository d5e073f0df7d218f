"""Fixtures for the command-line acceptance tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_harness import Cli, WorkerProcess, base_env, write_app_module


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(cwd=tmp_path, env=base_env(PERDURE_DATABASE_URL=f"sqlite:///{tmp_path}/perdure.db"))


@pytest.fixture
def app_module(tmp_path: Path) -> Path:
    return write_app_module(tmp_path)


@pytest.fixture
def worker(cli: Cli, app_module: Path, tmp_path: Path) -> Iterator[WorkerProcess]:
    """A worker subprocess for ``wfapp:app``; it must stop gracefully (exit 0) on SIGTERM."""
    proc = WorkerProcess(cli, "wfapp:app", log=tmp_path / "worker.log")
    proc.wait_ready()
    yield proc
    if proc.proc.poll() is None:
        code = proc.stop()
        assert code == 0, proc.output()
    proc.close()
