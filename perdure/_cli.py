"""The ``perdure`` command line: run workers, start and inspect workflows.

Every command that touches the database takes ``--database-url`` (else
``PERDURE_DATABASE_URL``, else the ``--app`` App's URL, else
``sqlite:///perdure.db``) and ``--namespace``.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import json
import logging
import os
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit, urlunsplit

import click
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from perdure._app import App
from perdure._client import WorkflowDescription, WorkflowHandle, WorkflowStatus
from perdure._converter import PayloadError, to_jsonable
from perdure._durations import to_seconds
from perdure._errors import ApplicationError, PerdureError, WorkflowFailedError
from perdure._history import HistoryEvent
from perdure._present import attribute_filter, fmt_time, message_of, summarize_attributes
from perdure._telemetry import Telemetry

T = TypeVar("T")

ENV_DATABASE_URL = "PERDURE_DATABASE_URL"
DEFAULT_DATABASE_URL = "sqlite:///perdure.db"
_STATUS_STYLES = {
    "running": "cyan",
    "completed": "green",
    "failed": "red",
    "canceled": "yellow",
    "terminated": "red",
    "continued_as_new": "blue",
    "timed_out": "red",
}
_EVENT_STYLES = {
    "workflow_started": "bold",
    "workflow_completed": "bold green",
    "workflow_failed": "bold red",
    "workflow_canceled": "bold yellow",
    "workflow_terminated": "bold red",
    "activity_failed": "red",
    "activity_timed_out": "red",
    "cancel_requested": "yellow",
    "signal_received": "magenta",
}


# -- errors ----------------------------------------------------------------
class CLIError(click.ClickException):
    """A one-line ``error: ...`` on stderr and a non-zero exit; never a traceback."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def _expected_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [
        PerdureError,
        ValueError,
        PayloadError,
        sqlite3.Error,
        OSError,
    ]
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None:
        errors.append(psycopg.Error)
    return tuple(errors)


def _one_line(exc: BaseException) -> str:
    text = message_of(exc)
    if isinstance(exc, PerdureError | ValueError | PayloadError | OSError):
        return text
    return text if text == type(exc).__name__ else f"{type(exc).__name__}: {text}"


class _Group(click.Group):
    """Turns perdure's errors (and database errors) into ``error: ...`` lines."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except _expected_errors() as exc:
            raise CLIError(_one_line(exc)) from exc
        except Exception as exc:
            if os.environ.get("PERDURE_DEBUG"):
                raise
            raise CLIError(
                f"{_one_line(exc)} (unexpected; set PERDURE_DEBUG=1 for the traceback)"
            ) from exc


def _import_extra(module: str, extra: str, *, needs: tuple[str, ...]) -> Any:
    """``module``, or a one-line error naming the extra that installs what it needs."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name is None or exc.name.split(".")[0] not in needs:
            raise
        raise CLIError(f"perdure {extra} needs its extra: pip install 'perdure[{extra}]'") from exc


# -- apps and databases ----------------------------------------------------
def load_app(ref: str) -> App:
    """Import ``module:attr`` (``attr`` defaults to ``app``) from the current directory."""
    module_name, _, attr = ref.partition(":")
    attr = attr or "app"
    if not module_name or not all(part.isidentifier() for part in module_name.split(".")):
        raise CLIError(f"--app/MODULE:APP must look like 'package.module:app', got {ref!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise CLIError(
                f"cannot import {module_name!r}: no such module (looked in {cwd} and sys.path)"
            ) from exc
        raise CLIError(f"importing {module_name!r} failed: {_one_line(exc)}") from exc
    except Exception as exc:
        raise CLIError(f"importing {module_name!r} failed: {_one_line(exc)}") from exc
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise CLIError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(obj, App):
        raise CLIError(f"{ref!r} is a {type(obj).__name__}, not a perdure.App")
    return obj


def with_database(app: App, database_url: str | None, namespace: str | None) -> App:
    """``app``'s registry on another database and/or namespace (``app`` itself if unchanged)."""
    url = database_url or app.database_url
    ns = namespace or app.namespace
    if url == app.database_url and ns == app.namespace:
        return app
    rebound = App(url, namespace=ns, default_task_queue=app.default_task_queue)
    rebound._registry = app._registry
    rebound._result_poll_interval = app._result_poll_interval
    return rebound


