"""Helpers for testing workflows.

>>> app = perdure.testing.new_app()
>>> await perdure.testing.replay(app, await handle.history())
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from perdure._app import App
from perdure._clock import Clock
from perdure._errors import NonDeterminismError
from perdure._history import EventType, HistoryEvent
from perdure._workflow._runner import WorkflowInfo, WorkflowRunner

__all__ = ["new_app", "replay"]


def new_app(*, time_skipping: bool = False, **app_kwargs: Any) -> App:
    """An App on a fresh temporary SQLite file.

    With ``time_skipping=True``, whenever every run its workers hold is blocked
    on timers only, the clock jumps to the next timer: a workflow that sleeps
    for 7 days finishes in milliseconds, and ``ctx.now()`` shows the 7 days.
    """
    folder = tempfile.mkdtemp(prefix="perdure-test-")
    path = os.path.join(folder, "perdure.db")
    app = App(f"sqlite:///{path}", **app_kwargs)
    app._clock = Clock(skipping=time_skipping)
    return app


def _load(history: Sequence[HistoryEvent] | str | os.PathLike[str]) -> list[HistoryEvent]:
    if isinstance(history, str | os.PathLike):
        data = json.loads(Path(history).read_text())
        if isinstance(data, dict):
            data = data.get("events", [])
        return [HistoryEvent.from_dict(e) for e in data]
    return [e if isinstance(e, HistoryEvent) else HistoryEvent.from_dict(e) for e in history]


async def replay(
    app: App,
    history: Sequence[HistoryEvent] | str | os.PathLike[str],
    *,
    workflow_id: str = "replay",
    run_id: str = "replay",
) -> None:
    """Re-run a recorded history against the code registered on ``app``.

    Raises ``NonDeterminismError`` if the code would act differently; returns
    nothing otherwise (a failed run replays cleanly if the code still fails
    the same way).
    """
    events = _load(history)
    if not events or events[0].event_type != EventType.WORKFLOW_STARTED:
        raise ValueError("a history must begin with a workflow_started event")
    started = events[0]
    workflow_type = str(started.attributes.get("workflow_type") or started.name)
    defn = app._registry.workflows.get(workflow_type)
    if defn is None:
        raise NonDeterminismError(
            f"workflow type {workflow_type!r} of the history is not registered on this app",
            workflow_id=workflow_id,
            run_id=run_id,
            position=1,
            expected="nothing",
            recorded=f"workflow_started({workflow_type!r})",
        )
    info = WorkflowInfo(
        workflow_id=str(started.attributes.get("workflow_id") or workflow_id),
        run_id=str(started.attributes.get("run_id") or run_id),
        workflow_type=workflow_type,
        task_queue=str(started.attributes.get("task_queue") or app.default_task_queue),
        namespace=app.namespace,
    )
    runner = WorkflowRunner(defn, info, app._registry)
    try:
        runner.replay(events)
    finally:
        runner.evict()
