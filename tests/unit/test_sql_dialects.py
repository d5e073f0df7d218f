"""The SQL files of the dialects, and what a PostgreSQL URL may say (no database needed)."""

from __future__ import annotations

import pytest

from perdure._store._queries import load_queries, migration_files

# PostgreSQL runs a whole workflow step as one statement, and group commit sends the
# steps (or starts) of a batch as one; the other dialects use the shared per-table
# statements (which PostgreSQL defines too, for terminate and CockroachDB).
POSTGRES_ONLY = {
    "append_events",
    "commit_step",
    "commit_step_held",
    "commit_steps_held",
    "commit_step_lean",
    "commit_step_slim",
    "commit_steps_lean",
    "commit_steps_close",
    "finish_remote_task_report",
    "get_runs",
    "insert_inbox_many",
    "insert_inbox_running",
    "insert_runs",
    "insert_runs_closed",
    "latest_runs",
    "load_histories",
    "load_runs_tasks",
    "runs_inbox",
}
# SQLite writes a run that its first step commits with already as that step leaves it
# (PostgreSQL starts a run with its first step by statements of its own).
SQLITE_ONLY = {"insert_run_stepped"}


def test_every_dialect_defines_the_same_queries() -> None:
    sqlite, postgres = set(load_queries("sqlite")), set(load_queries("postgres"))
    assert postgres - POSTGRES_ONLY == sqlite - SQLITE_ONLY, (
        f"only in sqlite: {sorted(sqlite - postgres - SQLITE_ONLY)}; "
        f"only in postgres: {sorted(postgres - sqlite - POSTGRES_ONLY)}"
    )
    # CockroachDB overrides a few PostgreSQL blocks and defines nothing new.
    assert set(load_queries("cockroach")) <= postgres


def test_every_dialect_has_the_same_migrations() -> None:
    names = {
        d: [(v, n) for v, n, _ in migration_files(d)] for d in ("sqlite", "postgres", "cockroach")
    }
    assert names["sqlite"] == names["postgres"] == names["cockroach"]


def test_no_percent_sign_trips_psycopg() -> None:
    # psycopg reads %(name)s and %%; a lone % in a query (or its comments) is an error.
    import re

    for dialect in ("postgres", "cockroach"):
        for name, text in load_queries(dialect).items():
            assert not re.search(r"%(?![(%])", text), f"{dialect}:{name} has a bare %"


psycopg = pytest.importorskip("psycopg")


def test_url_parameters() -> None:
    from perdure._store._postgres_db import in_schema, parse_url

    s = parse_url(
        "postgresql://u:p@db.example:5433/app?schema=jobs&pool_max_size=20&sslmode=require"
    )
    assert s.schema == "jobs" and s.channel == "jobs_wake"
    assert (s.pool_min_size, s.pool_max_size, s.group_commit) == (1, 20, True)
    assert s.conninfo == "postgresql://u:p@db.example:5433/app?sslmode=require"
    assert parse_url("postgres://h/db?group_commit=off").group_commit is False
    assert s.group_commit_connections == 4
    assert parse_url("postgres://h/db?group_commit_connections=2").group_commit_connections == 2
    # libpq reads %20 as a space but "+" as a plus: options must reach it as written.
    opts = parse_url("postgresql://h/db?options=-c%20synchronous_commit%3Doff&schema=s")
    assert opts.conninfo == "postgresql://h/db?options=-c%20synchronous_commit%3Doff"
    crdb = parse_url("cockroachdb://root@crdb/defaultdb", default_port=26257)
    assert crdb.conninfo == "postgresql://root@crdb:26257/defaultdb"
    assert in_schema("SELECT * FROM perdure.workflows w JOIN perdure.inbox", "jobs") == (
        "SELECT * FROM jobs.workflows w JOIN jobs.inbox"
    )


@pytest.mark.parametrize(
    "query",
    [
        "schema=Bad-Name",
        "schema=1abc",
        "pool_max_size=0",
        "pool_min_size=5&pool_max_size=2",
        "group_commit=maybe",
        "pool_max_size=ten",
        "group_commit_connections=0",
        "group_commit_connections=-1",
        "group_commit_connections=two",
        "group_commit_connections=1000",
    ],
)
def test_bad_url_parameters_are_refused(query: str) -> None:
    from perdure._store._postgres_db import parse_url

    with pytest.raises(ValueError):
        parse_url(f"postgresql://h/db?{query}")


def test_urls_choose_the_store() -> None:
    import perdure
    from perdure._store import open_store
    from perdure._store._cockroach import CockroachStore
    from perdure._store._postgres import PostgresStore

    assert type(open_store("postgresql://h/db")) is PostgresStore
    assert type(open_store("postgres://h/db")) is PostgresStore
    assert type(open_store("cockroachdb://h/db")) is CockroachStore
    perdure.App("postgresql://h/db")  # no connection is made before first use
