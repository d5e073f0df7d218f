"""The store's interface: one async method per transaction, in the engine's words.

Nothing above the store imports a database driver. Driver errors stop here:
a unique violation on start becomes ``WorkflowAlreadyStartedError``, a lost
lease or a moved run becomes ``StepRejected``.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from perdure._history import HistoryEvent


class RunExists(Exception):
    """A start-and-first-step found a running run with that id (use_existing)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(run_id)
        self.run_id = run_id


class StepRejected(Exception):
    """The run is no longer ours (lease lost, or another writer moved it on)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(kw_only=True, slots=True)
class RunRecord:
    run_id: str
    namespace: str
    workflow_id: str
    workflow_type: str
    task_queue: str
    status: str
    input: list[Any]
    result: Any
    error: dict[str, Any] | None
    parent_workflow_id: str | None
    parent_run_id: str | None
    parent_close_policy: str | None
    child_id: int | None
    search_attributes: dict[str, Any]
    memo: dict[str, Any]
    continued_run_id: str | None
    next_event_seq: int
    wake_at: datetime | None
    owner: str | None
    parked_error: str | None
    created_at: datetime
    closed_at: datetime | None


@dataclass(kw_only=True, slots=True)
class NewRun:
    """A run to insert. Not frozen (like ``RunRecord``): one is built per start, and the
    starting process's worker marks it as its own in place."""

    namespace: str
    workflow_id: str
    run_id: str
    workflow_type: str
    task_queue: str
    input: list[Any]
    wake_at: datetime
    id_reuse_policy: str = "allow_duplicate"
    id_conflict_policy: str = "fail"
    parent_workflow_id: str | None = None
    parent_run_id: str | None = None
    parent_close_policy: str | None = None
    child_id: int | None = None
    search_attributes: dict[str, Any] = field(default_factory=dict)
    memo: dict[str, Any] = field(default_factory=dict)
    # Set when the starting process's own worker takes the run at once (no claim).
    owner: str | None = None
    lease_until: datetime | None = None
    created_at: datetime | None = None

    def record(self) -> RunRecord:
        """The row this run gets when it is inserted (for a worker adopting it directly)."""
        return RunRecord(
            run_id=self.run_id,
            namespace=self.namespace,
            workflow_id=self.workflow_id,
            workflow_type=self.workflow_type,
            task_queue=self.task_queue,
            status="running",
            input=self.input,
            result=None,
            error=None,
            parent_workflow_id=self.parent_workflow_id,
            parent_run_id=self.parent_run_id,
            parent_close_policy=self.parent_close_policy,
            child_id=self.child_id,
            search_attributes=self.search_attributes,
            memo=self.memo,
            continued_run_id=None,
            next_event_seq=1,
            wake_at=self.wake_at,
            owner=self.owner,
            parked_error=None,
            created_at=self.created_at or self.wake_at,
            closed_at=None,
        )

    def insert_params(
        self, dumps: Callable[[Any], Any], when: Callable[[datetime | None], Any]
    ) -> dict[str, Any]:
        """The parameters of every dialect's ``insert_run``, in its JSON and time encodings."""
        return {
            "run_id": self.run_id,
            "namespace": self.namespace,
            "workflow_id": self.workflow_id,
            "workflow_type": self.workflow_type,
            "task_queue": self.task_queue,
            "input": dumps(self.input),
            "parent_workflow_id": self.parent_workflow_id,
            "parent_run_id": self.parent_run_id,
            "parent_close_policy": self.parent_close_policy,
            "child_id": self.child_id,
            "search_attributes": dumps(self.search_attributes),
            "memo": dumps(self.memo),
            "wake_at": when(self.wake_at),
            "owner": self.owner,  # set when the starting process's worker takes it at once
            "lease_until": when(self.lease_until),
            "created_at": when(self.created_at or utcnow()),
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class Message:
    """An inbox row a step sends to another workflow (a child's signal or cancel)."""

    namespace: str
    workflow_id: str
    run_id: str | None
    kind: str
    name: str | None
    payload: list[Any]


@dataclass(frozen=True, kw_only=True, slots=True)
class ActivityTask:
    run_id: str
    activity_id: int
    activity_type: str
    task_queue: str | None
    attempt: int
    scheduled_at: datetime
    visible_at: datetime
    heartbeat_details: list[Any]
    last_failure: dict[str, Any] | None


@dataclass(frozen=True, kw_only=True, slots=True)
class NewTask:
    activity_id: int
    activity_type: str
    task_queue: str | None
    scheduled_at: datetime
    visible_at: datetime
    label: str = ""
    args: list[Any] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True, slots=True)
