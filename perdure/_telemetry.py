"""OpenTelemetry traces and metrics of a worker: opt in with ``app.worker(telemetry=Telemetry())``.

perdure emits through the OpenTelemetry API (the ``otel`` extra) and configures no
exporter: the application sets up the SDK (or runs under ``opentelemetry-instrument``)
and chooses where spans and metrics go. Without a configured SDK everything is a no-op.

Every span of a run belongs to one trace whose id is the run id (a UUID's 128 bits), so
a run's activities and its end are found together whichever workers ran them, across
crashes and days; the trace's root stands for the run itself (its span id is derived
from the run id too) and is not exported, since no single process sees a run whole.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import Span, TracerProvider

_SCOPE = "perdure"
_LOW_64 = (1 << 64) - 1
_CONTEXTS_KEPT = 4096


class Telemetry:
    """Where a worker's spans and metrics go: the global OpenTelemetry providers, or the
    ones given. Needs ``pip install 'perdure[otel]'`` (the OpenTelemetry API)."""

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        from importlib import metadata

        try:
            from opentelemetry import metrics, trace
        except ImportError as exc:
            raise ImportError(
                "perdure's telemetry needs the OpenTelemetry API: pip install 'perdure[otel]'",
                name=exc.name,
            ) from exc
        version = metadata.version("perdure")
        self._trace = trace
        self._contexts: dict[str, Context] = {}
        self.tracer = trace.get_tracer(_SCOPE, version, tracer_provider=tracer_provider)
        meter = metrics.get_meter(_SCOPE, version, meter_provider=meter_provider)
        self.activity_duration = meter.create_histogram(
            "perdure.activity.duration",
            unit="s",
            description="How long activity attempts ran, by type and outcome.",
        )
        self.activity_schedule_to_start = meter.create_histogram(
            "perdure.activity.schedule_to_start",
            unit="s",
            description="From an attempt's due time to its start: how far workers lag.",
        )
        self.runs_closed = meter.create_counter(
            "perdure.workflow.closed",
            unit="{run}",
            description="Runs this worker closed, by type and status.",
        )
        self.run_duration = meter.create_histogram(
            "perdure.workflow.duration",
            unit="s",
            description="From a run's start to its close, by type and status.",
        )
        self.step_commit = meter.create_histogram(
            "perdure.workflow.step_commit",
            unit="s",
            description="How long a workflow step's durable commit took.",
        )

    def run_context(self, run_id: str) -> Context:
        """The context whose parent is the run's root: its spans' trace id is the run id.
        Kept for the runs in flight: each of a run's steps asks for it again."""
        context = self._contexts.get(run_id)
        if context is None:
            if len(self._contexts) >= _CONTEXTS_KEPT:
                self._contexts.clear()
            context = self._contexts[run_id] = self._new_run_context(run_id)
        return context

    def _new_run_context(self, run_id: str) -> Context:
        trace = self._trace
        ids = uuid.UUID(run_id).int
        root = trace.SpanContext(
            trace_id=ids,
            span_id=(ids & _LOW_64) or 1,
            is_remote=True,
            trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
        )
        context: Context = trace.set_span_in_context(trace.NonRecordingSpan(root))
        return context

    @contextmanager
    def activity_attempt(
        self,
        *,
        run_id: str,
        workflow_id: str,
        workflow_type: str,
        activity_type: str,
        activity_id: int,
        attempt: int,
        task_queue: str,
        due_at: datetime,
        now: datetime,
    ) -> Iterator[Attempt]:
        """A span around one attempt (current while it runs, so what the activity calls
        nests under it) and its duration; the caller reports a failure to the Attempt."""
        self.activity_schedule_to_start.record(
            max((now - due_at).total_seconds(), 0.0), {"perdure.activity_type": activity_type}
        )
        started = time.perf_counter()
        with self.tracer.start_as_current_span(
            f"activity {activity_type}",
            context=self.run_context(run_id),
            attributes={
                **_run_attributes(run_id, workflow_id, workflow_type, task_queue),
                "perdure.activity_type": activity_type,
                "perdure.activity_id": activity_id,
                "perdure.attempt": attempt,
            },
        ) as span:
            done = Attempt(self, span)
            try:
                yield done
            except BaseException:
                done.canceled()
                raise
            finally:
                self.activity_duration.record(
                    time.perf_counter() - started,
                    {"perdure.activity_type": activity_type, "perdure.outcome": done.outcome},
                )

    def run_closed(
        self,
        *,
        run_id: str,
        workflow_id: str,
        workflow_type: str,
        task_queue: str,
        status: str,
        created_at: datetime,
        closed_at: datetime,
    ) -> None:
        """A run ended on this worker: count it, and export a span for the whole run."""
        labels = {"perdure.workflow_type": workflow_type, "perdure.status": status}
        self.runs_closed.add(1, labels)
        self.run_duration.record(max((closed_at - created_at).total_seconds(), 0.0), labels)
        span = self.tracer.start_span(
            f"workflow {workflow_type}",
            context=self.run_context(run_id),
            start_time=_nanos(created_at),
            attributes={
                **_run_attributes(run_id, workflow_id, workflow_type, task_queue),
                "perdure.status": status,
            },
        )
        if status not in ("completed", "continued_as_new"):
            span.set_status(self.error_status(f"the run {status}"))
        span.end(end_time=_nanos(closed_at))

    def error_status(self, description: str) -> Any:
        trace = self._trace
        return trace.Status(trace.StatusCode.ERROR, description)

    def step_committed(self, seconds: float, workflow_type: str) -> None:
        self.step_commit.record(seconds, {"perdure.workflow_type": workflow_type})


class Attempt:
    """One attempt's span, told how the attempt ended."""

    __slots__ = ("outcome", "span", "telemetry")

    def __init__(self, telemetry: Telemetry, span: Span) -> None:
        self.telemetry = telemetry
        self.span = span
        self.outcome = "completed"

    def canceled(self) -> None:
        """The attempt did not end: its worker stopped (or gave up on it) meanwhile."""
        self.outcome = "canceled"
        self.span.set_status(self.telemetry.error_status("the attempt was canceled"))

    def failed(self, error: BaseException) -> None:
        self.outcome = "failed"
        self.span.record_exception(error)
        self.span.set_status(self.telemetry.error_status(f"{type(error).__name__}: {error}"))


def _run_attributes(
    run_id: str, workflow_id: str, workflow_type: str, task_queue: str
) -> dict[str, str]:
    """The attributes every span of a run carries."""
    return {
        "perdure.workflow_id": workflow_id,
        "perdure.run_id": run_id,
        "perdure.workflow_type": workflow_type,
        "perdure.task_queue": task_queue,
    }


def _nanos(dt: datetime) -> int:
    return int(dt.timestamp() * 1_000_000_000)
