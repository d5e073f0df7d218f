"""Client-side records and the workflow handle."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from perdure._converter import from_jsonable, to_jsonable
from perdure._durations import to_optional_seconds
from perdure._errors import (
    CancelledError,
    UpdateFailedError,
    UpdateRejectedError,
    WorkflowFailedError,
    WorkflowNotFoundError,
    failure_from_dict,
)
from perdure._errors import TimeoutError as PerdureTimeoutError
from perdure._history import HistoryEvent
from perdure._store._base import RunRecord

if TYPE_CHECKING:
    from perdure._app import App

R = TypeVar("R")


class WorkflowStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"
    TERMINATED = "terminated"
    CONTINUED_AS_NEW = "continued_as_new"
    TIMED_OUT = "timed_out"


# Status text -> member by a dict lookup: calling the enum runs its Python __call__.
_STATUS: dict[str, WorkflowStatus] = {s.value: s for s in WorkflowStatus}


def _status(text: str) -> WorkflowStatus:
    """The member for a status text; an unknown one (a row edited by hand) raises the
    enum's own ``ValueError``, which names it."""
    return _STATUS.get(text) or WorkflowStatus(text)


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkflowDescription:
    """One run, as ``describe()`` and ``list_workflows()`` give it."""

    workflow_id: str
    run_id: str
    workflow_type: str
    task_queue: str
    status: WorkflowStatus
    created_at: datetime
    closed_at: datetime | None
    parent_workflow_id: str | None
    parent_run_id: str | None
    search_attributes: dict[str, Any] = field(default_factory=dict)
    memo: dict[str, Any] = field(default_factory=dict)
    history_length: int = 0
    parked_error: str | None = None

    @classmethod
    def from_record(cls, rec: RunRecord) -> WorkflowDescription:
        return cls(
            workflow_id=rec.workflow_id,
            run_id=rec.run_id,
            workflow_type=rec.workflow_type,
            task_queue=rec.task_queue,
            status=_status(rec.status),
            created_at=rec.created_at,
            closed_at=rec.closed_at,
            parent_workflow_id=rec.parent_workflow_id,
            parent_run_id=rec.parent_run_id,
            search_attributes=rec.search_attributes,
            memo=rec.memo,
            history_length=rec.next_event_seq - 1,
            parked_error=rec.parked_error,
        )


