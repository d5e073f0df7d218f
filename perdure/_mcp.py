"""``perdure mcp``: the client calls of an App as MCP tools, for AI agents.

The tools act through the same ``App`` calls a program (or the CLI) makes, so an
agent can do what a user can and nothing more: start runs, list and inspect them,
wait for results, query, signal, update, cancel and terminate. The server speaks
MCP over stdio (the agent's host starts it as a subprocess) and runs no worker:
runs advance on the workers deployed for them.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations

from perdure._app import App
from perdure._client import WorkflowDescription, WorkflowStatus
from perdure._converter import to_jsonable
from perdure._errors import PerdureError, TimeoutError, WorkflowFailedError, failure_to_dict
from perdure._present import message_of

P = ParamSpec("P")
R = TypeVar("R")

# A tool call that waits (a result, an update) is bounded: an agent's call should
# return, and it can ask again.
MAX_WAIT_SECONDS = 300.0
DEFAULT_LIST_LIMIT = 50

_INSTRUCTIONS = """\
perdure runs durable workflows recorded in a SQL database. A workflow run is named by
its workflow id (yours to choose, or a random uuid) and a run id (one per run of that
id; tools take the latest run unless given run_id). Arguments and results are JSON.
start_workflow starts a run and returns at once; get_workflow_result waits for its
result up to wait_seconds and says 'running' if it is not done. Workers deployed for
the workflows run them: this server starts nothing else. Queries are answered from
the run's history with the workflow code this server was started with (--app)."""

_READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)
_WRITES = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)
_ENDS_RUNS = ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=False)


