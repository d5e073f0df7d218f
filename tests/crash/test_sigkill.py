"""A worker process killed with SIGKILL mid-activity loses nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import perdure
import perdure.testing

APP_SOURCE = textwrap.dedent(
    """
    import asyncio, os
    import perdure
    from perdure import WorkflowContext

    app = perdure.App(os.environ["PERDURE_DATABASE_URL"])
    LOG = os.environ["CRASH_LOG"]

    def record(what):
        with open(LOG, "a") as f:
            f.write(f"{what} {os.getpid()}\\n")

    @app.activity
    async def quick(name: str) -> str:
        record(name)
        return name

    @app.activity
    async def slow(name: str) -> str:
        record(name + ":start")
        await asyncio.sleep(float(os.environ["SLOW_SECONDS"]))
        record(name + ":end")
        return name

    @app.workflow(name="crashy")
    async def crashy(ctx: WorkflowContext, n: int) -> list[str]:
        a = await ctx.activity(quick, "one")
        b = await ctx.activity(quick, "two")
        await ctx.sleep("50ms")
        c = await ctx.activity(slow, "three")
        d = await ctx.activity(quick, "four")
        return [a, b, c, d, str(n)]

    if __name__ == "__main__":
        asyncio.run(app.run_worker(lease_duration="2s", poll_interval="100ms"))
    """
)


def start_worker(tmp_path: Path, url: str, slow_seconds: float, n: int) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ,
        PERDURE_DATABASE_URL=url,
        CRASH_LOG=str(tmp_path / "log.txt"),
        SLOW_SECONDS=str(slow_seconds),
    )
    with open(tmp_path / f"worker-{n}.out", "wb") as out:
        return subprocess.Popen(
            [sys.executable, str(tmp_path / "crashapp.py")],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def log_lines(tmp_path: Path) -> list[str]:
    path = tmp_path / "log.txt"
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


async def test_sigkill_during_activity_then_new_worker_finishes(
    database_url: str, tmp_path: Path
) -> None:
    (tmp_path / "crashapp.py").write_text(APP_SOURCE)
    client = perdure.App(database_url)
    async with client:
        handle = await client.start_workflow("crashy", 7, workflow_id="crash-1")
        first = start_worker(tmp_path, database_url, slow_seconds=60, n=1)
        try:
            deadline = time.monotonic() + 30
            while "three:start" not in log_lines(tmp_path):
                assert time.monotonic() < deadline, "worker never reached the slow activity"
                assert first.poll() is None, (tmp_path / "worker-1.out").read_text()
                await asyncio.sleep(0.05)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
        finally:
            if first.poll() is None:
                first.kill()
        second = start_worker(tmp_path, database_url, slow_seconds=0.05, n=2)
        try:
            result = await handle.result(timeout=60)
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=30)
        assert second.returncode == 0, (tmp_path / "worker-2.out").read_text()
        assert result == ["one", "two", "three", "four", "7"]
        lines = log_lines(tmp_path)
        # completed-and-recorded activities never ran again; the interrupted one re-ran
        assert lines.count("one") == 1
        assert lines.count("two") == 1
        assert lines.count("three:start") == 2
        assert lines.count("three:end") == 1
        assert lines.count("four") == 1
        history = await handle.history()
        types = [e.event_type for e in history]
        assert types.count("workflow_completed") == 1
        assert types.count("activity_completed") == 4
        assert [e.seq for e in history] == list(range(1, len(history) + 1))
        await perdure.testing.replay(_app_from_source(tmp_path, database_url), history)


def _app_from_source(tmp_path: Path, url: str) -> perdure.App:
    namespace: dict[str, object] = {}
    os.environ.setdefault("CRASH_LOG", str(tmp_path / "log.txt"))
    old = os.environ.get("PERDURE_DATABASE_URL")
    os.environ["PERDURE_DATABASE_URL"] = url
    try:
        exec(compile(APP_SOURCE, "crashapp.py", "exec"), namespace)
    finally:
        if old is None:
            del os.environ["PERDURE_DATABASE_URL"]
        else:
            os.environ["PERDURE_DATABASE_URL"] = old
    app = namespace["app"]
    assert isinstance(app, perdure.App)
    return app