def client_app(app_ref: str | None, database_url: str | None, namespace: str | None) -> App:
    """The App a command talks through: ``--app``'s (rebound), else a plain one."""
    if app_ref:
        return with_database(load_app(app_ref), database_url, namespace)
    return App(database_url or DEFAULT_DATABASE_URL, namespace=namespace or "default")


def redact(url: str) -> str:
    """The URL without its password, for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = (parts.username or "") + ":***"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{netloc[-1]}"))


def _require_database(app: App) -> None:
    """Reading commands must not silently create an empty SQLite file at a mistyped path."""
    if not app.database_url.lower().startswith("sqlite:"):
        return
    from perdure._store import sqlite_path

    path = sqlite_path(app.database_url)
    if path == ":memory:" or path.startswith("file:"):
        return
    if not Path(path).exists():
        raise CLIError(
            f"no perdure database at {path!r} (check --database-url or {ENV_DATABASE_URL}; "
            "'perdure db migrate' creates one)"
        )


def run_async(app: App, fn: Callable[[App], Awaitable[T]]) -> T:
    """Run ``fn(app)`` on a fresh event loop and close the app afterwards."""

    async def go() -> T:
        try:
            return await fn(app)
        finally:
            await app.close()

    return asyncio.run(go())


@dataclass(frozen=True, slots=True)
class Database:
    """What ``--app``, ``--database-url`` and ``--namespace`` name, so commands take one value."""

    app_ref: str | None
    url: str | None
    namespace: str | None

    def app(self, *, must_exist: bool = True) -> App:
        """The App to talk through; ``must_exist``: a missing SQLite file is an error."""
        app = client_app(self.app_ref, self.url, self.namespace)
        if must_exist:
            _require_database(app)
        return app

    def run(self, fn: Callable[[App], Awaitable[T]]) -> T:
        """``fn(app)`` on an existing database, the App closed afterwards."""
        return run_async(self.app(), fn)

    def on_workflow(
        self,
        workflow_id: str,
        run_id: str | None,
        fn: Callable[[WorkflowHandle[Any]], Awaitable[T]],
    ) -> T:
        """``fn(handle)`` on a workflow's run (``run_id`` None: its latest)."""
        return self.run(lambda app: fn(app.get_handle(workflow_id, run_id=run_id)))


# -- option helpers ----------------------------------------------------------
_Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _namespace_option(default: str) -> _Decorator:
    """``--namespace``; commands differ only in where its default comes from."""
    return click.option(
        "--namespace", "-n", metavar="NAME", help=f"Namespace. [default: {default}]"
    )


def _database_url_option(help_text: str) -> _Decorator:
    """``--database-url`` (or ``PERDURE_DATABASE_URL``), with the command's own help."""
    return click.option(
        "--database-url", envvar=ENV_DATABASE_URL, show_envvar=True, metavar="URL", help=help_text
    )


def _database_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--app``, ``--database-url`` and ``--namespace``, handed to the command as ``database``."""

    @functools.wraps(fn)
    def command(
        *args: Any,
        app_ref: str | None,
        database_url: str | None,
        namespace: str | None,
        **kwargs: Any,
    ) -> Any:
        return fn(*args, database=Database(app_ref, database_url, namespace), **kwargs)

    app_option = click.option(
        "--app",
        "app_ref",
        metavar="MODULE:APP",
        help="Import this App (from the current directory) for its database and workflows.",
    )
    url_option = _database_url_option(
        f"Database URL. [default: the --app App's, else {DEFAULT_DATABASE_URL}]"
    )
    namespace_option = _namespace_option("the --app App's, else 'default'")
    return app_option(url_option(namespace_option(command)))


def _run_id_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--run-id", metavar="RUN_ID", help="A specific run (default: latest).")(fn)


def _json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(fn)


def _args_json_argument(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The trailing ``[ARGS_JSON]...`` of start, signal, query and update."""
    return click.argument("args", nargs=-1, metavar="[ARGS_JSON]...", callback=parse_json_args)(fn)


