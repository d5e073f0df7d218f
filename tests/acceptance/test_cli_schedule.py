"""`perdure schedule list|describe|pause|unpause|trigger|delete` against a real database."""

from __future__ import annotations

import asyncio
import json

from cli_harness import Cli

import perdure
from perdure import WorkflowContext


def _make_schedules(url: str) -> None:
    async def go() -> None:
        app = perdure.App(url)

        @app.workflow(name="report")
        async def report(ctx: WorkflowContext, day: str) -> str:
            return day

        async with app:
            await app.schedule_workflow(
                report, schedule_id="daily-report", cron="0 9 * * *", timezone="UTC", args=["x"]
            )
            await app.schedule_workflow(
                report, schedule_id="cleanup", interval="1h", jitter="5m", args=["y"]
            )

    asyncio.run(go())


def test_schedule_commands(cli: Cli) -> None:
    cli.ok("db", "migrate")
    assert cli.ok("schedule", "list").strip() == "no schedules"
    _make_schedules(cli.env["PERDURE_DATABASE_URL"])

    listed = cli.ok("schedule", "list")
    assert "daily-report" in listed and "cleanup" in listed
    assert "cron '0 9 * * *' (UTC)" in listed and "every 1h, jitter 5m" in listed
    as_json = json.loads(cli.ok("schedule", "list", "--json"))
    assert [s["schedule_id"] for s in as_json] == ["cleanup", "daily-report"]

    described = cli.ok("schedule", "describe", "daily-report")
    assert "report" in described and "active" in described and "09:00:00" in described
    d = json.loads(cli.ok("schedule", "describe", "daily-report", "--json"))
    assert d["spec"] == {"cron": "0 9 * * *", "timezone": "UTC", "jitter": 0.0}
    assert d["paused"] is False and len(d["next_fire_times"]) == 5

    assert "paused schedule cleanup" in cli.ok("schedule", "pause", "cleanup")
    assert json.loads(cli.ok("schedule", "describe", "cleanup", "--json"))["paused"] is True
    assert "paused" in cli.ok("schedule", "list")

    started = cli.ok("schedule", "trigger", "cleanup")  # paused, and still starts a run
    workflow_id = started.split()[-1]
    assert workflow_id.startswith("cleanup-20")
    assert workflow_id in cli.ok("list")
    assert workflow_id in cli.ok("schedule", "describe", "cleanup")

    assert "unpaused schedule cleanup" in cli.ok("schedule", "unpause", "cleanup")
    assert json.loads(cli.ok("schedule", "describe", "cleanup", "--json"))["paused"] is False

    assert "deleted schedule cleanup" in cli.ok("schedule", "delete", "cleanup")
    assert "cleanup" not in cli.ok("schedule", "list")


def test_unknown_schedule_is_a_one_line_error(cli: Cli) -> None:
    cli.ok("db", "migrate")
    for command in ("describe", "pause", "unpause", "trigger", "delete"):
        proc = cli("schedule", command, "nope")
        assert proc.returncode != 0
        assert "no schedule with id 'nope'" in proc.stderr
        assert "Traceback" not in proc.stderr
