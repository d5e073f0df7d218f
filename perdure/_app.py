"""App: the registry, the client and the worker factory in one object."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, overload

from perdure._client import WorkflowDescription, WorkflowHandle
from perdure._clock import Clock
from perdure._converter import to_jsonable
from perdure._durations import Duration, to_optional_seconds
from perdure._errors import NonDeterminismError, QueryFailedError, QueryRejectedError
from perdure._history import HistoryEvent
from perdure._ids import random_uuid
from perdure._registry import (
    ActivityOptions,
    Registry,
    activity_definition,
    workflow_definition,
)
from perdure._retry import RetryPolicy
from perdure._schedules import ScheduleHandle, create_schedule
from perdure._store import open_store
from perdure._store._base import ListFilter, NewRun, RunClose, RunRecord, Store, utcnow
from perdure._telemetry import Telemetry
from perdure._worker._worker import Worker
from perdure._workflow._runner import WorkflowInfo, WorkflowRunner

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])

ID_REUSE_POLICIES = ("allow_duplicate", "allow_duplicate_failed_only", "reject_duplicate")
ID_CONFLICT_POLICIES = ("fail", "use_existing", "terminate_existing")
_MAX_ID_LENGTH = 1000
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_workflow_id(workflow_id: str) -> str:
    """Ids are opaque text (SQL-looking ones included, they are always bound as parameters)."""
    if not isinstance(workflow_id, str) or not workflow_id:
        raise ValueError(f"workflow_id must be a non-empty string, got {workflow_id!r}")
    if len(workflow_id) > _MAX_ID_LENGTH:
        raise ValueError(f"workflow_id is {len(workflow_id)} characters; the limit is 1000")
    if _CONTROL.search(workflow_id):
        raise ValueError(f"workflow_id {workflow_id!r} contains control characters")
    return workflow_id


def _expire(fut: asyncio.Future[RunClose | None]) -> None:
    if not fut.done():
        fut.set_result(None)


class App:
    """Registry, client and worker factory for one database and namespace.

    >>> app = App("sqlite:///perdure.db")
    >>> @app.workflow
    ... async def hello(ctx: WorkflowContext, name: str) -> str: ...
    """

    def __init__(
        self,
        database_url: str | None = None,
        *,
        namespace: str = "default",
        default_task_queue: str = "default",
    ) -> None:
        self.database_url = (
            database_url or os.environ.get("PERDURE_DATABASE_URL") or "sqlite:///perdure.db"
        )
        self.namespace = namespace
        self.default_task_queue = default_task_queue
        self._registry = Registry()
        self._store: Store | None = None
        self._store_lock: asyncio.Lock | None = None
        self._workers: set[Worker] = set()
        self._close_waiters: dict[str, list[asyncio.Future[RunClose | None]]] = {}
        # Outcomes of runs this process's worker closed lately: result() of a run that
        # already closed here needs no read of its row.
        self._recent_closes: dict[str, RunClose] = {}
        self._result_poll_interval = 0.2
        self._watched: set[str] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._clock = Clock()
        open_store(self.database_url)  # validate the URL now, not at first use

    def __repr__(self) -> str:
        return f"App({self.database_url!r}, namespace={self.namespace!r})"

    # -- registration ----------------------------------------------------
    @overload
    def workflow(self, fn: F, /) -> F: ...

    @overload
    def workflow(self, fn: None = None, /, *, name: str | None = None) -> Callable[[F], F]: ...

    def workflow(self, fn: Any = None, /, *, name: str | None = None) -> Any:
        """Register an ``async def`` workflow; bare (``@app.workflow``) or called."""

        def register(f: F) -> F:
            self._registry.add_workflow(workflow_definition(f, name))
            return f

        return register(fn) if fn is not None else register

    @overload
    def activity(self, fn: F, /) -> F: ...

    @overload
    def activity(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        start_to_close_timeout: Duration | None = None,
        schedule_to_close_timeout: Duration | None = None,
        heartbeat_timeout: Duration | None = None,
        task_queue: str | None = None,
    ) -> Callable[[F], F]: ...

    def activity(
        self,
        fn: Any = None,
        /,
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        start_to_close_timeout: Duration | None = None,
        schedule_to_close_timeout: Duration | None = None,
        heartbeat_timeout: Duration | None = None,
        task_queue: str | None = None,
    ) -> Any:
        """Register an activity (``async def`` or plain ``def``); options are its defaults."""
        options = ActivityOptions.build(
            retry=retry,
            start_to_close_timeout=start_to_close_timeout,
            schedule_to_close_timeout=schedule_to_close_timeout,
            heartbeat_timeout=heartbeat_timeout,
            task_queue=task_queue,
        )

        def register(f: F) -> F:
            self._registry.add_activity(activity_definition(f, name, options))
            return f

        return register(fn) if fn is not None else register

    # -- lifecycle -------------------------------------------------------
    async def _get_store(self) -> Store:
        if self._store is not None:
            return self._store
        if self._store_lock is None:
            self._store_lock = asyncio.Lock()
        async with self._store_lock:
            if self._store is None:
                store = open_store(self.database_url)
                await store.migrate()
                self._store = store
        return self._store

    async def migrate(self) -> None:
        """Create or upgrade the schema (also done on first use)."""
        await self._get_store()

    async def close(self) -> None:
        for worker in list(self._workers):
            await worker.stop()
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        if self._store is not None:
            store, self._store = self._store, None
            await store.close()
        # The next use may come from another event loop (asyncio.run per script, command
        # or test): nothing bound to this one may outlive the close.
        self._store_lock = None

    async def __aenter__(self) -> App:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- workers ---------------------------------------------------------
    def worker(
        self,
        *,
        task_queues: list[str] | None = None,
        max_concurrent_workflows: int = 1000,
        max_concurrent_activities: int = 100,
        lease_duration: Duration = "30s",
        graceful_shutdown_timeout: Duration = "10s",
        poll_interval: Duration = "200ms",
        telemetry: Telemetry | None = None,
    ) -> Worker:
        """A worker for ``async with``: it runs in this process until the block exits.
        ``telemetry``: where its OpenTelemetry spans and metrics go (docs/telemetry.md)."""
        return Worker(
            self,
            task_queues=task_queues,
            max_concurrent_workflows=max_concurrent_workflows,
            max_concurrent_activities=max_concurrent_activities,
            lease_duration=lease_duration,
            graceful_shutdown_timeout=graceful_shutdown_timeout,
            poll_interval=poll_interval,
            telemetry=telemetry,
        )

    async def run_worker(self, **worker_options: Any) -> None:
        """Run a worker until cancelled or sent SIGTERM/SIGINT; then stop gracefully."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
            except (NotImplementedError, RuntimeError):
                pass
        try:
            async with self.worker(**worker_options):
                await stop.wait()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    def _wake_workers(self) -> None:
        for worker in self._workers:
            worker.wake()

    def _live_runner(self, run_id: str) -> WorkflowRunner | None:
        for worker in self._workers:
            run = worker.runs.get(run_id)
            if run is not None and not run.closed:
                return run.runner
        return None

    def _replay_for_query(self, rec: RunRecord, history: list[HistoryEvent]) -> WorkflowRunner:
        defn = self._registry.workflows.get(rec.workflow_type)
        if defn is None:
            raise QueryRejectedError(
                f"cannot answer queries for workflow type {rec.workflow_type!r}: it is not "
                "registered on this app"
            )
        if not history:
            raise QueryRejectedError(
                f"workflow {rec.workflow_id!r} has not started running yet; no handlers exist"
            )
        info = WorkflowInfo(
            workflow_id=rec.workflow_id,
            run_id=rec.run_id,
            workflow_type=rec.workflow_type,
            task_queue=rec.task_queue,
            namespace=rec.namespace,
        )
        runner = WorkflowRunner(defn, info, self._registry)
        try:
            runner.replay(history)
        except NonDeterminismError as exc:
            runner.evict()
            raise QueryFailedError(f"cannot answer: {exc}", cause=exc) from exc
        return runner

    def _reply_ready(self, reply_id: str) -> None:
        self._run_closed(reply_id)

    async def _wait_reply(self, reply_id: str, timeout: float) -> None:
        await self._wait_closed(reply_id, timeout, watch=False)

    def _run_closed(self, run_id: str, close: RunClose | None = None) -> None:
        if close is not None:
            recent = self._recent_closes
            recent[run_id] = close
            if len(recent) > 4096:
                del recent[next(iter(recent))]
        for fut in self._close_waiters.pop(run_id, []):
            if not fut.done():
                fut.set_result(close)

    async def _wait_closed(
        self, run_id: str, timeout: float, *, watch: bool = True
    ) -> RunClose | None:
        """Wait until ``run_id`` closes (or ``timeout``).

        Closes in this process wake waiters at once; closes elsewhere are found by
        one watcher that asks the database about every awaited run in one query.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[RunClose | None] = loop.create_future()
        waiters = self._close_waiters.setdefault(run_id, [])
        waiters.append(fut)
        if watch:
            self._watched.add(run_id)
            if self._watcher is None or self._watcher.done():
                self._watcher = asyncio.create_task(self._watch_closes())
        # The timeout settles the future itself (None): unlike asyncio.wait_for, no
        # second future and callback between the close and this task, so the waiter
        # wakes one turn of the event loop sooner.
        expiry = loop.call_later(timeout, _expire, fut)
        try:
            return await fut
        finally:
            expiry.cancel()
            if fut in waiters:
                waiters.remove(fut)
            if not waiters:
                self._close_waiters.pop(run_id, None)
                self._watched.discard(run_id)

    async def _watch_closes(self) -> None:
        while self._watched:
            await asyncio.sleep(self._result_poll_interval)
            store = self._store
            if store is None or not self._watched:
                return
            try:
                closed = await store.closed_runs(sorted(self._watched))
            except Exception:  # the database is away for a moment: ask again later
                continue
            for run_id in closed:
                self._run_closed(run_id)

    # -- client ----------------------------------------------------------
    def _resolve_workflow(self, workflow: Any) -> tuple[str, Any]:
        defn = self._registry.workflow_for(workflow)
        if defn is not None:
            return defn.name, defn
        if isinstance(workflow, str):
            if self._registry.workflows:
                known = ", ".join(sorted(self._registry.workflows))
                raise ValueError(f"unknown workflow type {workflow!r}; this app registers: {known}")
            return workflow, None
        raise ValueError(
            f"{getattr(workflow, '__qualname__', workflow)!r} is not a registered workflow; "
            "decorate it with @app.workflow"
        )

    @overload
    async def start_workflow(
        self,
        workflow: Callable[..., Awaitable[R]],
        *args: Any,
        workflow_id: str | None = None,
        task_queue: str | None = None,
        id_reuse_policy: str = "allow_duplicate",
        id_conflict_policy: str = "fail",
        start_delay: Duration | None = None,
        search_attributes: dict[str, Any] | None = None,
        memo: dict[str, Any] | None = None,
    ) -> WorkflowHandle[R]: ...

    @overload
    async def start_workflow(
        self,
        workflow: str,
        *args: Any,
        workflow_id: str | None = None,
        task_queue: str | None = None,
        id_reuse_policy: str = "allow_duplicate",
        id_conflict_policy: str = "fail",
        start_delay: Duration | None = None,
        search_attributes: dict[str, Any] | None = None,
        memo: dict[str, Any] | None = None,
    ) -> WorkflowHandle[Any]: ...

    async def start_workflow(
        self,
        workflow: Any,
        *args: Any,
        workflow_id: str | None = None,
        task_queue: str | None = None,
        id_reuse_policy: str = "allow_duplicate",
        id_conflict_policy: str = "fail",
        start_delay: Duration | None = None,
        search_attributes: dict[str, Any] | None = None,
        memo: dict[str, Any] | None = None,
    ) -> WorkflowHandle[Any]:
        """Start a workflow run and return its handle (nothing waits for it to run)."""
        new_run, result_type = self._new_run(
            workflow,
            args,
            workflow_id=workflow_id,
            task_queue=task_queue,
            id_reuse_policy=id_reuse_policy,
            id_conflict_policy=id_conflict_policy,
            start_delay=start_delay,
            search_attributes=search_attributes,
            memo=memo,
        )
        store = await self._get_store()
        worker = self._local_worker_for(new_run) if not start_delay else None
        if worker is not None:
            # Our own worker serves it: start and first step in one transaction.
            run_id, _ = await worker.start_here(worker.lease_new_run(new_run))
        else:
            run_id, _ = await store.start_run(new_run)
            self._wake_workers()
        return WorkflowHandle(
            self, new_run.workflow_id, run_id, result_type=result_type, pinned=False
        )

    def _local_worker_for(self, run: NewRun) -> Worker | None:
        """A worker of this app that can take the run at once, skipping the claim."""
        for worker in self._workers:
            if worker.can_adopt(run):
                return worker
        return None

    def _new_run(
        self,
        workflow: Any,
        args: tuple[Any, ...],
        *,
        workflow_id: str | None,
        task_queue: str | None,
        id_reuse_policy: str,
        id_conflict_policy: str,
        start_delay: Duration | None,
        search_attributes: dict[str, Any] | None,
        memo: dict[str, Any] | None,
    ) -> tuple[NewRun, Any]:
        """Check everything about a start before anything is written."""
        name, defn = self._resolve_workflow(workflow)
        if defn is not None:
            encoded = defn.signature.encode_args(args, kind="workflow")
            defn.signature.decode_args(encoded, kind="workflow")  # fail here, not in the worker
        else:
            encoded = [to_jsonable(a, what=f"argument of workflow {name!r}") for a in args]
        if id_reuse_policy not in ID_REUSE_POLICIES:
            raise ValueError(
                f"id_reuse_policy must be one of {', '.join(ID_REUSE_POLICIES)}; "
                f"got {id_reuse_policy!r}"
            )
        if id_conflict_policy not in ID_CONFLICT_POLICIES:
            raise ValueError(
                f"id_conflict_policy must be one of {', '.join(ID_CONFLICT_POLICIES)}; "
                f"got {id_conflict_policy!r}"
            )
        delay = to_optional_seconds(start_delay, what="start_delay") or 0.0
        workflow_id = check_workflow_id(workflow_id) if workflow_id is not None else random_uuid()
        new_run = NewRun(
            namespace=self.namespace,
            workflow_id=workflow_id,
            run_id=random_uuid(),
            workflow_type=name,
            task_queue=task_queue or self.default_task_queue,
            input=encoded,
            wake_at=utcnow() + timedelta(seconds=delay),
            id_reuse_policy=id_reuse_policy,
            id_conflict_policy=id_conflict_policy,
            search_attributes=dict(to_jsonable(search_attributes or {})),
            memo=dict(to_jsonable(memo or {})),
        )
        return new_run, defn.signature.return_hint if defn else Any

    @overload
    async def execute_workflow(
        self, workflow: Callable[..., Awaitable[R]], *args: Any, **options: Any
    ) -> R: ...

    @overload
    async def execute_workflow(self, workflow: str, *args: Any, **options: Any) -> Any: ...

    async def execute_workflow(self, workflow: Any, *args: Any, **options: Any) -> Any:
        """Start a workflow and wait for its result."""
        handle = await self.start_workflow(workflow, *args, **options)
        return await handle.result()

    async def signal_with_start(
        self,
        workflow: Any,
        *args: Any,
        workflow_id: str,
        signal: str,
        signal_args: list[Any] | tuple[Any, ...] = (),
        task_queue: str | None = None,
        search_attributes: dict[str, Any] | None = None,
        memo: dict[str, Any] | None = None,
    ) -> WorkflowHandle[Any]:
        """Signal the running workflow with this id, starting it first if none runs."""
        new_run, result_type = self._new_run(
            workflow,
            args,
            workflow_id=workflow_id,
            task_queue=task_queue,
            id_reuse_policy="allow_duplicate",
            id_conflict_policy="use_existing",
            start_delay=None,
            search_attributes=search_attributes,
            memo=memo,
        )
        payload = [to_jsonable(a, what=f"argument of signal {signal!r}") for a in signal_args]
        store = await self._get_store()
        run_id, _ = await store.signal_with_start(new_run, signal, payload)
        self._wake_workers()
        return WorkflowHandle(
            self, new_run.workflow_id, run_id, result_type=result_type, pinned=False
        )

    def get_handle(self, workflow_id: str, *, run_id: str | None = None) -> WorkflowHandle[Any]:
        """A handle on an existing workflow: its latest run, or ``run_id``."""
        return WorkflowHandle(self, check_workflow_id(workflow_id), run_id)

    async def list_workflows(
        self,
        *,
        status: str | None = None,
        workflow_type: str | None = None,
        workflow_id_prefix: str | None = None,
        search_attributes: dict[str, Any] | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[WorkflowDescription]:
        """Runs matching every given filter, newest first."""
        store = await self._get_store()
        records = await store.list_runs(
            ListFilter(
                namespace=self.namespace,
                status=status,
                workflow_type=workflow_type,
                workflow_id_prefix=workflow_id_prefix,
                search_attributes=dict(search_attributes or {}),
                limit=limit,
            )
        )
        for rec in records:
            yield WorkflowDescription.from_record(rec)

    async def schedule_workflow(
        self,
        workflow: Any,
        *,
        schedule_id: str,
        args: list[Any] | tuple[Any, ...] = (),
        cron: str | None = None,
        interval: Duration | None = None,
        timezone: str | None = None,
        jitter: Duration | None = None,
        overlap: str = "skip",
        catchup_window: Duration | None = None,
        task_queue: str | None = None,
    ) -> ScheduleHandle:
        """Start ``workflow`` on a cron or interval spec; workers fire it (docs/schedules.md)."""
        return await create_schedule(
            self,
            workflow,
            schedule_id=schedule_id,
            args=args,
            cron=cron,
            interval=interval,
            timezone=timezone,
            jitter=jitter,
            overlap=overlap,
            catchup_window=catchup_window,
            task_queue=task_queue,
        )

    def get_schedule(self, schedule_id: str) -> ScheduleHandle:
        """A handle on a schedule (``ScheduleNotFoundError`` when used, if there is none)."""
        return ScheduleHandle(self, schedule_id)