def _reject_constant(text: str) -> NoReturn:
    raise ValueError(f"{text} is not allowed in JSON")


def parse_json_args(
    ctx: click.Context | None, param: click.Parameter | None, values: Sequence[str]
) -> tuple[Any, ...]:
    """Each argument is one JSON literal: ``5``, ``'"text"'``, ``'{"a": 1}'``."""
    out = []
    for i, text in enumerate(values, 1):
        try:
            out.append(json.loads(text, parse_constant=_reject_constant))
        except ValueError as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            hint = "each argument is one JSON literal, e.g. 5, true, '{\"a\": 1}', '\"text\"'"
            if text.startswith("-") and len(text) > 1 and not text[1].isdigit():
                hint = "no such option (see --help)"
            elif text.strip() and text.strip()[0] not in '{["':
                hint = f"strings need JSON double quotes: '{json.dumps(text)}'"
            raise click.BadParameter(
                f"argument {i}, {text!r}, is not valid JSON ({reason}); {hint}",
                ctx=ctx,
                param=param,
            ) from None
    return tuple(out)


def _attribute_filters(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> dict[str, Any]:
    try:
        return dict(attribute_filter(text) for text in value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _duration(
    ctx: click.Context | None, param: click.Parameter | None, value: str | None
) -> float | None:
    if value is None:
        return None
    try:
        return to_seconds(value, what=f"--{param.name if param else 'duration'}")
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


# -- rendering ---------------------------------------------------------------
def console(*, stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    # Piped output is not wrapped at 80 columns: ids stay whole for grep and friends.
    width = None if stream.isatty() else 200
    return Console(file=stream, width=width, soft_wrap=False, highlight=False)


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(to_jsonable(value), indent=2, ensure_ascii=False))


def show(
    value: T,
    as_json: bool,
    table: Callable[[T], Table],
    *,
    empty: str = "",
    empty_to_stderr: bool = False,
) -> None:
    """Print an answer: JSON with ``--json``; else ``empty`` if there is nothing, or the table."""
    if as_json:
        _echo_json(value)
    elif empty and not value:
        click.echo(empty, err=empty_to_stderr)
    else:
        console().print(table(value))


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _status_text(status: str) -> Text:
    return Text(str(status), style=_STATUS_STYLES.get(str(status), ""))


def history_table(events: Sequence[HistoryEvent], *, title: str | None = None) -> Table:
    """The history of a run as a table: seq, time since the start, event, name, details."""
    if title is None and events:
        title = f"started {fmt_time(events[0].created_at)} UTC"
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, header_style="bold")
    table.add_column("seq", justify="right", style="dim")
    table.add_column("time", justify="right", no_wrap=True)
    table.add_column("event", no_wrap=True)
    table.add_column("name", no_wrap=True)
    table.add_column("details", min_width=20, overflow="fold")
    start = events[0].created_at if events else None
    for event in events:
        elapsed = (event.created_at - start).total_seconds() if start else 0.0
        table.add_row(
            str(event.seq),
            f"+{elapsed:.3f}s",
            Text(event.event_type, style=_EVENT_STYLES.get(event.event_type, "")),
            event.name or "",
            summarize_attributes(event),
        )
    return table


def workflows_table(items: Sequence[WorkflowDescription]) -> Table:
    table = Table(header_style="bold")
    table.add_column("workflow id", no_wrap=True)
    table.add_column("run id", no_wrap=True, style="dim")
    table.add_column("type", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("created (UTC)", no_wrap=True)
    table.add_column("closed (UTC)", no_wrap=True)
    for d in items:
        table.add_row(
            d.workflow_id,
            d.run_id[:8],
            d.workflow_type,
            _status_text(d.status),
            fmt_time(d.created_at),
            fmt_time(d.closed_at),
        )
    return table


def description_table(d: WorkflowDescription) -> Table:
    table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    table.add_column(style="bold")
    table.add_column()
    rows: list[tuple[str, str | Text]] = [
        ("workflow id", d.workflow_id),
        ("run id", d.run_id),
        ("type", d.workflow_type),
        ("task queue", d.task_queue),
        ("status", _status_text(d.status)),
        ("created", fmt_time(d.created_at) + " UTC"),
        ("closed", fmt_time(d.closed_at) + " UTC" if d.closed_at else "-"),
    ]
    if d.closed_at:
        rows.append(("duration", f"{(d.closed_at - d.created_at).total_seconds():.3f}s"))
    rows.append(("history length", str(d.history_length)))
    if d.parent_workflow_id:
        rows.append(("parent", f"{d.parent_workflow_id} (run {d.parent_run_id})"))
    if d.search_attributes:
        rows.append(("search attributes", json.dumps(to_jsonable(d.search_attributes))))
    if d.memo:
        rows.append(("memo", json.dumps(to_jsonable(d.memo))))
    parked = getattr(d, "parked_error", None)
    if parked:
        rows.append(("parked", Text(str(parked), style="red")))
    for key, value in rows:
        table.add_row(key, value)
    return table


def failure_lines(exc: BaseException) -> list[str]:
    """An error and its cause chain, one line each."""
    lines = []
    current: BaseException | None = exc
    depth = 0
    while current is not None and depth < 20:
        label = current.type if isinstance(current, ApplicationError) else type(current).__name__
        message = current.message if isinstance(current, PerdureError) else str(current)
        prefix = "error: " if depth == 0 else "  " * depth + "caused by "
        lines.append(f"{prefix}{label}: {' '.join(message.split())}")
        current = current.cause if isinstance(current, PerdureError) else current.__cause__
        depth += 1
    return lines


@contextmanager
def _workflow_failure_exits() -> Iterator[None]:
    """``WorkflowFailedError`` prints its cause chain to stderr and exits 1."""
    try:
        yield
    except WorkflowFailedError as exc:
        for line in failure_lines(exc):
            click.echo(line, err=True)
        raise click.exceptions.Exit(1) from None


# -- the commands ------------------------------------------------------------
@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="perdure", prog_name="perdure")
def main() -> None:
    """perdure: durable execution for Python on a SQL database."""


@main.command()
@click.argument("app_ref", metavar="MODULE:APP")
@click.option(
    "--task-queue",
    "-q",
    "task_queues",
    multiple=True,
    metavar="QUEUE",
    help="Task queue to serve (repeatable). [default: the App's default queue]",
)
@_namespace_option("the App's")
@_database_url_option("Database URL. [default: the App's]")
@click.option(
    "--max-concurrent-workflows", type=click.IntRange(min=1), default=1000, show_default=True
)
@click.option(
    "--max-concurrent-activities", type=click.IntRange(min=1), default=100, show_default=True
)
@click.option("--lease-duration", default="30s", show_default=True, callback=_duration)
@click.option("--graceful-shutdown-timeout", default="10s", show_default=True, callback=_duration)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
)
@click.option(
    "--telemetry",
    is_flag=True,
    help="Emit OpenTelemetry spans and metrics to the globally configured providers "
    "(e.g. under opentelemetry-instrument). Needs: pip install 'perdure[otel]'.",
)
def worker(
    app_ref: str,
    task_queues: tuple[str, ...],
    namespace: str | None,
    database_url: str | None,
    max_concurrent_workflows: int,
    max_concurrent_activities: int,
    lease_duration: float,
    graceful_shutdown_timeout: float,
    log_level: str,
    telemetry: bool,
) -> None:
    """Run a worker for the App MODULE:APP until SIGTERM or Ctrl-C.

    \b
    perdure worker myapp.workflows:app --task-queue orders
    """
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    app = with_database(load_app(app_ref), database_url, namespace)
    registry = app._registry
    if not registry.workflows and not registry.activities:
        click.echo(f"warning: {app_ref} registers no workflows and no activities", err=True)
    queues = list(task_queues) or [app.default_task_queue]
    try:
        spans_and_metrics = Telemetry() if telemetry else None
    except ImportError as exc:
        raise CLIError(str(exc)) from exc

    async def serve(app: App) -> None:
        await app.migrate()
        task = asyncio.create_task(
            app.run_worker(
                task_queues=queues,
                max_concurrent_workflows=max_concurrent_workflows,
                max_concurrent_activities=max_concurrent_activities,
                lease_duration=lease_duration,
                graceful_shutdown_timeout=graceful_shutdown_timeout,
                telemetry=spans_and_metrics,
            )
        )
        while not app._workers and not task.done():
            await asyncio.sleep(0.02)
        if not task.done():
            click.echo(
                f"perdure worker ready: {app_ref} on {redact(app.database_url)} "
                f"(namespace {app.namespace!r}, task queues {', '.join(queues)}; "
                f"{_plural(len(registry.workflows), 'workflow')}, "
                f"{_plural(len(registry.activities), 'activity', 'activities')}). "
                "Stop with Ctrl-C or SIGTERM.",
                err=True,
            )
        await task
        click.echo("perdure worker stopped", err=True)

    run_async(app, serve)


