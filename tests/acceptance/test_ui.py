"""``perdure ui``: the installed command in a subprocess, a ``perdure worker`` subprocess
running the workflows, on a SQLite file and on PostgreSQL; pages driven by a real
browser (Debian's chromium through Playwright), and bad requests sent over plain HTTP.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cli_harness import TIMEOUT, Cli, UiProcess, write_app_module

try:
    from playwright.async_api import expect
except ImportError:  # the browser tests skip (or fail under CI=true) through ``page``
    pass

if TYPE_CHECKING:
    from playwright.async_api import Page

pytestmark = pytest.mark.timeout(180)

# wfapp's workflows, and one with a long history (its page is paged).
UI_APP = """
from perdure import WorkflowContext
from wfapp import app


@app.workflow(name="ticker")
async def ticker(ctx: WorkflowContext, n: int) -> int:
    for _ in range(n):
        await ctx.sleep("1ms")
    return n
"""


@pytest.fixture
def ui(served_db: Cli, tmp_path: Path) -> Iterator[UiProcess]:
    """``perdure ui --app uiapp:app`` on the database a worker serves."""
    server = UiProcess(served_db, "--app", "uiapp:app", log=tmp_path / "ui.log")
    yield server
    assert server.stop() == 0, server.log.read_text()
    assert "Traceback" not in server.log.read_text()


@pytest.fixture
def app_ref(app_module: Path) -> str:
    """The App the worker and the UI import: wfapp's, with ``ticker``."""
    write_app_module(app_module.parent, "uiapp", UI_APP)
    return "uiapp:app"


# -- plain HTTP --------------------------------------------------------------
class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirects)


def http(
    url: str, form: dict[str, str] | None = None, **headers: str
) -> tuple[int, str, dict[str, str]]:
    """(status, body, headers) of a GET, or of a POST of ``form`` (urlencoded)."""
    data = None if form is None else urllib.parse.urlencode(form).encode()
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with _opener.open(request, timeout=TIMEOUT) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def error_text(body: str) -> str:
    found = re.search(r'<p class="error" role="alert">(.*?)</p>', body, re.S)
    assert found, body
    return html.unescape(found.group(1))


def run_status(ui: UiProcess, workflow_id: str) -> dict[str, Any]:
    status, body, _ = http(f"{ui.url}/workflow/result?id={urllib.parse.quote(workflow_id)}")
    assert status == 200, body
    value: dict[str, Any] = json.loads(body)
    return value


def wait_status(ui: UiProcess, workflow_id: str, wanted: str) -> dict[str, Any]:
    deadline = time.monotonic() + TIMEOUT
    while (outcome := run_status(ui, workflow_id))["status"] != wanted:
        assert time.monotonic() < deadline, f"{workflow_id}: {outcome}"
        time.sleep(0.05)
    return outcome


