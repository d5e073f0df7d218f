"""``perdure worker --telemetry``: spans reach the exporter the application configured."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from cli_harness import Cli, WorkerProcess, write_app_module

# wfapp's workflows, with the OpenTelemetry SDK set up as an application would: here a
# console exporter that writes each finished span as JSON to spans.jsonl.
OTEL_APP = """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from wfapp import app

provider = TracerProvider()
provider.add_span_processor(
    SimpleSpanProcessor(
        ConsoleSpanExporter(
            out=open("spans.jsonl", "a", buffering=1),
            formatter=lambda span: span.to_json(indent=None) + "\\n",
        )
    )
)
trace.set_tracer_provider(provider)
"""


def test_worker_telemetry_exports_the_runs_spans(
    cli: Cli, app_module: Path, tmp_path: Path
) -> None:
    write_app_module(tmp_path, "otelapp", OTEL_APP)
    worker = WorkerProcess(cli, "otelapp:app", "--telemetry", log=tmp_path / "worker.log")
    worker.wait_ready()
    try:
        out = cli.ok("start", "hello", '"Otto"', "-w", "otel-1", "--wait", "--json")
    finally:
        assert worker.stop() == 0, worker.output()
    run_id = json.loads(out)["run_id"]
    spans = [json.loads(line) for line in (tmp_path / "spans.jsonl").read_text().splitlines()]
    by_name = {span["name"]: span for span in spans}
    assert {"activity greet", "workflow hello"} <= set(by_name)
    for span in by_name.values():
        assert span["context"]["trace_id"] == f"0x{uuid.UUID(run_id).hex}"
        assert span["attributes"]["perdure.workflow_id"] == "otel-1"
    assert by_name["workflow hello"]["attributes"]["perdure.status"] == "completed"