_JSON_ARGS = {"ignore_unknown_options": True}  # so that -1 is an argument, not an option


@main.command(context_settings=_JSON_ARGS)
@click.argument("workflow_type")
@_args_json_argument
@click.option("--workflow-id", "-w", metavar="ID", help="Workflow id. [default: a random uuid]")
@click.option("--task-queue", "-q", metavar="QUEUE", help="Task queue. [default: the App's]")
@click.option("--wait", is_flag=True, help="Wait for the result and print it.")
@click.option("--timeout", callback=_duration, metavar="DURATION", help="With --wait: give up.")
@_json_option
@_database_options
def start(
    workflow_type: str,
    args: tuple[Any, ...],
    workflow_id: str | None,
    task_queue: str | None,
    wait: bool,
    timeout: float | None,
    as_json: bool,
    database: Database,
) -> None:
    """Start a workflow; each of ARGS_JSON is one JSON argument.

    \b
    perdure start order-workflow '{"id": "o-1", "qty": 2}' --workflow-id order-1
    perdure start greet '"Ada"' --app myapp:app --wait
    """
    app = database.app(must_exist=False)

    async def go(app: App) -> tuple[WorkflowHandle[Any], Any]:
        try:
            handle = await app.start_workflow(
                workflow_type, *args, workflow_id=workflow_id, task_queue=task_queue
            )
        except TypeError as exc:  # arguments that do not fit the registered workflow
            raise CLIError(message_of(exc)) from exc
        if as_json and not wait:
            _echo_json({"workflow_id": handle.workflow_id, "run_id": handle.run_id})
        elif not as_json:
            click.echo(f"workflow id: {handle.workflow_id}")
            click.echo(f"run id:      {handle.run_id}")
        if not wait:
            return handle, None
        with _workflow_failure_exits():
            return handle, await handle.result(timeout=timeout)

    handle, result = run_async(app, go)
    if wait:
        if as_json:
            _echo_json(
                {"workflow_id": handle.workflow_id, "run_id": handle.run_id, "result": result}
            )
        else:
            _echo_json(result)