class WorkflowHandle(Generic[R]):
    """A handle on a workflow: its latest run, or one run when ``run_id`` is set."""

    def __init__(
        self,
        app: App,
        workflow_id: str,
        run_id: str | None = None,
        *,
        result_type: Any = Any,
        pinned: bool = True,
    ) -> None:
        self.app = app
        self.workflow_id = workflow_id
        self.run_id = run_id
        self._result_type = result_type
        # A handle from start_workflow knows its first run but follows the workflow:
        # messages and describe() reach the current run after a continue-as-new.
        self._target = run_id if pinned else None

    def __repr__(self) -> str:
        return f"WorkflowHandle(workflow_id={self.workflow_id!r}, run_id={self.run_id!r})"

    async def _record(self, run_id: str | None = None) -> RunRecord:
        store = await self.app._get_store()
        rec = await store.get_run(self.app.namespace, self.workflow_id, run_id or self._target)
        if rec is None:
            raise WorkflowNotFoundError(
                f"no workflow with id {self.workflow_id!r}"
                + (f" and run id {self._target!r}" if self._target else "")
            )
        return rec

    async def result(self, timeout: Any = None) -> R:
        """Wait for the run (following continue-as-new) to close; return or raise its outcome."""
        seconds = to_optional_seconds(timeout, what="timeout")
        deadline = None if seconds is None else time.monotonic() + seconds
        run_id = self.run_id
        while True:
            rec: RunRecord | None = None
            close = None if run_id is None else self.app._recent_closes.get(run_id)
            if close is not None:
                # Closed lately by this process's worker (a closed run never changes).
                current, status = str(run_id), _status(close.status)
            elif run_id is not None and self.app._live_runner(run_id) is not None:
                # This process's worker holds the run: it is running, and its close wakes
                # us at once (no need to ask the database first).
                current, status = run_id, WorkflowStatus.RUNNING
            else:
                rec = await self._record(run_id)
                current, status = rec.run_id, _status(rec.status)
            if status == WorkflowStatus.RUNNING:
                wait = 30.0  # woken by the close, here or (via the app's watcher) elsewhere
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise PerdureTimeoutError(
                            f"workflow {self.workflow_id!r} did not finish within {seconds}s",
                            timeout_type="result",
                        )
                    wait = min(wait, left)
                close = await self.app._wait_closed(current, wait)
                if close is None:  # closed elsewhere (or not yet): read the row again
                    run_id = current
                    continue
            if close is not None:
                status, result, error, next_run = (
                    _status(close.status),
                    close.result,
                    close.error,
                    close.continued_run_id,
                )
            else:
                assert rec is not None
                result, error, next_run = rec.result, rec.error, rec.continued_run_id
            if status == WorkflowStatus.CONTINUED_AS_NEW and next_run:
                run_id = next_run
                continue
            if status == WorkflowStatus.COMPLETED:
                value: R = from_jsonable(result, self._result_type, what="workflow result")
                return value
            raise _failed(self.workflow_id, current, status, error)

    async def describe(self) -> WorkflowDescription:
        return WorkflowDescription.from_record(await self._record())

    async def history(self) -> list[HistoryEvent]:
        rec = await self._record()
        store = await self.app._get_store()
        return await store.load_history(rec.run_id)

    async def signal(self, name: str, *args: Any) -> None:
        """Send a signal; it is buffered until the workflow takes it."""
        payload = [to_jsonable(a, what=f"argument of signal {name!r}") for a in args]
        store = await self.app._get_store()
        await store.send_inbox(
            self.app.namespace, self.workflow_id, self._target, "signal", name, payload
        )
        self.app._wake_workers()

    async def query(self, name: str, *args: Any) -> Any:
        """Ask a running or closed workflow a read-only question, answered by its handler.

        Answered from the live run when this process holds it, otherwise by
        replaying the run's history with this app's code.
        """
        rec = await self._record()
        payload = [to_jsonable(a, what=f"argument of query {name!r}") for a in args]
        runner = self.app._live_runner(rec.run_id)
        if runner is not None:
            return runner.query(name, payload)
        store = await self.app._get_store()
        history = await store.load_history(rec.run_id)
        replayed = self.app._replay_for_query(rec, history)
        try:
            return replayed.query(name, payload)
        finally:
            replayed.evict()

    async def update(self, name: str, *args: Any, timeout: Any = None) -> Any:
        """Run the workflow's update handler and return its result.

        Raises ``UpdateRejectedError`` (unknown update, validator refused, run
        not running; nothing recorded) or ``UpdateFailedError`` (the handler raised).
        """
        seconds = to_optional_seconds(timeout, what="timeout")
        update_id = str(uuid.uuid4())
        payload = [to_jsonable(a, what=f"argument of update {name!r}") for a in args]
        store = await self.app._get_store()
        try:
            await store.send_inbox(
                self.app.namespace,
                self.workflow_id,
                self._target,
                "update",
                name,
                [{"update_id": update_id, "args": payload}],
            )
        except WorkflowNotFoundError as exc:
            if await store.get_run(self.app.namespace, self.workflow_id, self._target) is None:
                raise
            raise UpdateRejectedError(f"update {name!r} rejected: {exc}", cause=exc) from None
        self.app._wake_workers()
        deadline = None if seconds is None else time.monotonic() + seconds
        while True:
            outcome = await store.take_reply(update_id)
            if outcome is not None:
                break
            wait = self.app._result_poll_interval
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PerdureTimeoutError(
                        f"update {name!r} of {self.workflow_id!r} got no answer within {seconds}s",
                        timeout_type="update",
                    )
                wait = min(wait, left)
            await self.app._wait_reply(update_id, wait)
        if "error" in outcome:
            cause = failure_from_dict(outcome["error"])
            if outcome.get("rejected"):
                if isinstance(cause, UpdateRejectedError):
                    raise cause
                raise UpdateRejectedError(str(cause), cause=cause)
            raise UpdateFailedError(f"update {name!r} failed: {cause}", cause=cause)
        return outcome.get("result")

    async def terminate(self, reason: str = "terminated") -> None:
        """End the workflow at once, without running its code (no cleanup runs)."""
        store = await self.app._get_store()
        run_id = await store.terminate_run(
            self.app.namespace, self.workflow_id, self._target, reason
        )
        self.app._run_closed(run_id)
        self.app._wake_workers()

    async def cancel(self, reason: str | None = None) -> None:
        """Ask the workflow to cancel: it sees ``asyncio.CancelledError`` at its current await."""
        store = await self.app._get_store()
        await store.send_inbox(
            self.app.namespace, self.workflow_id, self._target, "cancel", None, [reason]
        )
        self.app._wake_workers()


def _failed(
    workflow_id: str, run_id: str, status: str, error: dict[str, Any] | None
) -> WorkflowFailedError:
    if error is not None:
        cause: BaseException = failure_from_dict(error)
    elif status == WorkflowStatus.CANCELED:
        cause = CancelledError("workflow was canceled")
    else:
        cause = CancelledError(f"workflow ended as {status}")
    return WorkflowFailedError(
        f"workflow {workflow_id!r} (run {run_id}) {status}: {cause}",
        cause=cause,
        workflow_id=workflow_id,
        run_id=run_id,
        status=status,
    )
