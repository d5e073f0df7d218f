"""``perdure replay``: prove that the code about to be deployed replays recorded runs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import click
from rich.table import Table

from perdure._app import App
from perdure._cli import (
    _database_url_option,
    _namespace_option,
    _require_database,
    console,
    load_app,
    main,
    run_async,
    with_database,
)
from perdure._errors import NonDeterminismError
from perdure._history import HistoryEvent
from perdure.testing import replay as replay_history


@dataclass(frozen=True, slots=True)
class Verdict:
    source: str
    workflow_type: str
    events: int
    error: str | None


async def _replay_one(app: App, source: str, events: list[HistoryEvent]) -> Verdict:
    workflow_type = (
        str(events[0].attributes.get("workflow_type") or events[0].name) if events else "?"
    )
    try:
        await replay_history(app, events)
    except NonDeterminismError as exc:
        return Verdict(source, workflow_type, len(events), str(exc))
    except ValueError as exc:
        return Verdict(source, workflow_type, len(events), f"unreadable history: {exc}")
    return Verdict(source, workflow_type, len(events), None)


@main.command()
@click.argument("code_ref", metavar="MODULE:APP")
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--workflow-id",
    "-w",
    "workflow_ids",
    multiple=True,
    metavar="ID",
    help="Replay this workflow's latest run (repeatable).",
)
@click.option("--type", "workflow_type", metavar="TYPE", help="Only runs of this type.")
@click.option(
    "--all-statuses",
    is_flag=True,
    help="Replay closed runs too (default: only running runs, the ones new code resumes).",
)
@click.option("--limit", default=100, show_default=True, help="At most this many runs.")
@_database_url_option("Database to read runs from. [default: MODULE:APP's]")
@_namespace_option("MODULE:APP's")
def replay(
    code_ref: str,
    files: tuple[Path, ...],
    workflow_ids: tuple[str, ...],
    workflow_type: str | None,
    all_statuses: bool,
    limit: int,
    database_url: str | None,
    namespace: str | None,
) -> None:
    """Replay recorded histories against the workflows of MODULE:APP.

    Exits 1 if any history no longer replays (the new code would park those
    runs with a non-determinism error), 0 otherwise. Histories come from
    JSON files (``perdure history ID --json``) or, without files, from the
    database.

    \b
    perdure replay myapp.workflows:app                 # every running run
    perdure replay myapp.workflows:app -w order-1      # one workflow
    perdure replay myapp.workflows:app golden/*.json   # recorded files
    """
    # The new code's registry, reading runs from the chosen database.
    app = with_database(load_app(code_ref), database_url, namespace)
    if files:
        sources = [(str(path), _load_file(path)) for path in files]
        verdicts = run_async(app, lambda app: _replay_all(app, sources))
    else:
        _require_database(app)

        async def from_database(app: App) -> list[Verdict]:
            found = await _histories(app, workflow_ids, workflow_type, all_statuses, limit)
            return await _replay_all(app, found)

        verdicts = run_async(app, from_database)
    _report(verdicts)
    if any(v.error for v in verdicts):
        raise SystemExit(1)


async def _replay_all(app: App, sources: list[tuple[str, list[HistoryEvent]]]) -> list[Verdict]:
    return [await _replay_one(app, source, events) for source, events in sources]


async def _histories(
    db: App,
    workflow_ids: tuple[str, ...],
    workflow_type: str | None,
    all_statuses: bool,
    limit: int,
) -> list[tuple[str, list[HistoryEvent]]]:
    if workflow_ids:
        descriptions = [await db.get_handle(wid).describe() for wid in workflow_ids]
    else:
        descriptions = [
            d
            async for d in db.list_workflows(
                status=None if all_statuses else "running",
                workflow_type=workflow_type,
                limit=limit,
            )
        ]
    out = []
    for d in descriptions:
        events = await db.get_handle(d.workflow_id, run_id=d.run_id).history()
        if events:  # a run not started yet has nothing to replay
            out.append((f"{d.workflow_id} ({d.run_id[:8]})", events))
    return out


def _load_file(path: Path) -> list[HistoryEvent]:
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise click.UsageError(f"{path} is not JSON: {exc}") from None
    if isinstance(data, dict):
        data = data.get("events", [])
    return [HistoryEvent.from_dict(e) for e in data]


def _report(verdicts: list[Verdict]) -> None:
    table = Table(title=f"replayed {len(verdicts)} histor{'y' if len(verdicts) == 1 else 'ies'}")
    for column in ("history", "type", "events", "verdict"):
        table.add_column(column)
    for v in verdicts:
        verdict = "[green]ok[/green]" if v.error is None else f"[red]{v.error}[/red]"
        table.add_row(v.source, v.workflow_type, str(v.events), verdict)
    console().print(table)
    broken = sum(1 for v in verdicts if v.error)
    if broken:
        console(stderr=True).print(
            f"[red]{broken} of {len(verdicts)} histories do not replay with this code[/red]: "
            "guard the change with ctx.patched() (docs/versioning.md)"
        )
