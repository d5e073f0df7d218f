"""The store's promises, checked the same way on every backend."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import perdure
from perdure._history import EventType, HistoryEvent
from perdure._store._base import NewRun, StepCommit, StepRejected, utcnow

FAR = datetime(2100, 1, 1, tzinfo=UTC)


async def _claimed_run(app: perdure.App, worker_id: str) -> tuple[str, str]:
    store = await app._get_store()
    run_id = str(uuid.uuid4())
    workflow_id = f"wf-{run_id[:8]}"
    await store.start_run(
        NewRun(
            namespace="default",
            workflow_id=workflow_id,
            run_id=run_id,
            workflow_type="t",
            task_queue="q",
            input=[],
            wake_at=utcnow(),
        )
    )
    claimed = await store.claim_runs(
        namespace="default",
        worker_id=worker_id,
        task_queues=["q"],
        workflow_types=["t"],
        limit=10,
        lease_until=utcnow() + timedelta(seconds=30),
    )
    assert [r.run_id for r in claimed] == [run_id]
    return run_id, workflow_id


def _event(seq: int) -> HistoryEvent:
    return HistoryEvent(
        seq=seq,
        event_type=EventType.TIMER_FIRED,
        name=None,
        attributes={"timer_id": seq},
        created_at=utcnow(),
    )


async def test_a_step_never_hides_a_message_it_did_not_read(app: perdure.App) -> None:
    store = await app._get_store()
    run_id, workflow_id = await _claimed_run(app, "w1")
    await store.send_inbox("default", workflow_id, None, "signal", "late", [1])
    # The worker had not read that message: its step must leave the run due.
    await store.commit_step(
        StepCommit(
            namespace="default",
            run_id=run_id,
            worker_id="w1",
            expected_seq=1,
            events=[_event(1)],
            wake_at=FAR,
            lease_until=utcnow() + timedelta(seconds=30),
        )
    )
    after = await store.get_run("default", workflow_id)
    assert after is not None and after.wake_at is not None and after.wake_at < utcnow()
    [item] = await store.owned_inbox("w1")
    # Once the step consumes it, the run sleeps until its own next time.
    await store.commit_step(
        StepCommit(
            namespace="default",
            run_id=run_id,
            worker_id="w1",
            expected_seq=2,
            events=[_event(2)],
            consumed_inbox=[item.inbox_id],
            wake_at=FAR,
            lease_until=utcnow() + timedelta(seconds=30),
        )
    )
    after = await store.get_run("default", workflow_id)
    assert after is not None and after.wake_at == FAR


async def test_a_fenced_step_of_a_run_that_moved_on_is_rejected(app: perdure.App) -> None:
    store = await app._get_store()
    run_id, _ = await _claimed_run(app, "w1")
    step = StepCommit(
        namespace="default",
        run_id=run_id,
        worker_id="w1",
        expected_seq=1,
        events=[_event(1)],
        lease_until=utcnow() + timedelta(seconds=30),
    )
    await store.commit_step(step)
    intruder = replace(step, worker_id="intruder", expected_seq=2)
    for stale in (step, intruder):  # replayed once more; or from a worker that lost the lease
        try:
            await store.commit_step(stale)
        except StepRejected:
            continue
        raise AssertionError("a stale step was applied")
    assert len(await store.load_history(run_id)) == 1


async def test_a_step_that_skips_a_seq_is_rejected(app: perdure.App) -> None:
    """The fence checks where the history ends, not only that it ends before the step:
    a step whose copy of the history is ahead of the database's is refused too."""
    store = await app._get_store()
    run_id, _ = await _claimed_run(app, "w1")
    first = StepCommit(
        namespace="default",
        run_id=run_id,
        worker_id="w1",
        expected_seq=1,
        events=[_event(1)],
        wake_at=utcnow(),
        lease_until=utcnow() + timedelta(seconds=30),
    )
    await store.commit_step(first)
    for wake_at in (utcnow(), FAR, None):  # a run that stays due; a timer; waiting
        ahead = replace(first, expected_seq=3, events=[_event(3)], wake_at=wake_at)
        try:
            await store.commit_step(ahead)
        except StepRejected:
            continue
        raise AssertionError(f"a step past the history's end was applied ({wake_at})")
    assert [e.seq for e in await store.load_history(run_id)] == [1]
