"""PostgreSQL: group commit's connection keeps its socket registered between lone statements.

A sequential workflow's steps are lone statements on the ``Link``; registering the socket
with the event loop and removing it again for each one cost two system calls and the
selector's bookkeeping. The socket now stays registered, and is handed back whenever
psycopg waits on it itself (a batch, the idle check, closing). These check that it is
registered once, and that nothing hangs or mixes up results when lone statements, psycopg
batches, an idle connection the server closed, and reconnections follow each other.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from pgserver import Databases

from perdure._store._postgres_db import Conn, Database, GroupCommit, Link, RawQuery, parse_url

ECHO = RawQuery.parse("SELECT %(k)s::integer")


def database(postgres: Databases) -> Database:
    url = postgres.url_for(postgres.create(postgres.template("postgres")))
    return Database(parse_url(url), generic_plans=True)


async def echo(link: Link, k: int) -> Any:
    async def fn(conn: Conn) -> Any:
        return await link.first(conn, ECHO, {"k": k})

    return await asyncio.wait_for(link.run(fn), 10)


async def test_lone_statements_register_the_socket_once(
    postgres: Databases, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = database(postgres)
    link = Link(db)
    assert await echo(link, 0) == 0  # connected (psycopg waits on its own) and prepared
    loop = asyncio.get_running_loop()
    added: list[int] = []
    add_reader = loop.add_reader

    def counted(fd: int, callback: Any, *args: Any) -> None:
        added.append(fd)
        add_reader(fd, callback, *args)

    monkeypatch.setattr(loop, "add_reader", counted)
    try:
        assert [await echo(link, k) for k in range(20)] == list(range(20))
        assert len(added) <= 1  # per statement it was one add and one remove each
    finally:
        await link.close()
        await db.close()
    assert link._watched is None


async def test_lone_statements_batches_and_lost_connections_interleave(
    postgres: Databases,
) -> None:
    db = database(postgres)
    group = GroupCommit(db)
    link = group._links[0]
    try:
        assert await echo(link, 1) == 1
        # A batch of several writes goes through psycopg on the same socket.
        values = await asyncio.wait_for(
            asyncio.gather(*(group.submit((ECHO, {"k": k})) for k in range(5))), 10
        )
        assert values == [[k] for k in range(5)]
        assert [await echo(link, k) for k in range(3)] == [0, 1, 2]
        # The server closes the idle connection while its socket is registered.
        conn = await link.connection()
        pid = conn.info.backend_pid
        async with await psycopg.AsyncConnection.connect(
            db.settings.conninfo, autocommit=True
        ) as admin:
            await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        await asyncio.sleep(0.2)  # the loop sees the socket readable with no one waiting
        assert await echo(link, 7) == 7  # connected anew
        assert (await link.connection()).info.backend_pid != pid
        values = await asyncio.wait_for(
            asyncio.gather(*(group.submit((ECHO, {"k": k})) for k in range(3))), 10
        )
        assert values == [[0], [1], [2]]
        assert await echo(link, 8) == 8
    finally:
        await group.close()
        await db.close()
