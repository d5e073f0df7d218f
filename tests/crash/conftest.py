"""Subprocess workers that tests can SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


class WorkerProcesses:
    """Starts worker processes running ``app_source`` against one database."""

    def __init__(self, tmp_path: Path, url: str, app_source: str) -> None:
        self.tmp_path = tmp_path
        self.url = url
        (tmp_path / "crashapp.py").write_text(app_source)
        self.log = tmp_path / "log.txt"
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, **env: str) -> subprocess.Popen[bytes]:
        n = len(self.procs)
        full_env = dict(os.environ, PERDURE_DATABASE_URL=self.url, CRASH_LOG=str(self.log), **env)
        with open(self.tmp_path / f"worker-{n}.out", "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, str(self.tmp_path / "crashapp.py")],
                env=full_env,
                cwd=self.tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc

    def output(self, proc: subprocess.Popen[bytes]) -> str:
        return (self.tmp_path / f"worker-{self.procs.index(proc)}.out").read_text()

    def lines(self) -> list[str]:
        if not self.log.exists():
            return []
        return [line.split()[0] for line in self.log.read_text().splitlines()]

    async def wait_for_line(
        self, line: str, proc: subprocess.Popen[bytes], timeout: float = 30
    ) -> None:
        deadline = time.monotonic() + timeout
        while line not in self.lines():
            assert time.monotonic() < deadline, f"never saw {line!r}; log: {self.lines()}"
            assert proc.poll() is None, self.output(proc)
            await asyncio.sleep(0.05)

    @staticmethod
    def kill(proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert proc.returncode == 0, self.output(proc)

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
def worker_processes(tmp_path: Path, database_url: str) -> Iterator[type[WorkerProcesses]]:
    made: list[WorkerProcesses] = []

    class Bound(WorkerProcesses):
        def __init__(self, app_source: str) -> None:  # type: ignore[override]
            super().__init__(tmp_path, database_url, app_source)
            made.append(self)

    yield Bound
    for wp in made:
        wp.cleanup()