@main.command()
@click.argument("workflow_id")
@_run_id_option
@click.option("--timeout", callback=_duration, metavar="DURATION", help="Give up after this long.")
@_database_options
def result(
    workflow_id: str,
    run_id: str | None,
    timeout: float | None,
    database: Database,
) -> None:
    """Wait for a workflow's result and print it as JSON.

    A run that failed, was canceled or terminated prints its error and cause
    chain to stderr and exits 1.
    """

    async def go(handle: WorkflowHandle[Any]) -> Any:
        with _workflow_failure_exits():
            return await handle.result(timeout=timeout)

    _echo_json(database.on_workflow(workflow_id, run_id, go))


@main.command("list")
@click.option(
    "--status",
    type=click.Choice([s.value for s in WorkflowStatus], case_sensitive=False),
    help="Only runs with this status.",
)
@click.option("--type", "workflow_type", metavar="TYPE", help="Only this workflow type.")
@click.option("--prefix", metavar="PREFIX", help="Only workflow ids starting with this.")
@click.option(
    "--attr",
    "attributes",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_attribute_filters,
    help="Only runs whose search attribute KEY is VALUE (JSON if it parses, else text); "
    "repeatable.",
)
@click.option(
    "--limit", type=click.IntRange(min=1), default=100, show_default=True, help="At most N."
)
@_json_option
@_database_options
def list_(
    status: str | None,
    workflow_type: str | None,
    prefix: str | None,
    attributes: dict[str, Any],
    limit: int,
    as_json: bool,
    database: Database,
) -> None:
    """List workflow runs, newest first.

    \b
    perdure list --status failed --attr customer=cus_42 --attr priority=1
    """

    async def go(app: App) -> list[WorkflowDescription]:
        return [
            d
            async for d in app.list_workflows(
                status=status.lower() if status else None,
                workflow_type=workflow_type,
                workflow_id_prefix=prefix,
                search_attributes=attributes,
                limit=limit,
            )
        ]

    items = database.run(go)
    show(items, as_json, workflows_table, empty="no workflows match", empty_to_stderr=True)


