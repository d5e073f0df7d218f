"""PostgreSQL: the starts of runs whose first steps are committed together go as ONE
statement (``insert_runs``), their first steps as another (``commit_steps_lean``); runs
that end in their first step are inserted closed, start and step together, by ONE
statement (``insert_runs_closed``).

Pinned by counting the statements group commit sends (not by time). A start whose
workflow id is taken inserts nothing and its step is not applied; the store then applies
the id policies in a transaction of its own, as it does for a start that goes alone.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from pg_store_kit import new_run, opened, start_with_first_step
from pgserver import Databases

from perdure._errors import WorkflowAlreadyStartedError
from perdure._history import EventType, HistoryEvent
from perdure._store import open_store
from perdure._store._base import NewRun, RunClose, StepCommit, utcnow
from perdure._store._postgres import PostgresStore

W = "w1"


def first_step(workflow_id: str, *, close: bool = False) -> StepCommit:
    if close:
        return start_with_first_step(
            workflow_id,
            W,
            (EventType.WORKFLOW_COMPLETED, {"result": 1}),
            close=RunClose(status="completed", result=1, had_children=False),
            search_attributes={"k": "v"},
        )
    return start_with_first_step(
        workflow_id,
        W,
        (EventType.TIMER_STARTED, {"timer_id": 1}),
        wake_at=utcnow() + timedelta(hours=1),
        search_attributes={"k": "v"},
    )


@pytest.mark.parametrize("close", [False, True], ids=["lean", "closing"])
async def test_starts_committed_together_are_one_statement(
    postgres: Databases, close: bool
) -> None:
    store = await opened(postgres)
    try:
        await store.commit_step(first_step("warm-up"))  # connects group commit's link
        taken = "taken"
        await store.commit_step(first_step(taken))
        group = store._group
        before, committed = group.statements, group.transactions
        steps = [first_step(f"wf-{n}", close=close) for n in range(20)]
        steps.insert(7, first_step(taken, close=close))
        outcomes = await asyncio.gather(
            *(store.commit_step(s) for s in steps), return_exceptions=True
        )
        # One transaction for the batch, plus the taken id's own (its id policy fails it).
        assert group.transactions - committed == 1
        # insert_runs, then the steps (commit_steps_lean); or insert_runs_closed alone.
        assert group.statements - before == (1 if close else 2)
        assert isinstance(outcomes[7], WorkflowAlreadyStartedError)
        assert all(o is None for k, o in enumerate(outcomes) if k != 7)
        for s in steps[:7] + steps[8:]:
            record = await store.get_run_by_id(s.run_id)
            assert record is not None
            assert record.status == ("completed" if close else "running")
            assert record.owner == (None if close else W)
            assert record.input == [1, "é"] and record.search_attributes == {"k": "v"}
            assert record.next_event_seq == 3
            history = await store.load_history(s.run_id)
            assert [e.seq for e in history] == [1, 2]
        assert await store.get_run_by_id(steps[7].run_id) is None
    finally:
        await store.close()


def client_start(workflow_id: str, **policies: str) -> NewRun:
    """A start from a client: no worker of its process takes the run (no owner)."""
    return new_run(workflow_id, arg={"n": workflow_id}, **policies)


async def test_client_starts_arriving_together_are_one_statement(postgres: Databases) -> None:
    """Starts from a process whose worker does not take them (clients) went one pooled
    transaction each (a round trip per statement, a commit each); now by group commit,
    as starts that go with a first step do: the ones arriving together are one
    statement in one transaction. A taken id still meets its id policies."""
    store = await opened(postgres)
    try:
        await store.start_run(client_start("warm-up"))  # connects group commit's link
        running = client_start("taken")
        assert await store.start_run(running) == (running.run_id, True)
        group = store._group
        before, committed = group.statements, group.transactions
        runs = [client_start(f"c-{n}") for n in range(30)]
        outcomes = await asyncio.gather(
            *(store.start_run(r) for r in runs),
            store.start_run(client_start("taken")),
            store.start_run(client_start("taken", id_conflict_policy="use_existing")),
            return_exceptions=True,
        )
        assert outcomes[:30] == [(r.run_id, True) for r in runs]
        assert isinstance(outcomes[30], WorkflowAlreadyStartedError)
        assert outcomes[31] == (running.run_id, False)
        # One statement (insert_runs) in one transaction for the 32 that went together.
        assert group.statements - before == 1
        assert group.transactions - committed == 1
        for r in runs:
            record = await store.get_run_by_id(r.run_id)
            assert record is not None and record.status == "running"
            assert record.owner is None and record.input == [{"n": r.workflow_id}]
        # A policy a plain insert cannot decide goes by its transaction, as before.
        again = client_start("c-0", id_reuse_policy="reject_duplicate")
        with pytest.raises(WorkflowAlreadyStartedError):
            await store.start_run(again)
        assert group.statements - before == 1
    finally:
        await store.close()


async def family(store: PostgresStore, children: int) -> tuple[str, list[str]]:
    """A parent run and its children, all claimed by W; the first child has an update
    waiting."""
    now = utcnow()

    def run(workflow_id: str, **kw: object) -> NewRun:
        return NewRun(
            namespace="default",
            workflow_id=workflow_id,
            run_id=uuid.uuid4().hex,
            workflow_type="job",
            task_queue="q",
            input=[],
            wake_at=now,
            **kw,  # type: ignore[arg-type]
        )

    parent = run('it\'s "quoted"')
    await store.start_run(parent)
    kids = [
        run(
            f"kid-{n}'s",
            parent_workflow_id=parent.workflow_id,
            parent_run_id=parent.run_id,
            parent_close_policy="abandon",
            child_id=n,
        )
        for n in range(children)
    ]
    for kid in kids:
        await store.start_run(kid)
    claimed = await store.claim_runs(
        namespace="default",
        worker_id=W,
        task_queues=["q"],
        workflow_types=["job"],
        limit=100,
        lease_until=now + timedelta(seconds=30),
    )
    assert len(claimed) == children + 1
    await store.send_inbox(
        "default", kids[0].workflow_id, None, "update", "u", [{"update_id": "u1", "args": []}]
    )
    return parent.run_id, [k.run_id for k in kids]


def closing(run_id: str, n: int) -> StepCommit:
    now = utcnow()
    failed = n % 2 == 1
    return StepCommit(
        namespace="default",
        run_id=run_id,
        worker_id=W,
        expected_seq=1,
        events=[
            HistoryEvent(
                seq=1,
                event_type=EventType.WORKFLOW_FAILED if failed else EventType.WORKFLOW_COMPLETED,
                name=None,
                attributes={"n": n},
                created_at=now,
            )
        ],
        lease_until=now + timedelta(seconds=30),
        close=RunClose(
            status="failed" if failed else "completed",
            result=None if failed else {"n": n, "é": [1.5]},
            error={"type": "Boom", "message": f"no {n}"} if failed else None,
            had_children=False,
        ),
    )


async def test_closing_steps_committed_together_do_what_each_alone_does(
    postgres: Databases,
) -> None:
    """Children closing in one batch (one statement) tell their parent, and reject the
    updates still waiting, exactly as each closing step does alone."""
    seen = []
    for group_commit in ("on", "off"):
        url = postgres.url_for(postgres.create(postgres.template("postgres")))
        store = open_store(f"{url}?group_commit={group_commit}")
        assert isinstance(store, PostgresStore)
        await store.migrate()
        try:
            parent, kids = await family(store, 4)
            await store.commit_step(first_step("warm-up"))  # connects the link
            before = store._group.statements
            await asyncio.gather(*(store.commit_step(closing(k, n)) for n, k in enumerate(kids)))
            if group_commit == "on":
                assert store._group.statements - before == 1
            inbox = [(i.kind, i.name, i.payload) for i in await store.load_run_inbox(parent)]
            for item in inbox:
                assert item[2][0].pop("run_id") in kids
            reply = await store.take_reply("u1")
            records = [await store.get_run_by_id(k) for k in kids]
            closed = [(r.status, r.result, r.error, r.owner, r.wake_at) for r in records if r]
            seen.append((inbox, reply, closed))
        finally:
            await store.close()
    merged, alone = seen
    inbox, reply, closed = merged
    # Merged, in the order the steps were submitted; alone, in the order they committed.
    assert [item[2][0]["child_id"] for item in inbox] == [0, 1, 2, 3]
    alone[0].sort(key=lambda item: item[2][0]["child_id"])
    assert merged == alone
    assert reply is not None and reply["rejected"] is True
    assert reply["error"]["message"] == 'workflow "kid-0\'s" closed (completed) first'
    assert closed[1] == ("failed", None, {"type": "Boom", "message": "no 1"}, None, None)