def test_bad_requests_get_clear_errors_and_change_nothing(ui: UiProcess) -> None:
    start = f"{ui.url}/start"
    status, body, headers = http(
        start, {"workflow_type": "waiter", "args": '["go"]', "workflow_id": "w"}
    )
    assert status == 303 and headers["location"].startswith("/workflow?id=w&run=")

    sql = "x'; DROP TABLE perdure_runs;--"
    status, body, _ = http(f"{ui.url}/workflow?id={urllib.parse.quote(sql)}")
    assert status == 404 and "no workflow with id" in error_text(body)
    status, body, _ = http(f"{ui.url}/workflows?status=sleeping")
    assert status == 400 and "unknown status 'sleeping'" in error_text(body)
    status, body, _ = http(f"{ui.url}/workflows?limit=lots")
    assert status == 400 and "limit must be a whole number" in error_text(body)

    for form, message in [
        ({"workflow_type": "hello", "args": "Ada"}, "arguments are not valid JSON"),
        ({"workflow_type": "hello", "args": '{"name": "Ada"}'}, "must be a JSON array"),
        ({"workflow_type": "hello", "args": "[1, 2, 3]"}, "called with 3 argument(s)"),
        ({"workflow_type": "nope"}, "unknown workflow type 'nope'"),
        ({"workflow_type": "waiter", "args": '["go"]', "workflow_id": "w"}, "already running"),
        ({"workflow_type": ""}, "workflow type is required"),
    ]:
        status, body, _ = http(start, form)
        assert status == 400, (form, body)
        assert message in error_text(body), form

    act = f"{ui.url}/workflow/act"
    status, body, _ = http(act, {"action": "signal", "id": "nobody", "name": "go"})
    assert status == 404 and "no running workflow with id 'nobody'" in error_text(body)
    status, body, _ = http(act, {"action": "explode", "id": "w"})
    assert status == 400 and "unknown action 'explode'" in error_text(body)
    status, body, _ = http(act, {"action": "signal", "id": "w", "name": "go", "args": "[1,"})
    assert status == 400 and "not valid JSON" in error_text(body)
    status, _, _ = http(act, {"action": "signal", "id": "w", "args": "x" * 1_100_000})
    assert status == 413

    # Another site open in the same browser cannot act through the UI.
    terminate = {"action": "terminate", "id": "w"}
    status, body, _ = http(act, terminate, **{"Sec-Fetch-Site": "cross-site"})
    assert status == 403 and "cross-site request refused" in error_text(body)
    status, body, _ = http(act, terminate, Origin="http://evil.example")
    assert status == 403
    status, body, _ = http(f"{ui.url}/workflows", Host="evil.example")  # DNS rebinding
    assert status == 400
    assert run_status(ui, "w") == {"status": "running"}

    # Ids, names and payloads are shown as text, never as markup.
    evil = '<script>alert("id")</script>'
    status, _, headers = http(
        start, {"workflow_type": "hello", "args": json.dumps([evil]), "workflow_id": evil}
    )
    assert status == 303
    assert wait_status(ui, evil, "completed")["result"] == f"Hello, {evil}!"
    status, body, _ = http(f"{ui.url}{headers['location']}")
    assert status == 200 and "<script>" not in body
    assert "&lt;script&gt;alert(&#34;id&#34;)&lt;/script&gt;" in body

    # Nothing was lost: the first run still takes its signal and completes.
    status, _, _ = http(act, {"action": "signal", "id": "w", "name": "go", "args": '["fine"]'})
    assert status == 303
    assert wait_status(ui, "w", "completed") == {"status": "completed", "result": "fine"}

    # The run page lists the runs of exactly its id: a reused id has two, "w-2" is another.
    for workflow_id in ("w", "w-2"):
        form = {"workflow_type": "hello", "args": '["again"]', "workflow_id": workflow_id}
        assert http(start, form)[0] == 303
    status, body, _ = http(f"{ui.url}/workflow?id=w")
    assert status == 200 and "Runs of this workflow id" in body
    runs_table = body.split("Runs of this workflow id")[1].split("</table>")[0]
    assert runs_table.count("<tr") == 3  # the header and two runs
    assert "w-2" not in runs_table


def test_a_long_history_is_paged(ui: UiProcess) -> None:
    status, _, headers = http(
        f"{ui.url}/start", {"workflow_type": "ticker", "args": "[300]", "workflow_id": "t"}
    )
    assert status == 303
    run_id = urllib.parse.parse_qs(urllib.parse.urlsplit(headers["location"]).query)["run"][0]
    wait_status(ui, "t", "completed")
    status, body, _ = http(f"{ui.url}/workflow?id=t")
    assert status == 200
    assert '<dd class="mono" title="the OpenTelemetry trace' in body
    assert uuid.UUID(run_id).hex in body  # the trace id of the run's spans
    assert body.count('<td class="event">') == 500
    assert "events 1 to 500 of 602" in body
    status, body, _ = http(f"{ui.url}/workflow?id=t&page=2")
    assert body.count('<td class="event">') == 102
    assert "workflow_completed" in body and "events 501 to 602 of 602" in body