@main.command()
@click.argument("workflow_id")
@_run_id_option
@_json_option
@_database_options
def describe(
    workflow_id: str,
    run_id: str | None,
    as_json: bool,
    database: Database,
) -> None:
    """Show a workflow run: status, type, times, history length."""
    desc = database.on_workflow(workflow_id, run_id, lambda handle: handle.describe())
    show(desc, as_json, description_table)


@main.command()
@click.argument("workflow_id")
@_run_id_option
@_json_option
@_database_options
def history(
    workflow_id: str,
    run_id: str | None,
    as_json: bool,
    database: Database,
) -> None:
    """Show a run's event history.

    \b
    perdure history order-1
    perdure history order-1 --json > order-1.json   # replayable with perdure.testing.replay
    """

    async def go(app: App) -> tuple[WorkflowDescription, list[HistoryEvent]]:
        handle = app.get_handle(workflow_id, run_id=run_id)
        desc = await handle.describe()
        return desc, await app.get_handle(workflow_id, run_id=desc.run_id).history()

    desc, events = database.run(go)
    if as_json:
        click.echo(json.dumps([e.to_dict() for e in events], indent=2, ensure_ascii=False))
    else:
        title = f"{desc.workflow_id} · {desc.workflow_type} · {desc.status}\nrun {desc.run_id}"
        if events:
            title += f" · started {fmt_time(events[0].created_at)} UTC"
        console().print(history_table(events, title=title))


@main.command(context_settings=_JSON_ARGS)
@click.argument("workflow_id")
@click.argument("name")
@_args_json_argument
@_run_id_option
@_database_options
def signal(
    workflow_id: str,
    name: str,
    args: tuple[Any, ...],
    run_id: str | None,
    database: Database,
) -> None:
    """Send the signal NAME to a running workflow.

    \b
    perdure signal order-1 approval '{"approved": true}'
    """
    database.on_workflow(workflow_id, run_id, lambda handle: handle.signal(name, *args))
    click.echo(f"sent signal {name!r} to {workflow_id}")


@main.command()
@click.argument("workflow_id")
@_run_id_option
@click.option("--reason", metavar="TEXT", help="Recorded with the cancellation request.")
@_database_options
def cancel(
    workflow_id: str,
    run_id: str | None,
    reason: str | None,
    database: Database,
) -> None:
    """Ask a running workflow to cancel (it sees asyncio.CancelledError)."""
    database.on_workflow(workflow_id, run_id, lambda handle: handle.cancel(reason))
    click.echo(f"requested cancellation of {workflow_id}")


@main.command()
@click.argument("workflow_id")
@_run_id_option
@click.option("--reason", default="terminated", show_default=True, metavar="TEXT")
@_database_options
def terminate(
    workflow_id: str,
    run_id: str | None,
    reason: str,
    database: Database,
) -> None:
    """End a running workflow at once, without running its code (no cleanup)."""
    database.on_workflow(workflow_id, run_id, lambda handle: handle.terminate(reason=reason))
    click.echo(f"terminated {workflow_id}")


