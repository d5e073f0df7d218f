"""PostgreSQL: a signal (any inbox message) is ONE statement, sent by group commit.

A signal used to be its own pooled transaction (read the running run, insert the row,
commit): 10,000 signals took 25 s in W6. Now ``insert_inbox_running`` inserts only for
a running run and says whether it did, and group commit sends many of them in one
transaction. These check the batching, and that a message for no running run is still
refused with the same clear error while the others of its batch land.
"""

from __future__ import annotations

import asyncio

import pytest
from pg_store_kit import new_run, opened
from pgserver import Databases

from perdure._errors import WorkflowNotFoundError


@pytest.mark.parametrize("group_commit", ["on", "off"])
async def test_signals_sent_together_commit_together(
    postgres: Databases, group_commit: str
) -> None:
    store = await opened(postgres, group_commit)
    try:
        runs = [new_run() for _ in range(40)]
        for run in runs:
            await store.start_run(run)
        before, written = store._group.transactions, store._group.writes
        await asyncio.gather(
            *(
                store.send_inbox("default", run.workflow_id, None, "signal", "go", [i])
                for i, run in enumerate(runs)
            )
        )
        if group_commit == "on":
            assert store._group.writes - written == 40
            assert store._group.transactions - before <= 4  # not 40
        else:
            assert store._group.writes == written
        for i, run in enumerate(runs):
            items = await store.load_run_inbox(run.run_id)
            assert [(m.kind, m.name, m.payload) for m in items] == [("signal", "go", [i])]
    finally:
        await store.close()


@pytest.mark.parametrize("group_commit", ["on", "off"])
async def test_a_message_for_no_running_run_is_refused_and_the_others_land(
    postgres: Databases, group_commit: str
) -> None:
    store = await opened(postgres, group_commit)
    try:
        live, ended = new_run("live"), new_run("ended")
        for run in (live, ended):
            await store.start_run(run)
        await store.terminate_run("default", "ended", None, "done")
        outcomes = await asyncio.gather(
            store.send_inbox("default", "live", None, "signal", "a", [1]),
            store.send_inbox("default", "nobody", None, "signal", "b", [2]),
            store.send_inbox("default", "ended", None, "signal", "c", [3]),
            store.send_inbox("default", "live", "not-its-run", "signal", "d", [4]),
            store.send_inbox("default", "live", live.run_id, "cancel", None, [None]),
            return_exceptions=True,
        )
        assert outcomes[0] is None and outcomes[4] is None
        errors = [str(e) for e in outcomes[1:4]]
        assert all(isinstance(e, WorkflowNotFoundError) for e in outcomes[1:4]), outcomes
        assert errors == [
            "no running workflow with id 'nobody'",
            "no running workflow with id 'ended' (its last run is terminated)",
            "no running workflow with id 'live' and run id 'not-its-run' (its last run is running)",
        ]
        items = await store.load_run_inbox(live.run_id)
        assert [(m.kind, m.name, m.payload) for m in items] == [
            ("signal", "a", [1]),
            ("cancel", None, [None]),
        ]
        assert await store.load_run_inbox(ended.run_id) == []
    finally:
        await store.close()
