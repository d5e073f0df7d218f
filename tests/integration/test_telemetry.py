"""OpenTelemetry from a worker, collected by the real SDK (in-memory exporter and reader),
on every backend: a span per activity attempt and per closed run, in the run's trace."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import StatusCode

import perdure
from perdure import ApplicationError, RetryPolicy, Telemetry, WorkflowContext


@dataclass
class Collected:
    telemetry: Telemetry
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    tracer_provider: TracerProvider

    def finished(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if s.name == name]

    def points(self, metric: str) -> list[Any]:
        data = self.metrics.get_metrics_data()
        if data is None:
            return []
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for m in scope.metrics
            if m.name == metric
            for point in m.data.data_points
        ]


@pytest.fixture
def collected() -> Iterator[Collected]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    telemetry = Telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)
    yield Collected(telemetry, spans, reader, tracer_provider)
    tracer_provider.shutdown()
    meter_provider.shutdown()


async def test_spans_and_metrics_of_runs(app: perdure.App, collected: Collected) -> None:
    attempts: Counter[str] = Counter()
    tracer = collected.tracer_provider.get_tracer("the-activity's-own-code")

    @app.activity(name="flaky", retry=RetryPolicy(initial_interval="10ms", maximum_attempts=3))
    async def flaky(key: str) -> str:
        attempts[key] += 1
        with tracer.start_as_current_span("inner call"):  # nests under the attempt's span
            if attempts[key] == 1:
                raise ConnectionError("first attempt drops")
        return f"ok:{key}"

    @app.activity(name="refuse")
    def refuse(reason: str) -> None:  # a plain def: runs in a thread, same trace
        with tracer.start_as_current_span("inner check"):
            raise ApplicationError(reason, non_retryable=True)

    @app.workflow(name="order")
    async def order(ctx: WorkflowContext, key: str) -> str:
        result: str = await ctx.activity(flaky, key)
        return result

    @app.workflow(name="doomed")
    async def doomed(ctx: WorkflowContext) -> None:
        await ctx.activity(refuse, "out of stock")

    async with app.worker(telemetry=collected.telemetry):
        ok = await app.start_workflow(order, "a", workflow_id="order-a")
        assert await ok.result(timeout=30) == "ok:a"
        bad = await app.start_workflow(doomed, workflow_id="doomed-1")
        with pytest.raises(perdure.WorkflowFailedError):
            await bad.result(timeout=30)

    # Every span of a run is in the trace whose id is the run id.
    first, second = collected.finished("activity flaky")
    run_trace = uuid.UUID(ok.run_id).int
    assert {first.context.trace_id, second.context.trace_id} == {run_trace}
    assert first.parent is not None and first.parent.trace_id == run_trace
    assert first.attributes is not None
    assert first.attributes["perdure.attempt"] == 1
    assert first.attributes["perdure.workflow_id"] == "order-a"
    assert first.status.status_code is StatusCode.ERROR
    assert "ConnectionError" in (first.status.description or "")
    assert [e.name for e in first.events] == ["exception"]
    assert second.attributes is not None and second.attributes["perdure.attempt"] == 2
    assert second.status.status_code is StatusCode.UNSET
    inner = collected.finished("inner call")
    assert [s.parent.span_id for s in inner if s.parent] == [
        first.context.span_id,
        second.context.span_id,
    ]

    (workflow,) = collected.finished("workflow order")
    assert workflow.context.trace_id == run_trace
    assert workflow.attributes is not None
    assert workflow.attributes["perdure.status"] == "completed"
    assert workflow.start_time is not None and workflow.end_time is not None
    assert workflow.start_time <= first.start_time <= second.end_time <= workflow.end_time  # type: ignore[operator]

    (refused,) = collected.finished("activity refuse")
    assert refused.context.trace_id == uuid.UUID(bad.run_id).int
    (check,) = collected.finished("inner check")
    assert check.parent is not None and check.parent.span_id == refused.context.span_id
    (failed,) = collected.finished("workflow doomed")
    assert failed.status.status_code is StatusCode.ERROR

    closed = {
        (p.attributes["perdure.workflow_type"], p.attributes["perdure.status"]): p.value
        for p in collected.points("perdure.workflow.closed")
    }
    assert closed == {("order", "completed"): 1, ("doomed", "failed"): 1}
    durations = {
        (p.attributes["perdure.activity_type"], p.attributes["perdure.outcome"]): p.count
        for p in collected.points("perdure.activity.duration")
    }
    assert durations == {("flaky", "failed"): 1, ("flaky", "completed"): 1, ("refuse", "failed"): 1}
    assert sum(p.count for p in collected.points("perdure.workflow.step_commit")) >= 4
    assert sum(p.count for p in collected.points("perdure.workflow.duration")) == 2
    assert sum(p.count for p in collected.points("perdure.activity.schedule_to_start")) == 3


async def test_a_worker_without_telemetry_emits_nothing(
    app: perdure.App, collected: Collected
) -> None:
    @app.workflow(name="quiet")
    async def quiet(ctx: WorkflowContext) -> int:
        return 1

    async with app.worker():
        assert await app.execute_workflow(quiet) == 1
    assert collected.spans.get_finished_spans() == ()
    assert collected.points("perdure.workflow.closed") == []


async def test_an_activity_on_another_workers_task_queue_joins_the_runs_trace(
    database_url: str, collected: Collected
) -> None:
    orchestrator = perdure.App(database_url)
    gpu_box = perdure.App(database_url)

    @gpu_box.activity(name="render")
    async def render(frame: int) -> str:
        return f"frame-{frame}.png"

    @orchestrator.workflow(name="film")
    async def film(ctx: WorkflowContext) -> str:
        result: str = await ctx.activity("render", 7, task_queue="gpu")
        return result

    async with (
        orchestrator,
        gpu_box,
        orchestrator.worker(task_queues=["default"]),
        gpu_box.worker(task_queues=["gpu"], telemetry=collected.telemetry),
    ):
        handle = await orchestrator.start_workflow("film")
        assert await handle.result(timeout=30) == "frame-7.png"

    (span,) = collected.finished("activity render")
    assert span.context.trace_id == uuid.UUID(handle.run_id).int
    assert span.attributes is not None
    assert span.attributes["perdure.workflow_type"] == "film"
    assert span.attributes["perdure.task_queue"] == "gpu"
    assert collected.finished("workflow film") == []  # the orchestrator emits nothing


async def test_a_ratio_sampler_traces_each_run_whole_or_not_at_all(app: perdure.App) -> None:
    spans = InMemorySpanExporter()
    half = TraceIdRatioBased(0.5)
    tracer_provider = TracerProvider(sampler=ParentBased(half, remote_parent_sampled=half))
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))

    @app.activity(name="step")
    async def step(i: int) -> int:
        return i

    @app.workflow(name="two-steps")
    async def two_steps(ctx: WorkflowContext) -> int:
        return await ctx.activity(step, 1) + await ctx.activity(step, 2)

    async with app.worker(telemetry=Telemetry(tracer_provider=tracer_provider)):
        handles = [await app.start_workflow(two_steps) for _ in range(12)]
        for handle in handles:
            assert await handle.result(timeout=30) == 3
    tracer_provider.shutdown()

    traced: Counter[int] = Counter(s.context.trace_id for s in spans.get_finished_spans())
    for handle in handles:
        trace_id = uuid.UUID(handle.run_id).int
        # TraceIdRatioBased keeps a trace when the id's low 64 bits are under ratio * 2**64.
        kept = (trace_id & ((1 << 64) - 1)) < half.bound
        assert traced[trace_id] == (3 if kept else 0)  # two activities and the run's end


async def test_an_attempt_cut_short_by_shutdown_is_counted_as_canceled(
    app: perdure.App, collected: Collected
) -> None:
    started = asyncio.Event()

    @app.activity(name="slow")
    async def slow() -> None:
        started.set()
        await asyncio.sleep(60)

    @app.workflow(name="waits")
    async def waits(ctx: WorkflowContext) -> None:
        await ctx.activity(slow)

    async with app.worker(telemetry=collected.telemetry, graceful_shutdown_timeout="50ms"):
        await app.start_workflow(waits, workflow_id="cut-short")
        await asyncio.wait_for(started.wait(), 30)

    (span,) = collected.finished("activity slow")
    assert span.status.status_code is StatusCode.ERROR  # the cancellation, recorded
    outcomes = [
        p.attributes["perdure.outcome"] for p in collected.points("perdure.activity.duration")
    ]
    assert outcomes == ["canceled"]