def test_runs_are_filtered_by_a_search_attribute(ui: UiProcess) -> None:
    for workflow_id, customer in [("a-1", "cus_42"), ("a-2", "cus_7")]:
        form = {
            "workflow_type": "tagged",
            "args": json.dumps([{"customer": customer}]),
            "workflow_id": workflow_id,
        }
        assert http(f"{ui.url}/start", form)[0] == 303
        wait_status(ui, workflow_id, "completed")
    query = urllib.parse.urlencode({"attr": "customer=cus_42"})
    status, body, _ = http(f"{ui.url}/workflows?{query}")
    assert status == 200 and ">a-1</a>" in body and ">a-2</a>" not in body
    assert 'value="customer=cus_42"' in body  # the filter stays in its field
    status, body, _ = http(f"{ui.url}/workflows?attr=customer")
    assert status == 400 and "KEY=VALUE" in error_text(body)


def test_read_only_shows_and_refuses_actions(served_db: Cli, tmp_path: Path) -> None:
    served_db.ok("start", "waiter", '"go"', "-w", "ro-1")
    server = UiProcess(served_db, "--read-only", log=tmp_path / "ui-ro.log")
    try:
        status, body, _ = http(f"{server.url}/workflow?id=ro-1")
        assert status == 200 and "ro-1" in body and "read-only" in body
        assert 'action="/workflow/act"' not in body
        status, body, _ = http(f"{server.url}/workflow/act", {"action": "terminate", "id": "ro-1"})
        assert status == 403 and "--read-only" in error_text(body)
        status, _, _ = http(f"{server.url}/start", {"workflow_type": "waiter", "args": "[]"})
        assert status == 403
    finally:
        assert server.stop() == 0


# -- a real browser ----------------------------------------------------------
async def reload_until(page: Page, selector: str, text: str, *, exact: bool = True) -> None:
    """Reload until ``selector`` shows ``text`` (or, not ``exact``, text containing it):
    a worker advances the run meanwhile."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        shown = (await page.locator(selector).inner_text()).strip()
        if shown == text or (not exact and text in shown):
            return
        assert time.monotonic() < deadline, shown
        await asyncio.sleep(0.1)
        await page.reload()


async def test_a_run_is_started_signaled_and_read_in_the_browser(ui: UiProcess, page: Page) -> None:
    await page.goto(ui.url)
    await expect(page.locator(".empty")).to_contain_text("No workflow runs")
    await page.get_by_role("link", name="Start a workflow").click()
    await page.get_by_label("Workflow type").fill("waiter")
    await page.get_by_label("Arguments").fill('["approve"]')
    await page.get_by_label("Workflow id").fill("order 7/é")
    await page.get_by_role("button", name="Start").click()

    await expect(page.locator(".notice")).to_have_text("Workflow started.")
    await expect(page.locator("h1")).to_contain_text("order 7/é")
    await expect(page.locator("#run-status")).to_have_text("running")
    # Once a worker has taken it up, the signal's timeout is a timer it waits on.
    await reload_until(page, "main", "Waiting on", exact=False)
    await expect(page.locator("#pending")).to_contain_text("timer #1, fires")

    signal = page.locator("#signal-form")
    await signal.get_by_label("Signal").fill("approve")
    await signal.get_by_label("args").fill('[{"by": "Ada"}]')
    await signal.get_by_role("button", name="Send").click()
    await expect(page.locator(".notice")).to_have_text("Signal sent.")
    await reload_until(page, "#run-status", "completed")
    await expect(page.locator("#run-result")).to_contain_text('"by": "Ada"')
    await expect(page.locator("#history")).to_contain_text("workflow_started")
    await expect(page.locator("#history")).to_contain_text("signal_received")
    await page.locator("#history details summary").last.click()  # the completion's attributes
    await expect(page.locator("#history details pre").last).to_contain_text('"result"')

    # The list, filtered, leads back to the run.
    await page.get_by_role("link", name="Workflows").click()
    await page.get_by_label("Status").select_option("completed")
    await page.get_by_role("button", name="Filter").click()
    await expect(page.locator("table.runs tbody tr")).to_have_count(1)
    await page.get_by_role("link", name="order 7/é").click()
    await expect(page.locator("#run-status")).to_have_text("completed")


async def test_query_update_and_terminate_in_the_browser(
    ui: UiProcess, served_db: Cli, page: Page
) -> None:
    served_db.ok("start", "counter", "5", "-w", "count-1")
    await page.goto(f"{ui.url}/workflow?id=count-1")
    # (form, its fields, the answer shown: exactly, or a message containing it)
    for form, fields, answer in [
        ("query", {"Query": "value", "args": ""}, "5"),
        ("query", {"Query": "nope", "args": ""}, re.compile("nope")),  # no such query
        ("update", {"Update": "add", "args": "[2]"}, "7"),
        ("update", {"Update": "add", "args": "[-1]"}, re.compile("n must be positive")),
        ("query", {"Query": "value", "args": ""}, "7"),
    ]:
        for label, value in fields.items():
            await page.locator(f"#{form}-form").get_by_label(label).fill(value)
        await page.locator(f"#{form}-form").get_by_role("button").click()
        await expect(page.locator(f"#{form}-answer")).to_have_text(answer)

    terminate = page.locator("#terminate-form")
    await terminate.get_by_label("Reason").fill("wrong customer")
    await terminate.get_by_role("button", name="Terminate").click()
    await expect(page.locator(".notice")).to_have_text("Run terminated.")
    await reload_until(page, "#run-status", "terminated")
    await expect(page.locator("#run-error")).to_contain_text("wrong customer")
    await expect(page.locator("#signal-form")).to_have_count(0)  # no actions on a closed run


SCHEDULE = """
import asyncio
from uiapp import app

