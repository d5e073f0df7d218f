"""The ``perdure`` command line, run as a user runs it: in subprocesses, on a SQLite file."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cli_harness import Cli, WorkerProcess, base_env, write_app_module

import perdure
import perdure.testing


def import_file(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def started_ids(stdout: str) -> tuple[str, str]:
    workflow_id = re.search(r"workflow id:\s+(\S+)", stdout)
    run_id = re.search(r"run id:\s+(\S+)", stdout)
    assert workflow_id and run_id, stdout
    return workflow_id.group(1), run_id.group(1)


def assert_clean_error(
    proc: subprocess.CompletedProcess[str], *fragments: str, code: int = 1
) -> None:
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


# -- help, version, migrate ----------------------------------------------------
COMMANDS = [
    "worker",
    "start",
    "result",
    "list",
    "describe",
    "history",
    "signal",
    "cancel",
    "terminate",
    "query",
    "update",
]


@pytest.mark.parametrize(
    ("args", "blocked", "extra"),
    [
        (("mcp",), "mcp", "mcp"),
        (("ui",), "starlette", "ui"),
        (("worker", "wfapp:app", "--telemetry"), "opentelemetry", "otel"),
    ],
)
def test_a_missing_optional_extra_says_what_to_install(
    cli: Cli, app_module: Path, tmp_path: Path, args: tuple[str, ...], blocked: str, extra: str
) -> None:
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / f"{blocked}.py").write_text(f"raise ImportError('blocked', name={blocked!r})\n")
    proc = cli(*args, PYTHONPATH=f"{blocker}:{tmp_path}")
    assert proc.returncode != 0
    assert f"pip install 'perdure[{extra}]'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_and_version(cli: Cli) -> None:
    out = cli.ok("--help")
    for command in [*COMMANDS, "db", "demo", "ui", "mcp"]:
        assert command in out
    assert "migrate" in cli.ok("db", "--help")
    assert perdure.__version__ in cli.ok("--version")


@pytest.mark.parametrize("command", [*COMMANDS, "demo", "db migrate", "ui", "mcp"])
def test_command_help(cli: Cli, command: str) -> None:
    assert f"Usage: perdure {command}" in cli.ok(*command.split(), "--help")


def test_db_migrate(cli: Cli, tmp_path: Path) -> None:
    out = cli.ok("db", "migrate")
    assert f"migrated sqlite:///{tmp_path}/perdure.db" in out
    assert (tmp_path / "perdure.db").exists()
    cli.ok("db", "migrate")  # idempotent
    other = tmp_path / "other.db"
    assert "other.db" in cli.ok("db", "migrate", "--database-url", f"sqlite:///{other}")
    assert other.exists()


def test_database_url_precedence(cli: Cli, tmp_path: Path) -> None:
    write_app_module(
        tmp_path, "pinned", f"from perdure import App\napp = App('sqlite:///{tmp_path}/app.db')\n"
    )
    # PERDURE_DATABASE_URL beats the --app App's URL; --database-url beats both
    assert "perdure.db" in cli.ok("db", "migrate", "--app", "pinned:app")
    assert "flag.db" in cli.ok(
        "db", "migrate", "--app", "pinned:app", "--database-url", f"sqlite:///{tmp_path}/flag.db"
    )
    env_less = Cli(cwd=tmp_path, env=base_env())
    assert "app.db" in env_less.ok("db", "migrate", "--app", "pinned:app")
    assert "sqlite:///perdure.db" in env_less.ok("db", "migrate")


# -- the main path: start, worker, result, list, describe, history, replay ----------
def test_start_run_inspect_and_replay(
    cli: Cli, worker: WorkerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = cli.ok("start", "hello", '"Ada"', "--workflow-id", "hello-1", "--app", "wfapp:app")
    workflow_id, run_id = started_ids(out)
    assert workflow_id == "hello-1"

    assert json.loads(cli.ok("result", "hello-1", "--timeout", "30s")) == "Hello, Ada!"
    assert json.loads(cli.ok("result", "hello-1", "--run-id", run_id)) == "Hello, Ada!"

    # several JSON arguments of different kinds; no --app: the type is taken on trust
    out = cli.ok("start", "add", "2", "3", '{"note": "x"}', "-w", "add-1", "--wait")
    assert json.loads(out.split("run id:")[1].split("\n", 1)[1]) == {"sum": 5, "note": "x"}

    table = cli.ok("list")
    for text in ("hello-1", "add-1", run_id[:8], "hello", "completed"):
        assert text in table
    listed = json.loads(cli.ok("list", "--json"))
    assert {d["workflow_id"] for d in listed} == {"hello-1", "add-1"}
    assert [d["workflow_id"] for d in json.loads(cli.ok("list", "--json", "--type", "add"))] == [
        "add-1"
    ]
    assert json.loads(cli.ok("list", "--json", "--prefix", "hel"))[0]["workflow_id"] == "hello-1"
    assert json.loads(cli.ok("list", "--json", "--status", "running")) == []
    assert len(json.loads(cli.ok("list", "--json", "--limit", "1"))) == 1

    described = json.loads(cli.ok("describe", "hello-1", "--json"))
    assert described["status"] == "completed"
    assert described["run_id"] == run_id
    assert described["workflow_type"] == "hello"
    assert described["history_length"] == 4
    text = cli.ok("describe", "hello-1")
    assert "completed" in text and run_id in text

    table = cli.ok("history", "hello-1")
    for text in ("workflow_started", "activity_scheduled", "greet", "workflow_completed"):
        assert text in table
    exported = tmp_path / "hello-1.json"
    exported.write_text(cli.ok("history", "hello-1", "--json"))
    events = json.loads(exported.read_text())
    assert [e["event_type"] for e in events] == [
        "workflow_started",
        "activity_scheduled",
        "activity_completed",
        "workflow_completed",
    ]

    # the exported file replays against the same code, and not against changed code
    monkeypatch.setenv("PERDURE_DATABASE_URL", f"sqlite:///{tmp_path}/replay.db")
    same = import_file(tmp_path / "wfapp.py", "wfapp_replay")
    asyncio.run(perdure.testing.replay(same.app, exported))
    changed_source = (
        (tmp_path / "wfapp.py")
        .read_text()
        .replace(
            "return await ctx.activity(greet, name)",
            "await ctx.sleep(1)\n    return await ctx.activity(greet, name)",
        )
    )
    changed = import_file(write_app_module(tmp_path, "wfapp_changed", changed_source), "changed")
    with pytest.raises(perdure.NonDeterminismError):
        asyncio.run(perdure.testing.replay(changed.app, exported))


def test_start_wait_prints_the_result(cli: Cli, worker: WorkerProcess) -> None:
    out = cli.ok("start", "hello", '"Bob"', "--app", "wfapp:app", "--wait", "--timeout", "30s")
    assert out.strip().endswith('"Hello, Bob!"')
    data = json.loads(cli.ok("start", "hello", '"Cy"', "--wait", "--json", "-w", "h-json"))
    assert data["workflow_id"] == "h-json" and data["result"] == "Hello, Cy!"


def test_failed_workflow_result_prints_the_cause_chain(cli: Cli, worker: WorkerProcess) -> None:
    cli.ok("start", "boom", '"disk on fire"', "-w", "boom-1", "--app", "wfapp:app")
    proc = cli("result", "boom-1", "--timeout", "30s")
    assert_clean_error(proc, "WorkflowFailedError", "ActivityError", "ValueError: disk on fire")
    assert proc.stdout == ""
    assert json.loads(cli.ok("describe", "boom-1", "--json"))["status"] == "failed"
    assert "workflow_failed" in cli.ok("history", "boom-1")
    # --wait reports the failure the same way
    proc = cli("start", "boom", '"again"', "--wait", "--timeout", "30s")
    assert_clean_error(proc, "ValueError: again")


def test_signal_reaches_a_waiting_workflow(cli: Cli, worker: WorkerProcess) -> None:
    cli.ok("start", "waiter", '"approval"', "-w", "wait-1", "--app", "wfapp:app")
    out = cli.ok("signal", "wait-1", "approval", '{"approved": true, "by": "ann"}')
    assert "approval" in out
    assert json.loads(cli.ok("result", "wait-1", "--timeout", "30s")) == {
        "approved": True,
        "by": "ann",
    }
    events = json.loads(cli.ok("history", "wait-1", "--json"))
    assert "signal_received" in [e["event_type"] for e in events]
    # a signal to a closed workflow is an error, not a traceback
    assert_clean_error(cli("signal", "wait-1", "approval"), "error: no running workflow")


def test_cancel_cancels_a_running_workflow(cli: Cli, worker: WorkerProcess) -> None:
    cli.ok("start", "waiter", '"never"', "-w", "cancel-1")
    out = cli.ok("cancel", "cancel-1", "--reason", "testing")
    assert "cancel-1" in out
    proc = cli("result", "cancel-1", "--timeout", "30s")
    assert_clean_error(proc, "canceled")
    assert json.loads(cli.ok("describe", "cancel-1", "--json"))["status"] == "canceled"
    types = [e["event_type"] for e in json.loads(cli.ok("history", "cancel-1", "--json"))]
    assert types[-2:] == ["cancel_requested", "workflow_canceled"] or (
        "cancel_requested" in types and types[-1] == "workflow_canceled"
    )


def test_worker_on_another_database_and_namespace(
    cli: Cli, app_module: Path, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/elsewhere.db"
    worker = WorkerProcess(
        cli,
        "wfapp:app",
        "--database-url",
        url,
        "--namespace",
        "staging",
        "-q",
        "default",
        "-q",
        "other",
        "--max-concurrent-workflows",
        "5",
        "--max-concurrent-activities",
        "5",
        "--lease-duration",
        "10s",
        log=tmp_path / "staging-worker.log",
    )
    try:
        worker.wait_ready()
        assert "staging" in worker.output() and "other" in worker.output()
        where = ["--database-url", url, "--namespace", "staging"]
        cli.ok("start", "hello", '"Stan"', "-w", "ns-1", "-q", "other", *where)
        assert json.loads(cli.ok("result", "ns-1", "--timeout", "30s", *where)) == "Hello, Stan!"
        assert json.loads(cli.ok("list", "--json", "--database-url", url)) == []  # namespace
        assert_clean_error(cli("describe", "ns-1", "--database-url", url), "ns-1")
    finally:
        code = worker.stop()
    assert code == 0, worker.output()


@pytest.mark.skipif(
    not hasattr(perdure.WorkflowHandle, "terminate"), reason="the engine has no terminate yet"
)
def test_list_by_search_attributes(cli: Cli, worker: WorkerProcess) -> None:
    for workflow_id, attributes in [
        ("t-1", {"customer": "cus_42", "priority": 1}),
        ("t-2", {"customer": "cus_42", "priority": 2}),
        ("t-3", {"customer": "42", "priority": 1}),
    ]:
        cli.ok("start", "tagged", json.dumps(attributes), "-w", workflow_id, "--wait")

    def listed(*filters: str) -> list[str]:
        args = [a for f in filters for a in ("--attr", f)]
        return [d["workflow_id"] for d in json.loads(cli.ok("list", "--json", *args))]

    assert listed("customer=cus_42") == ["t-2", "t-1"]
    assert listed("customer=cus_42", "priority=1") == ["t-1"]
    assert listed('customer="42"') == ["t-3"]  # JSON: the string "42"
    assert listed("customer=42") == []  # JSON: the number 42
    proc = cli("list", "--attr", "customer")
    assert proc.returncode == 2 and "KEY=VALUE" in proc.stderr


def test_terminate(cli: Cli, worker: WorkerProcess) -> None:
    cli.ok("start", "waiter", '"never"', "-w", "term-1", "--app", "wfapp:app")
    assert "term-1" in cli.ok("terminate", "term-1", "--reason", "obsolete")
    assert_clean_error(cli("result", "term-1", "--timeout", "30s"), "TerminatedError", "obsolete")
    assert json.loads(cli.ok("describe", "term-1", "--json"))["status"] == "terminated"
    assert_clean_error(cli("terminate", "term-1"), "error:", "term-1")  # not running any more


@pytest.mark.skipif(
    not hasattr(perdure.WorkflowHandle, "update"), reason="the engine has no query/update yet"
)
def test_query_and_update(cli: Cli, worker: WorkerProcess) -> None:
    cli.ok("start", "counter", "10", "-w", "count-1", "--app", "wfapp:app")
    assert json.loads(cli.ok("update", "count-1", "add", "5", "--timeout", "30s")) == 15
    assert_clean_error(cli("update", "count-1", "add", "-1"), "error:", "n must be positive")
    assert_clean_error(cli("update", "count-1", "nope"), "error:", "nope")
    assert json.loads(cli.ok("query", "count-1", "value", "--app", "wfapp:app")) == 15
    assert_clean_error(cli("query", "count-1", "nope", "--app", "wfapp:app"), "error:", "nope")
    cli.ok("signal", "count-1", "stop")
    assert json.loads(cli.ok("result", "count-1", "--timeout", "30s")) == 15
    # a closed run still answers queries, by replay
    assert json.loads(cli.ok("query", "count-1", "value", "--app", "wfapp:app")) == 15


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_worker_stops_gracefully(cli: Cli, worker: WorkerProcess, sig: int) -> None:
    cli.ok("start", "hello", '"Eve"', "--wait", "--timeout", "30s")
    assert worker.stop(sig) == 0, worker.output()
    assert "perdure worker stopped" in worker.output()
    assert "Traceback" not in worker.output()


# -- errors: one line on stderr, a non-zero exit, never a traceback -----------------
def test_malformed_json_argument_exits_2(cli: Cli, app_module: Path) -> None:
    cli.ok("db", "migrate")
    proc = cli("start", "hello", "Ada", "--app", "wfapp:app")
    assert_clean_error(proc, "argument 1", "'Ada'", "not valid JSON", "'\"Ada\"'", code=2)
    proc = cli("start", "add", "1", "{bad", "{}")
    assert_clean_error(proc, "argument 2", "'{bad'", "not valid JSON", code=2)
    proc = cli("signal", "wf", "go", "NaN")
    assert_clean_error(proc, "'NaN'", code=2)
    assert json.loads(cli.ok("list", "--json")) == []  # nothing was started


def test_unknown_workflow_type_is_rejected_and_nothing_written(cli: Cli, app_module: Path) -> None:
    cli.ok("db", "migrate")
    proc = cli("start", "no-such-workflow", "--app", "wfapp:app")
    assert_clean_error(proc, "error: unknown workflow type 'no-such-workflow'", "hello")
    # wrong number of arguments for a known type is caught before anything is written too
    proc = cli("start", "hello", '"a"', '"b"', "--app", "wfapp:app")
    assert_clean_error(proc, "error: workflow 'hello' called with 2 argument(s)")
    assert "unexpected" not in proc.stderr
    assert json.loads(cli.ok("list", "--json")) == []


def test_unknown_workflow_id(cli: Cli) -> None:
    cli.ok("db", "migrate")
    for command in ("describe", "history", "result", "cancel"):
        proc = cli(command, "no-such-id")
        assert_clean_error(proc, "error:", "'no-such-id'")
        assert len(proc.stderr.strip().splitlines()) == 1
    assert_clean_error(cli("signal", "no-such-id", "go"), "error:", "'no-such-id'")


def test_clean_errors_for_bad_input(cli: Cli, tmp_path: Path) -> None:
    assert_clean_error(
        cli("list", "--database-url", "bogus://x"), "error: unsupported database URL"
    )
    # reading commands do not create a database at a mistyped path
    missing = tmp_path / "missing.db"
    assert_clean_error(cli("list", "--database-url", f"sqlite:///{missing}"), "no perdure database")
    assert not missing.exists()
    assert_clean_error(cli("result", "x", "--timeout", "soon"), "'soon'", code=2)
    assert_clean_error(cli("worker", "wfapp:app", "--lease-duration", "1 parsec"), code=2)
    assert_clean_error(cli("worker", "no_such_module:app"), "no_such_module")
    write_app_module(tmp_path, "notapp", "app = 42\n")
    assert_clean_error(cli("worker", "notapp:app"), "not a perdure.App")
    assert_clean_error(cli("worker", "notapp:missing"), "no attribute 'missing'")
    assert_clean_error(cli("start", "x", "--app", "not a module"), "package.module:app")
    cli.ok("db", "migrate")
    assert_clean_error(cli("result", "nothing-here", "--timeout", "1s"), "error:")


def test_result_timeout_is_a_clean_error(cli: Cli) -> None:
    cli.ok("start", "waiter", '"x"', "-w", "no-worker-1")  # no worker: it stays running
    proc = cli("result", "no-worker-1", "--timeout", "200ms")
    assert_clean_error(proc, "error:", "did not finish")
    assert json.loads(cli.ok("describe", "no-worker-1", "--json"))["status"] == "running"


# -- the demo ---------------------------------------------------------------------
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    cli = Cli(cwd=tmp_path, env=base_env())
    out = cli.ok("demo")
    for text in (
        "reserved 2 x book",
        "charge_payment attempt 1",
        "attempt 2",
        "wait-for-warehouse",
        "shipped",
        '"status": "shipped"',
        "workflow_completed",
        "pip install 'perdure[ui]' && perdure ui --database-url",
    ):
        assert text in out, out
    assert (tmp_path / "perdure-demo.db").exists()
    # it wipes its file: a second run starts clean and still works
    cli.ok("demo")
    url = f"sqlite:///{tmp_path}/perdure-demo.db"
    listed = json.loads(cli.ok("list", "--json", "--database-url", url))
    assert [d["status"] for d in listed] == ["completed"]


def test_demo_on_a_given_database(cli: Cli, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/mine.db"
    out = cli.ok("demo", "--database-url", url)
    match = re.search(r"started workflow (\S+)", out)
    assert match, out
    workflow_id = match.group(1)
    assert json.loads(cli.ok("result", workflow_id, "--database-url", url))["status"] == "shipped"
    assert "timer_fired" in cli.ok("history", workflow_id, "--database-url", url)


def test_module_entry_point_is_the_same_cli() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "perdure", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=base_env(),
    )
    assert proc.returncode == 0 and "Usage: perdure" in proc.stdout


# -- the same commands on PostgreSQL (skipped without PostgreSQL binaries) ----------
def test_cli_on_postgres(postgres: Any, tmp_path: Path, app_module: Path) -> None:
    # ``postgres`` is tests/conftest.py's fixture: a pgserver.Databases
    url = postgres.url_for(postgres.create())
    cli = Cli(cwd=tmp_path, env=base_env(PERDURE_DATABASE_URL=url))
    assert "migrated postgresql://" in cli.ok("db", "migrate")
    worker = WorkerProcess(cli, "wfapp:app", log=tmp_path / "pg-worker.log")
    try:
        worker.wait_ready()
        out = cli.ok("start", "hello", '"Pia"', "-w", "pg-1", "--app", "wfapp:app", "--wait")
        assert out.strip().endswith('"Hello, Pia!"')
        cli.ok("start", "waiter", '"go"', "-w", "pg-2")
        cli.ok("signal", "pg-2", "go", "[1, 2]")
        assert json.loads(cli.ok("result", "pg-2", "--timeout", "30s")) == [1, 2]
        assert {d["workflow_id"] for d in json.loads(cli.ok("list", "--json"))} == {"pg-1", "pg-2"}
        assert "workflow_completed" in cli.ok("history", "pg-1")
        assert_clean_error(cli("describe", "nope"), "error: no workflow with id 'nope'")
    finally:
        code = worker.stop()
    assert code == 0, worker.output()