class ActivityProgress:
    """Where a local activity stands: enough to create its task row on first need."""

    activity_id: int
    activity_type: str
    label: str
    attempt: int
    scheduled_at: datetime
    heartbeat_details: list[Any]


@dataclass(frozen=True, kw_only=True, slots=True)
class RemoteTask:
    """An activity claimed from a task queue by a worker that does not hold its run."""

    namespace: str
    run_id: str
    workflow_id: str
    workflow_type: str
    activity_id: int
    activity_type: str
    task_queue: str
    label: str
    args: list[Any]
    options: dict[str, Any]
    attempt: int
    scheduled_at: datetime
    heartbeat_details: list[Any]

    def report(self, outcome: dict[str, Any]) -> tuple[str, str, str, str, str, list[Any]]:
        """The inbox message that tells the run this activity's ``outcome``: namespace,
        workflow id, run id, kind, name and payload (``insert_inbox``'s arguments)."""
        return (
            self.namespace,
            self.workflow_id,
            self.run_id,
            "activity_result",
            self.label,
            [outcome],
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class InboxItem:
    inbox_id: int
    run_id: str
    kind: str
    name: str | None
    payload: list[Any]
    created_at: datetime
    undecodable: str | None = None  # raw payload text that is not JSON


@dataclass(frozen=True, kw_only=True, slots=True)
class RunClose:
    status: str
    result: Any = None
    error: dict[str, Any] | None = None
    continued_run_id: str | None = None
    had_children: bool = True  # False lets the store skip looking for children to close


@dataclass(kw_only=True, slots=True)
class StepCommit:
    """Everything one workflow step changes, written in one transaction.

    Fenced: it applies only if ``worker_id`` still holds the run and the run's
    history still ends at ``expected_seq - 1``. Not frozen: one is built per step, and
    a frozen dataclass costs about twice as much to build.
    """

    namespace: str
    run_id: str
    worker_id: str
    expected_seq: int
    events: list[HistoryEvent]
    new_tasks: Sequence[NewTask] = ()
    finished_tasks: list[int] = field(default_factory=list)
    consumed_inbox: list[int] = field(default_factory=list)
    wake_at: datetime | None = None
    lease_until: datetime | None = None
    close: RunClose | None = None
    release: bool = False
    children: Sequence[NewRun] = ()
    messages: Sequence[Message] = ()
    replies: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    search_attributes: Mapping[str, Any] | None = None
    continue_as_new: NewRun | None = None
    # The run itself, when this is its very first step taken by the starting process's
    # own worker: inserted in the same transaction (one commit for start + first step).
    start: NewRun | None = None
    # Set by the store: the step appended to the history and left the run's row as it
    # was (a run due before and after the step): the row's next_event_seq then trails
    # the history, and the lease is as the worker's lease loop last renewed it. Never
    # set for a start's first step: the insert wrote the lease (PostgreSQL may still
    # leave the fresh row's next_event_seq behind the history).
    row_kept: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class ListFilter:
    namespace: str
    status: str | None = None
    workflow_type: str | None = None
    workflow_id: str | None = None  # exactly this id (its runs: the web UI's run page)
    workflow_id_prefix: str | None = None
    search_attributes: dict[str, Any] = field(default_factory=dict)
    limit: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ScheduleRecord:
    """A row of the schedules table (times UTC; ``catchup_window`` in seconds)."""

    namespace: str
    schedule_id: str
    workflow_type: str
    task_queue: str
    args: list[Any]
    spec: dict[str, Any]
    overlap: str
    catchup_window: float
    paused: bool
    next_fire_at: datetime | None  # the next nominal fire time
    due_at: datetime | None  # next_fire_at plus its jitter: when a worker fires it
    last_fire_at: datetime | None
    last_run_id: str | None  # the run of the latest start (overlap policies look at it)
    buffered_fire_at: datetime | None  # a fire waiting for the latest run to end
    recent_runs: list[dict[str, Any]]
    created_at: datetime
    updated_at: datetime

    def insert_params(
        self, dumps: Callable[[Any], Any], when: Callable[[datetime | None], Any]
    ) -> dict[str, Any]:
        """The parameters of every dialect's ``insert_schedule``, in its encodings."""
        return {
            "namespace": self.namespace,
            "schedule_id": self.schedule_id,
            "workflow_type": self.workflow_type,
            "task_queue": self.task_queue,
            "args": dumps(self.args),
            "spec": dumps(self.spec),
            "overlap": self.overlap,
            "catchup_window": self.catchup_window,
            "paused": self.paused,
            "next_fire_at": when(self.next_fire_at),
            "due_at": when(self.due_at),
            "now": when(self.created_at),
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class ScheduleChange:
    """What one schedule transaction writes: its new state, runs to start, runs to cancel.

    ``strict``: a start whose workflow id was already used raises
    ``WorkflowAlreadyStartedError``; otherwise that start is dropped (it already fired).
    """

    paused: bool
    next_fire_at: datetime | None
    due_at: datetime | None
    last_fire_at: datetime | None
    last_run_id: str | None
    buffered_fire_at: datetime | None
    recent_runs: list[dict[str, Any]]
    starts: list[NewRun] = field(default_factory=list)
    cancels: list[tuple[str, str]] = field(default_factory=list)  # (workflow_id, run_id)
    strict: bool = False


# Called inside a schedule's transaction with its row and the status of its latest run
# (None when it has none); returns what to write, or None to change nothing.
ScheduleDecision = Callable[[ScheduleRecord, str | None], ScheduleChange | None]


class Store(abc.ABC):
    """A perdure database. Every method is one transaction (or one read)."""

    dialect: str

    @abc.abstractmethod
    async def migrate(self) -> None:
        """Create or upgrade the schema; safe to call from many processes at once."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    # -- client side -----------------------------------------------------
    @abc.abstractmethod
    async def start_run(self, run: NewRun) -> tuple[str, bool]:
        """Insert a run, applying the id policies. Returns (run_id, created)."""

    @abc.abstractmethod
    async def get_run(
        self, namespace: str, workflow_id: str, run_id: str | None = None
    ) -> RunRecord | None:
        """The given run, or the latest run of the workflow id."""

    @abc.abstractmethod
    async def closed_runs(self, run_ids: list[str]) -> set[str]:
        """Which of these runs are no longer running (one query for many waiters)."""

    @abc.abstractmethod
    async def list_runs(self, flt: ListFilter) -> list[RunRecord]:
        """Runs matching the filter, newest first."""

    @abc.abstractmethod
    async def load_history(self, run_id: str) -> list[HistoryEvent]: ...

    @abc.abstractmethod
    async def send_inbox(
        self,
        namespace: str,
        workflow_id: str,
        run_id: str | None,
        kind: str,
        name: str | None,
        payload: list[Any],
    ) -> None:
        """Queue a message for the running run (of ``run_id``, if given).

        Raises ``WorkflowNotFoundError`` when no such run is running.
        """

    @abc.abstractmethod
    async def terminate_run(
        self, namespace: str, workflow_id: str, run_id: str | None, reason: str
    ) -> str:
        """End the running run at once, without running workflow code; returns its run id.

        Raises ``WorkflowNotFoundError`` when no such run is running.
        """

    @abc.abstractmethod
    async def signal_with_start(
        self, run: NewRun, signal: str, payload: list[Any]
    ) -> tuple[str, bool]:
        """Start the run unless one is running, and signal it, in one transaction."""

    @abc.abstractmethod
    async def take_reply(self, reply_id: str) -> dict[str, Any] | None:
        """Remove and return the outcome of an update, if it is there yet."""

    # -- worker side -----------------------------------------------------
    @abc.abstractmethod
    async def claim_runs(
        self,
        *,
        namespace: str,
        worker_id: str,
        task_queues: list[str],
        workflow_types: list[str],
        limit: int,
        lease_until: datetime,
    ) -> list[RunRecord]:
        """Take the lease of runs that are due and unowned (or whose owner died)."""

    @abc.abstractmethod
    async def load_tasks(self, run_id: str) -> list[ActivityTask]: ...

    @abc.abstractmethod
    async def load_run_inbox(self, run_id: str) -> list[InboxItem]: ...

    @abc.abstractmethod
    async def owned_inbox(self, worker_id: str, after_id: int = 0) -> list[InboxItem]:
        """Messages waiting for runs this worker holds, with ids above ``after_id``."""

    @abc.abstractmethod
    def commit_step(self, step: StepCommit) -> Awaitable[None]:
        """Apply a step atomically; raise ``StepRejected`` if the fence fails."""

    @abc.abstractmethod
    async def retry_activity(
        self,
        *,
        run_id: str,
        worker_id: str,
        activity: ActivityProgress,
        visible_at: datetime,
        last_failure: dict[str, Any],
    ) -> None:
        """Record a failed attempt of a local activity and when the next one is due.

        Local activities have no task row until an attempt fails; this creates or
        updates it, so backoff and attempt counts survive a crash.
        """

    @abc.abstractmethod
    async def claim_activity_tasks(
        self,
        *,
        namespace: str,
        worker_id: str,
        task_queues: list[str],
        activity_types: list[str],
        limit: int,
        lease_until: datetime,
    ) -> list[RemoteTask]:
        """Take due activities of these queues whose run lives on some other worker."""

    @abc.abstractmethod
    async def finish_remote_task(
        self, task: RemoteTask, worker_id: str, outcome: dict[str, Any]
    ) -> bool:
        """Delete a claimed task and post its outcome to the run's inbox; False if lost."""

    @abc.abstractmethod
    async def retry_remote_task(
        self,
        task: RemoteTask,
        worker_id: str,
        *,
        attempt: int,
        visible_at: datetime,
        heartbeat_details: list[Any],
        last_failure: dict[str, Any],
    ) -> None:
        """Give a claimed task back with its next attempt due at ``visible_at``."""

    @abc.abstractmethod
    async def release_tasks(self, worker_id: str) -> None:
        """Give back every activity task this worker claimed (graceful shutdown)."""

    @abc.abstractmethod
    async def save_heartbeat(self, run_id: str, activity: ActivityProgress) -> None:
        """Persist the heartbeat details of a running local activity."""

    @abc.abstractmethod
    async def renew_leases(self, worker_id: str, lease_until: datetime) -> dict[str, bool]:
        """Extend every lease this worker holds; return the run ids it still holds.

        Each id maps to whether this renewal extended that run's lease. A run it did not
        extend is locked by someone: by one of the worker's own steps (whose commit
        extends the lease), or by another worker taking the run over after its lease ran
        out. Only a run it extended is surely still this worker's to act on.
        """

    @abc.abstractmethod
    async def release_run(self, run_id: str, worker_id: str, wake_at: datetime | None) -> None: ...

    @abc.abstractmethod
    async def park_run(self, run_id: str, worker_id: str, error: str) -> None:
        """Stop working on a run whose code no longer matches its history."""

    @abc.abstractmethod
    async def unpark_runs(self, namespace: str, workflow_types: list[str]) -> int:
        """Give parked runs of these types another try (new code was deployed)."""

    @abc.abstractmethod
    async def register_worker(
        self, *, worker_id: str, namespace: str, hostname: str, pid: int, task_queues: list[str]
    ) -> None: ...

    @abc.abstractmethod
    async def deregister_worker(self, worker_id: str) -> None: ...

    # -- schedules -------------------------------------------------------
    @abc.abstractmethod
    async def create_schedule(self, schedule: ScheduleRecord) -> None:
        """Insert a schedule; ``ValueError`` if its id is taken in the namespace."""

    @abc.abstractmethod
    async def get_schedule(self, namespace: str, schedule_id: str) -> ScheduleRecord | None: ...

    @abc.abstractmethod
    async def list_schedules(self, namespace: str) -> list[ScheduleRecord]:
        """Every schedule of the namespace, by id."""

    @abc.abstractmethod
    async def delete_schedule(self, namespace: str, schedule_id: str) -> bool:
        """Remove a schedule (its runs stay); False if there was none."""

    @abc.abstractmethod
    async def due_schedules(self, namespace: str, now: datetime, limit: int) -> list[str]:
        """Ids of unpaused schedules with a fire due, or a buffered fire whose run ended."""

    @abc.abstractmethod
    async def change_schedule(
        self,
        namespace: str,
        schedule_id: str,
        decide: ScheduleDecision,
        *,
        skip_locked: bool = False,
    ) -> tuple[bool, list[NewRun]]:
        """In one transaction: lock the schedule, ask ``decide``, write its answer.

        Returns (found, the runs started). ``skip_locked``: a schedule another
        transaction holds counts as not found (a worker firing it moves on).
        """

    # -- wake-ups (optional) -----------------------------------------------
    async def listen(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (in this loop) whenever a run may have become due.

        For a worker: ``await store.listen(self.wake)`` when it starts and
        ``await store.unlisten(self.wake)`` when it stops. Returns once the
        subscription is in place. Stores that cannot push wake-ups (the
        default) do nothing, and workers find work by polling.
        """
        return None

    async def unlisten(self, callback: Callable[[], None]) -> None:
        """Stop calling ``callback``."""
        return None
