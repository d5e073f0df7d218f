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


@pytest.fixture(params=["sqlite", "postgres"])
def db_cli(request: pytest.FixtureRequest, tmp_path: Path) -> Cli:
    """The command line on a migrated database of each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/perdure.db"
    else:
        databases = request.getfixturevalue("postgres")  # tests/conftest.py's server
        url = databases.url_for(databases.create())
    cli = Cli(cwd=tmp_path, env=base_env(PERDURE_DATABASE_URL=url))
    cli.ok("db", "migrate")
    return cli


@pytest.fixture
def app_ref(app_module: Path) -> str:
    """The App that ``served_db``'s worker runs (a test module may name another)."""
    return "wfapp:app"


@pytest.fixture
def served_db(db_cli: Cli, app_ref: str, tmp_path: Path) -> Iterator[Cli]:
    """``db_cli`` with a worker subprocess running ``app_ref`` on its database."""
    worker = WorkerProcess(db_cli, app_ref, log=tmp_path / "worker.log")
    worker.wait_ready()
    yield db_cli
    code = worker.stop()
    assert code == 0, worker.output()
