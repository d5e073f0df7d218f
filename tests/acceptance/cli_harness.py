"""Driving the installed ``perdure`` command line in subprocesses (used by the acceptance tests)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

TIMEOUT = 60  # seconds; every subprocess wait is bounded


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERDURE_")}
    env["NO_COLOR"] = "1"
    env.update(extra)
    return env


@dataclass
class Cli:
    """Runs ``python -m perdure ...`` with a database and a working directory."""

    cwd: Path
    env: Mapping[str, str]

    def __call__(
        self, *args: str, timeout: float = TIMEOUT, **env: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "perdure", *args],
            cwd=self.cwd,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def ok(self, *args: str) -> str:
        proc = self(*args)
        assert proc.returncode == 0, f"perdure {' '.join(args)} failed:\n{proc.stderr}"
        assert "Traceback" not in proc.stderr
        return proc.stdout


class WorkerProcess:
    """``perdure worker ...`` in a subprocess; stopped with SIGTERM."""

    def __init__(self, cli: Cli, *args: str, log: Path) -> None:
        self.log = log
        self._log_file = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "perdure", "worker", *args],
            cwd=cli.cwd,
            env=dict(cli.env),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def output(self) -> str:
        return self.log.read_text()

    def wait_ready(self, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while "perdure worker ready" not in self.output():
            if self.proc.poll() is not None:
                self.close()
                pytest.fail(f"worker exited with {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"worker not ready within {timeout}s:\n{self.output()}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` and return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"worker did not stop within {TIMEOUT}s:\n{self.output()}")
        self.close()
        return code

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=TIMEOUT)
        self.close()

    def close(self) -> None:
        if not self._log_file.closed:
            self._log_file.close()


class UiProcess:
    """``perdure ui --port 0 ...`` in a subprocess; ``url`` is where it listens."""

    def __init__(self, cli: Cli, *args: str, log: Path) -> None:
        self.log = log
        self._log_file = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "perdure", "ui", "--port", "0", *args],
            cwd=cli.cwd,
            env=dict(cli.env),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.url = self._wait_url()

    def _wait_url(self) -> str:
        deadline = time.monotonic() + TIMEOUT
        while True:
            found = re.search(r"perdure ui: serving .* at (http://\S+)/", self.log.read_text())
            if found:
                return found.group(1)
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"perdure ui did not start:\n{self.log.read_text()}")
            time.sleep(0.05)

    def stop(self) -> int:
        """SIGTERM, as a service manager stops it; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout=TIMEOUT)
        self._log_file.close()
        return code


APP_MODULE = '''
"""A small app for the command-line tests."""

from __future__ import annotations

from typing import Any

from perdure import App, RetryPolicy, WorkflowContext

app = App()  # PERDURE_DATABASE_URL


@app.activity
async def greet(name: str) -> str:
    return f"Hello, {name}!"


@app.activity(retry=RetryPolicy(maximum_attempts=1))
async def explode(message: str) -> None:
    raise ValueError(message)


@app.workflow
async def hello(ctx: WorkflowContext, name: str) -> str:
    return await ctx.activity(greet, name)


@app.workflow(name="add")
async def add(ctx: WorkflowContext, a: int, b: int, extra: dict[str, Any]) -> dict[str, Any]:
    await ctx.sleep("10ms")
    return {"sum": a + b, **extra}


@app.workflow(name="boom")
async def boom(ctx: WorkflowContext, message: str) -> None:
    await ctx.activity(explode, message)


@app.workflow(name="waiter")
async def waiter(ctx: WorkflowContext, signal_name: str) -> Any:
    return await ctx.wait_for_signal(signal_name, timeout="10m")


@app.workflow(name="tagged")
async def tagged(ctx: WorkflowContext, attributes: dict[str, Any]) -> None:
    ctx.upsert_search_attributes(attributes)


@app.workflow(name="counter")
async def counter(ctx: WorkflowContext, start: int) -> int:
    value = start

    def add(n: int) -> int:
        nonlocal value
        value += n
        return value

    def positive(n: int) -> None:
        if n <= 0:
            raise ValueError(f"n must be positive, got {n}")

    ctx.set_query_handler("value", lambda: value)
    ctx.set_update_handler("add", add, validator=positive)
    await ctx.wait_for_signal("stop", timeout="10m")
    return value
'''


def write_app_module(folder: Path, name: str = "wfapp", source: str = APP_MODULE) -> Path:
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return path
