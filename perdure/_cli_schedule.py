"""``perdure schedule list|describe|pause|unpause|trigger|delete``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import click
from rich.table import Table
from rich.text import Text

from perdure._app import App
from perdure._cli import Database, _database_options, _json_option, main, show
from perdure._present import fmt_time, seconds_text, spec_text
from perdure._schedules import ScheduleDescription, ScheduleHandle, describe_record

T = TypeVar("T")


def _schedules_table(items: list[ScheduleDescription]) -> Table:
    table = Table(header_style="bold")
    for column in ("SCHEDULE ID", "WORKFLOW TYPE", "SPEC", "STATE", "NEXT FIRE", "LAST RUN"):
        table.add_column(column, no_wrap=True)
    for d in items:
        last = d.recent_runs[-1] if d.recent_runs else None
        table.add_row(
            d.schedule_id,
            d.workflow_type,
            spec_text(d.spec),
            Text("paused", style="yellow") if d.paused else Text("active", style="green"),
            "" if d.paused or not d.next_fire_times else fmt_time(d.next_fire_times[0]),
            "" if last is None else f"{last['workflow_id']} ({last['status']})",
        )
    return table


def _description_table(d: ScheduleDescription) -> Table:
    table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("Schedule ID", d.schedule_id)
    table.add_row("Workflow type", d.workflow_type)
    table.add_row("Task queue", d.task_queue)
    table.add_row("Spec", spec_text(d.spec))
    table.add_row("Overlap", d.overlap)
    table.add_row("Catch-up window", seconds_text(d.catchup_window))
    table.add_row("State", "paused" if d.paused else "active")
    table.add_row("Next fires", ", ".join(fmt_time(t) for t in d.next_fire_times))
    if d.buffered_fire_time is not None:
        table.add_row("Buffered fire", fmt_time(d.buffered_fire_time))
    for i, r in enumerate(reversed(d.recent_runs)):
        table.add_row(
            "Recent runs" if i == 0 else "",
            f"{r['workflow_id']}  {r['status']}  ({r['trigger']})",
        )
    return table


@main.group()
def schedule() -> None:
    """List, inspect and control schedules (create them with app.schedule_workflow)."""


def _on_schedule(
    database: Database, schedule_id: str, fn: Callable[[ScheduleHandle], Awaitable[T]]
) -> T:
    """``fn(handle)`` on a schedule of the database the options name."""
    return database.run(lambda app: fn(app.get_schedule(schedule_id)))


@schedule.command("list")
@_json_option
@_database_options
def list_(as_json: bool, database: Database) -> None:
    """Every schedule of the namespace."""

    async def go(app: App) -> list[ScheduleDescription]:
        store = await app._get_store()
        return [await describe_record(app, r) for r in await store.list_schedules(app.namespace)]

    show(database.run(go), as_json, _schedules_table, empty="no schedules")


@schedule.command()
@click.argument("schedule_id")
@_json_option
@_database_options
def describe(schedule_id: str, as_json: bool, database: Database) -> None:
    """Show a schedule: spec, state, next fire times, recent runs."""
    desc = _on_schedule(database, schedule_id, lambda s: s.describe())
    show(desc, as_json, _description_table)


@schedule.command()
@click.argument("schedule_id")
@_database_options
def pause(schedule_id: str, database: Database) -> None:
    """Stop firing a schedule (runs already started go on)."""
    _on_schedule(database, schedule_id, lambda s: s.pause())
    click.echo(f"paused schedule {schedule_id}")


@schedule.command()
@click.argument("schedule_id")
@_database_options
def unpause(schedule_id: str, database: Database) -> None:
    """Fire a paused schedule again, from its next fire time after now."""
    _on_schedule(database, schedule_id, lambda s: s.unpause())
    click.echo(f"unpaused schedule {schedule_id}")


@schedule.command()
@click.argument("schedule_id")
@_database_options
def trigger(schedule_id: str, database: Database) -> None:
    """Start a run of the schedule now (even when paused)."""

    async def go(s: ScheduleHandle) -> str:
        return (await s.trigger()).workflow_id

    workflow_id = _on_schedule(database, schedule_id, go)
    click.echo(f"started {workflow_id}")


@schedule.command()
@click.argument("schedule_id")
@_database_options
def delete(schedule_id: str, database: Database) -> None:
    """Delete a schedule (the runs it started are left alone)."""

    async def go(s: ScheduleHandle) -> None:
        await s.describe()  # an unknown id is an error here, not a silent no-op
        await s.delete()

    _on_schedule(database, schedule_id, go)
    click.echo(f"deleted schedule {schedule_id}")
