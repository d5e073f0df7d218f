"""PostgreSQL: the rows of runs are rewritten in place when they can be (HOT updates).

Every step and every lease renewal rewrites its run's row. With full pages (PostgreSQL's
default fillfactor), the new version of a row inserted among others does not fit on its
page: it goes to another page, with a new entry in each of the table's six indexes, and
leaves a dead version that only VACUUM removes. Migration 0005 leaves room in each page;
a renewal of many freshly inserted runs is then mostly in place. (With fillfactor 100 the
same renewal below updates in place none of the first versions of its rows.)
"""

from __future__ import annotations

from datetime import timedelta

import psycopg
from pg_store_kit import hold_many, opened
from pgserver import Databases
from psycopg.rows import dict_row

from perdure._store._base import utcnow

HELD = 600


async def test_a_renewal_of_fresh_runs_rewrites_most_of_them_in_place(
    postgres: Databases,
) -> None:
    store = await opened(postgres)
    try:
        async with await psycopg.AsyncConnection.connect(
            store.settings.conninfo, autocommit=True, row_factory=dict_row
        ) as conn:
            row = await (
                await conn.execute(
                    "SELECT reloptions FROM pg_class WHERE oid = 'perdure.workflows'::regclass"
                )
            ).fetchone()
            assert row is not None and "fillfactor=70" in (row["reloptions"] or [])

            await hold_many(conn, HELD)  # inserted together, filling their pages
            async with conn.transaction():
                rows = await (
                    await conn.execute(
                        store.q["renew_leases"],
                        {"worker_id": "w1", "lease_until": utcnow() + timedelta(minutes=2)},
                    )
                ).fetchall()
                stats = await (
                    await conn.execute(
                        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables"
                        " WHERE schemaname = 'perdure' AND relname = 'workflows'"
                    )
                ).fetchone()
        assert len(rows) == HELD and all(r["renewed"] for r in rows)
        assert stats is not None and stats["n_tup_upd"] == HELD
        assert stats["n_tup_hot_upd"] >= HELD * 0.3, stats
    finally:
        await store.close()