async def main() -> None:
    async with app:
        await app.schedule_workflow(
            "hello", schedule_id="nightly", args=["Sched"], cron="0 3 * * *"
        )

asyncio.run(main())
"""


async def test_schedules_in_the_browser(ui: UiProcess, served_db: Cli, page: Page) -> None:
    subprocess.run(
        [sys.executable, "-c", SCHEDULE],
        cwd=served_db.cwd,
        env=dict(served_db.env),
        check=True,
        timeout=TIMEOUT,
    )
    await page.goto(ui.url)
    await page.get_by_role("link", name="Schedules").click()
    await expect(page.locator("table.runs tbody tr")).to_contain_text("cron '0 3 * * *' (UTC)")
    await page.get_by_role("link", name="nightly").click()
    await expect(page.locator("#schedule-state")).to_have_text("active")
    await page.locator("#schedule-pause").click()
    await expect(page.locator(".notice")).to_have_text("Schedule paused.")
    await expect(page.locator("#schedule-state")).to_have_text("paused")
    await page.locator("#schedule-unpause").click()
    await expect(page.locator("#schedule-state")).to_have_text("active")
    await page.locator("#schedule-trigger").click()
    await expect(page.locator(".notice")).to_contain_text("triggered")
    await page.locator("table.runs tbody a").first.click()
    await reload_until(page, "#run-status", "completed")
    await expect(page.locator("#run-result")).to_have_text('"Hello, Sched!"')


def test_a_database_error_is_a_500_page_and_the_server_goes_on(cli: Cli, tmp_path: Path) -> None:
    cli.ok("db", "migrate")
    server = UiProcess(cli, log=tmp_path / "ui-db.log")
    try:
        database = sqlite3.connect(tmp_path / "perdure.db")
        database.execute("ALTER TABLE perdure_workflows RENAME TO hidden")
        database.commit()
        status, body, _ = http(f"{server.url}/workflows")
        assert status == 500 and "unexpected error" in error_text(body)
        database.execute("ALTER TABLE hidden RENAME TO perdure_workflows")
        database.commit()
        database.close()
        status, body, _ = http(f"{server.url}/workflows")
        assert status == 200 and "No workflow runs" in body
    finally:
        assert server.stop() == 0
    assert "no such table: perdure_workflows" in server.log.read_text()


def test_a_proxys_host_name_can_be_allowed(cli: Cli, tmp_path: Path) -> None:
    cli.ok("db", "migrate")
    server = UiProcess(cli, "--allowed-host", "ops.example", log=tmp_path / "ui-proxy.log")
    try:
        assert http(f"{server.url}/workflows", Host="ops.example")[0] == 200
        assert http(f"{server.url}/workflows", Host="evil.example")[0] == 400
        assert http(f"{server.url}/workflows")[0] == 200  # 127.0.0.1:PORT
    finally:
        assert server.stop() == 0