def told(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Errors a caller can act on (no such run, a rejected update, arguments that do not
    fit the workflow, a payload that is not JSON) reach the agent with their message;
    the SDK hides the text of any other exception (a database error, say)."""

    @functools.wraps(fn)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except (PerdureError, ValueError, TypeError) as exc:  # PayloadError is a TypeError
            raise ToolError(message_of(exc)) from exc

    return call


def describe_run(d: WorkflowDescription) -> dict[str, Any]:
    """A run as the tools return it: JSON values only (times as ISO 8601 text)."""
    value: dict[str, Any] = to_jsonable(d)
    return value


def _wait(seconds: float) -> float:
    if not 0 <= seconds <= MAX_WAIT_SECONDS:
        raise ValueError(f"wait_seconds must be between 0 and {MAX_WAIT_SECONDS:g}, got {seconds}")
    return seconds


def _status_filter(status: str | None) -> str | None:
    if status is None:
        return None
    if status.lower() not in {s.value for s in WorkflowStatus}:
        known = ", ".join(s.value for s in WorkflowStatus)
        raise ValueError(f"unknown status {status!r}; one of: {known}")
    return status.lower()


def build_server(app: App) -> MCPServer:
    """An MCP server whose tools act through ``app`` (its database and namespace)."""
    server: MCPServer = MCPServer(name="perdure", instructions=_INSTRUCTIONS)
    _add_reading_tools(server, app)
    _add_acting_tools(server, app)
    return server


def _add_acting_tools(server: MCPServer, app: App) -> None:
    """Tools that change runs: start, signal, update, cancel, terminate."""

    @server.tool(annotations=_WRITES)
    @told
    async def start_workflow(
        workflow_type: str,
        args: list[Any] | None = None,
        workflow_id: str | None = None,
        task_queue: str | None = None,
    ) -> dict[str, Any]:
        """Start a run of a workflow type; returns its workflow_id and run_id at once.

        args: the workflow's arguments, one JSON value each (omit for none).
        workflow_id: an id of your choosing (default: a random uuid); starting an id
        whose run is still running is an error.
        """
        handle = await app.start_workflow(
            workflow_type, *(args or []), workflow_id=workflow_id, task_queue=task_queue
        )
        return {"workflow_id": handle.workflow_id, "run_id": handle.run_id}

    @server.tool(annotations=_WRITES)
    @told
    async def signal_workflow(
        workflow_id: str, name: str, args: list[Any] | None = None, run_id: str | None = None
    ) -> dict[str, Any]:
        """Send signal NAME to a running workflow (delivered once, in order)."""
        await app.get_handle(workflow_id, run_id=run_id).signal(name, *(args or []))
        return {"signaled": name, "workflow_id": workflow_id}

    @server.tool(annotations=_WRITES)
    @told
    async def update_workflow(
        workflow_id: str,
        name: str,
        args: list[Any] | None = None,
        run_id: str | None = None,
        wait_seconds: float = 60.0,
    ) -> dict[str, Any]:
        """Call a running workflow's update handler NAME and wait (up to wait_seconds,
        at most 300) for its return: {"result": ...}. A validator may reject it."""
        handle = app.get_handle(workflow_id, run_id=run_id)
        result = await handle.update(name, *(args or []), timeout=_wait(wait_seconds))
        return {"result": to_jsonable(result)}

    @server.tool(annotations=_ENDS_RUNS)
    @told
    async def cancel_workflow(
        workflow_id: str, reason: str | None = None, run_id: str | None = None
    ) -> dict[str, Any]:
        """Ask a running workflow to cancel: it may run its compensations first."""
        await app.get_handle(workflow_id, run_id=run_id).cancel(reason)
        return {"cancel_requested": workflow_id}

    @server.tool(annotations=_ENDS_RUNS)
    @told
    async def terminate_workflow(
        workflow_id: str, reason: str = "terminated by an agent", run_id: str | None = None
    ) -> dict[str, Any]:
        """End a running workflow at once, running none of its code."""
        await app.get_handle(workflow_id, run_id=run_id).terminate(reason)
        return {"terminated": workflow_id}


def _add_reading_tools(server: MCPServer, app: App) -> None:
    """Tools that change nothing: list, describe, history, result, query."""

    @server.tool(annotations=_READ_ONLY)
    @told
    async def list_workflows(
        status: str | None = None,
        workflow_type: str | None = None,
        workflow_id_prefix: str | None = None,
        search_attributes: dict[str, Any] | None = None,
        limit: int = DEFAULT_LIST_LIMIT,
    ) -> list[dict[str, Any]]:
        """Workflow runs, newest first.

        status: running, completed, failed, canceled, terminated or continued_as_new.
        search_attributes: only runs whose search attributes hold each of these values.
        """
        wanted = _status_filter(status)
        if not 1 <= limit <= 1000:
            raise ValueError(f"limit must be between 1 and 1000, got {limit}")
        return [
            describe_run(d)
            async for d in app.list_workflows(
                status=wanted,
                workflow_type=workflow_type,
                workflow_id_prefix=workflow_id_prefix,
                search_attributes=search_attributes,
                limit=limit,
            )
        ]

    @server.tool(annotations=_READ_ONLY)
    @told
    async def describe_workflow(workflow_id: str, run_id: str | None = None) -> dict[str, Any]:
        """A run's type, status, task queue, times, parent and search attributes."""
        return describe_run(await app.get_handle(workflow_id, run_id=run_id).describe())

    @server.tool(annotations=_READ_ONLY)
    @told
    async def get_workflow_history(
        workflow_id: str, run_id: str | None = None
    ) -> list[dict[str, Any]]:
        """A run's event history, oldest first: what it did and when (each event's seq,
        event_type, name, attributes and created_at)."""
        events = await app.get_handle(workflow_id, run_id=run_id).history()
        return [e.to_dict() for e in events]

    @server.tool(annotations=_READ_ONLY)
    @told
    async def get_workflow_result(
        workflow_id: str, run_id: str | None = None, wait_seconds: float = 0.0
    ) -> dict[str, Any]:
        """A run's outcome: {"status": "completed", "result": ...}, or its status and
        error if it failed, was canceled or terminated, or {"status": "running"} if it
        did not end within wait_seconds (0 to 300; 0: do not wait)."""
        handle = app.get_handle(workflow_id, run_id=run_id)
        try:
            result = await handle.result(timeout=_wait(wait_seconds))
        except TimeoutError:
            return {"status": "running", "run_id": (await handle.describe()).run_id}
        except WorkflowFailedError as exc:
            error = failure_to_dict(exc.cause if exc.cause is not None else exc)
            return {"status": exc.status, "run_id": exc.run_id, "error": error}
        return {"status": "completed", "result": to_jsonable(result)}

    @server.tool(annotations=_READ_ONLY)
    @told
    async def query_workflow(
        workflow_id: str, name: str, args: list[Any] | None = None, run_id: str | None = None
    ) -> dict[str, Any]:
        """Ask a run's query handler NAME; returns {"answer": ...}. Queries change
        nothing."""
        answer = await app.get_handle(workflow_id, run_id=run_id).query(name, *(args or []))
        return {"answer": to_jsonable(answer)}


def serve(app: App) -> None:
    """Serve ``app``'s tools over stdio until the client closes the connection."""

    async def go() -> None:
        try:
            await build_server(app).run_stdio_async()
        finally:
            await app.close()

    asyncio.run(go())
