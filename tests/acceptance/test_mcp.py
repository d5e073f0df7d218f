"""``perdure mcp`` driven by a real MCP client (the official SDK) over stdio.

The server is the installed command in a subprocess, as an agent's host starts it; a
``perdure worker`` subprocess runs the workflows it starts, on the same database: a
SQLite file, and a PostgreSQL database (skipped without PostgreSQL binaries).
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from cli_harness import Cli
from mcp import ClientSession, StdioServerParameters, stdio_client

pytestmark = pytest.mark.timeout(120)

TOOLS = {
    "start_workflow",
    "list_workflows",
    "describe_workflow",
    "get_workflow_history",
    "get_workflow_result",
    "query_workflow",
    "signal_workflow",
    "update_workflow",
    "cancel_workflow",
    "terminate_workflow",
}
LIST_TOOLS = {"list_workflows", "get_workflow_history"}


@asynccontextmanager
async def mcp_session(cli: Cli, *args: str) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "perdure", "mcp", *args],
        env=dict(cli.env),
        cwd=str(cli.cwd),
    )
    with (cli.cwd / "mcp-server.log").open("w") as errlog:
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            yield session


async def call(session: ClientSession, tool: str, **arguments: Any) -> Any:
    """The tool's answer (its structured content); fails the test on a tool error."""
    result = await session.call_tool(tool, arguments)
    assert not result.is_error, f"{tool} failed: {result.content}"
    content = result.structured_content
    assert content is not None, f"{tool} returned no structured content: {result.content}"
    # A tool that returns a list has it wrapped as {"result": [...]}.
    return content["result"] if tool in LIST_TOOLS else content


async def error_of(session: ClientSession, tool: str, **arguments: Any) -> str:
    """The message of a call that must fail."""
    result = await session.call_tool(tool, arguments)
    assert result.is_error, f"{tool} should have failed: {result.structured_content}"
    return " ".join(getattr(block, "text", "") for block in result.content)


async def test_an_agent_starts_a_run_and_reads_it_back(served_db: Cli) -> None:
    async with mcp_session(served_db, "--app", "wfapp:app") as session:
        tools = {tool.name for tool in (await session.list_tools()).tools}
        assert tools >= TOOLS

        started = await call(
            session, "start_workflow", workflow_type="hello", args=["Ada"], workflow_id="greet-ada"
        )
        assert started["workflow_id"] == "greet-ada"
        outcome = await call(
            session, "get_workflow_result", workflow_id="greet-ada", wait_seconds=60
        )
        assert outcome == {"status": "completed", "result": "Hello, Ada!"}

        run = await call(session, "describe_workflow", workflow_id="greet-ada")
        assert run["run_id"] == started["run_id"]
        assert (run["workflow_type"], run["status"]) == ("hello", "completed")

        listed = await call(session, "list_workflows", workflow_type="hello")
        assert [r["workflow_id"] for r in listed] == ["greet-ada"]

        await call(
            session,
            "start_workflow",
            workflow_type="tagged",
            args=[{"customer": "cus_42"}],
            workflow_id="tag-1",
        )
        await call(session, "get_workflow_result", workflow_id="tag-1", wait_seconds=60)
        for customer, expected in [("cus_42", ["tag-1"]), ("cus_7", [])]:
            listed = await call(session, "list_workflows", search_attributes={"customer": customer})
            assert [r["workflow_id"] for r in listed] == expected
        assert await call(session, "list_workflows", status="running") == []

        events = await call(session, "get_workflow_history", workflow_id="greet-ada")
        kinds = [e["event_type"] for e in events]
        assert kinds[0] == "workflow_started" and kinds[-1] == "workflow_completed"
        assert "activity_completed" in kinds
        assert json.dumps(events)  # plain JSON all the way down


async def test_an_agent_queries_updates_signals_and_ends_runs(served_db: Cli) -> None:
    async with mcp_session(served_db, "--app", "wfapp:app") as session:
        await call(session, "start_workflow", workflow_type="counter", args=[5], workflow_id="c-1")
        assert await call(session, "update_workflow", workflow_id="c-1", name="add", args=[2]) == {
            "result": 7
        }
        rejected = await error_of(
            session, "update_workflow", workflow_id="c-1", name="add", args=[-1]
        )
        assert "n must be positive" in rejected
        assert await call(session, "query_workflow", workflow_id="c-1", name="value") == {
            "answer": 7
        }
        pending = await call(session, "get_workflow_result", workflow_id="c-1")
        assert pending["status"] == "running"

        await call(session, "signal_workflow", workflow_id="c-1", name="stop")
        outcome = await call(session, "get_workflow_result", workflow_id="c-1", wait_seconds=60)
        assert outcome == {"status": "completed", "result": 7}

        await call(
            session, "start_workflow", workflow_type="waiter", args=["go"], workflow_id="w-1"
        )
        await call(session, "terminate_workflow", workflow_id="w-1", reason="not needed")
        ended = await call(session, "get_workflow_result", workflow_id="w-1", wait_seconds=60)
        assert ended["status"] == "terminated"
        assert "not needed" in json.dumps(ended["error"])

        await call(
            session, "start_workflow", workflow_type="waiter", args=["go"], workflow_id="w-2"
        )
        await call(session, "cancel_workflow", workflow_id="w-2")
        ended = await call(session, "get_workflow_result", workflow_id="w-2", wait_seconds=60)
        assert ended["status"] == "canceled"


async def test_bad_calls_get_clear_errors_and_the_server_goes_on(served_db: Cli) -> None:
    async with mcp_session(served_db, "--app", "wfapp:app") as session:
        missing = await error_of(session, "describe_workflow", workflow_id="x'; DROP TABLE t;--")
        assert "no workflow" in missing
        assert "unknown status" in await error_of(session, "list_workflows", status="sleeping")
        assert "wait_seconds" in await error_of(
            session, "get_workflow_result", workflow_id="x", wait_seconds=10_000
        )
        # A run that waits for a signal stays running while its id is reused (a run that
        # has completed may be started again under the same id, as in Temporal).
        await call(session, "start_workflow", workflow_type="waiter", args=["go"], workflow_id="b")
        taken = await error_of(
            session, "start_workflow", workflow_type="waiter", args=["go"], workflow_id="b"
        )
        assert "already" in taken
        wrong = await error_of(
            session, "start_workflow", workflow_type="hello", args=[1, 2, 3], workflow_id="b2"
        )
        assert "called with 3 argument(s)" in wrong
        unknown = await error_of(session, "start_workflow", workflow_type="nope", workflow_id="n")
        assert "unknown workflow type 'nope'" in unknown
        # Still serving, and nothing was lost: the first run completes.
        await call(session, "signal_workflow", workflow_id="b", name="go", args=["Bo"])
        outcome = await call(session, "get_workflow_result", workflow_id="b", wait_seconds=60)
        assert outcome == {"status": "completed", "result": "Bo"}