@main.command(context_settings=_JSON_ARGS)
@click.argument("workflow_id")
@click.argument("name")
@_args_json_argument
@_run_id_option
@_database_options
def query(
    workflow_id: str,
    name: str,
    args: tuple[Any, ...],
    run_id: str | None,
    database: Database,
) -> None:
    """Ask a workflow's query handler NAME; prints the answer as JSON.

    The answer comes from replaying the run's history with the code of
    --app, so pass the App that registers the workflow.

    \b
    perdure query order-1 status --app myapp:app
    """
    _echo_json(database.on_workflow(workflow_id, run_id, lambda handle: handle.query(name, *args)))


@main.command(context_settings=_JSON_ARGS)
@click.argument("workflow_id")
@click.argument("name")
@_args_json_argument
@_run_id_option
@click.option("--timeout", callback=_duration, metavar="DURATION", help="Give up after this long.")
@_database_options
def update(
    workflow_id: str,
    name: str,
    args: tuple[Any, ...],
    run_id: str | None,
    timeout: float | None,
    database: Database,
) -> None:
    """Run a workflow's update handler NAME (a worker must be running); prints its result.

    \b
    perdure update order-1 set-address '{"city": "Lyon"}'
    """
    answer = database.on_workflow(
        workflow_id, run_id, lambda handle: handle.update(name, *args, timeout=timeout)
    )
    _echo_json(answer)


@main.group(cls=_Group)
def db() -> None:
    """Database administration."""


@db.command()
@_database_options
def migrate(database: Database) -> None:
    """Create or upgrade perdure's schema."""
    app = database.app(must_exist=False)
    run_async(app, App.migrate)
    click.echo(f"migrated {redact(app.database_url)}")


@main.command()
@_database_options
def mcp(database: Database) -> None:
    """Serve the App's client calls as MCP tools over stdio, for AI agents.

    Start, list, describe, wait for, query, signal, update, cancel and terminate
    workflow runs. An MCP host starts it as a subprocess; stdout carries the
    protocol. Needs the MCP SDK: pip install 'perdure[mcp]'.

    \b
    perdure mcp --app myapp:app --database-url postgresql://...
    """
    _mcp = _import_extra("perdure._mcp", "mcp", needs=("mcp", "mcp_types"))
    _mcp.serve(database.app())


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8233, show_default=True, help="0: a free one."
)
@click.option("--read-only", is_flag=True, help="Show runs and schedules; allow no actions.")
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME",
    help="Also answer to this Host name (a reverse proxy's); repeatable.",
)
@_database_options
def ui(
    host: str, port: int, read_only: bool, allowed_hosts: tuple[str, ...], database: Database
) -> None:
    """Serve the web UI: runs, their event histories, schedules, and actions on them.

    Lists and filters runs; shows each run's input, outcome, what it waits on and
    its whole history; signals, queries, updates, cancels and terminates runs; starts
    workflows; pauses, unpauses and triggers schedules. Queries need --app (they
    replay the run with its code). Needs: pip install 'perdure[ui]'.

    \b
    perdure ui --app myapp:app --database-url postgresql://...
    """
    _ui = _import_extra("perdure._ui", "ui", needs=("starlette", "uvicorn", "jinja2"))
    app = database.app()

    def ready(url: str) -> None:
        click.echo(f"perdure ui: serving {redact(app.database_url)} at {url}", err=True)

    _ui.serve(
        app,
        host=host,
        port=port,
        read_only=read_only,
        allowed_hosts=list(allowed_hosts),
        on_ready=ready,
    )


@main.command()
@click.option(
    "--database-url",
    metavar="URL",
    help="Where to run it. [default: sqlite:///perdure-demo.db, wiped first]",
)
def demo(database_url: str | None) -> None:
    """Run an order workflow end to end: activities, a retry, a durable timer."""
    from perdure import _demo

    _demo.run(database_url)


if __name__ == "__main__":  # pragma: no cover
    main()


from perdure import (  # noqa: E402
    _cli_replay,  # noqa: F401 - registers `perdure replay`
    _cli_schedule,  # noqa: F401 - registers `perdure schedule`
)
