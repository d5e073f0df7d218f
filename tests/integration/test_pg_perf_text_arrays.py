"""Run ids go to PostgreSQL as a ``text[]`` literal built by perdure, not a Python list.

psycopg dumps a list through a regular expression run at every position of every item
(to decide its quoting: ~20k instructions a run id, 1.6% of a W2 workflow's client CPU
when the close watcher polled). The literal quotes every item instead; the server must
read back exactly the strings that went in, whatever they hold.
"""

from __future__ import annotations

import psycopg
from pgserver import Databases

from perdure._store._postgres_db import text_array
from tests.integration.pg_store_kit import new_run, opened

AWKWARD = [
    "",
    "NULL",
    "null",
    'a "quoted" word',
    "back\\slash",
    "{braces}",
    "comma,separated",
    " leading and trailing ",
    "tab\tand\nnewline",
    "ünïcødé and \u3000 ideographic space",
    "0b5d3f0e-3c55-4a51-9f6c-2a8c0d9a6c1e",
]


def test_the_literal_reads_back_as_the_same_strings(postgres: Databases) -> None:
    url = postgres.url_for(postgres.create(postgres.template("postgres")))
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT %(a)s::text[]", {"a": text_array(AWKWARD)}).fetchone()
        assert row is not None and row[0] == AWKWARD
        empty = conn.execute("SELECT %(a)s::text[]", {"a": text_array([])}).fetchone()
        assert empty is not None and empty[0] == []


async def test_closed_runs_finds_closed_runs_among_many_ids(postgres: Databases) -> None:
    store = await opened(postgres)
    try:
        running = new_run()
        await store.start_run(running)
        ids = [running.run_id, *AWKWARD]
        assert await store.closed_runs(ids) == set()
        await store.terminate_run(running.namespace, running.workflow_id, running.run_id, "done")
        assert await store.closed_runs(ids) == {running.run_id}
    finally:
        await store.close()
