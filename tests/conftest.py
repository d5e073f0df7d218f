"""Shared fixtures: every test that takes ``app`` runs once per backend.

Backends: ``sqlite`` (a fresh file per test) and ``postgres`` (a fresh database per
test, cloned from a migrated template on a server this session starts; see
``pgserver.py``). Without PostgreSQL binaries the postgres runs are skipped, except
under ``CI=true``, where that is a failure. ``cockroach`` runs the CockroachDB store
against PostgreSQL (``PERDURE_TEST_COCKROACH_EMULATION``): polling and injected
serialization failures; tests ask for it with ``@pytest.mark.parametrize("database_url",
["cockroach"], indirect=True)``, and ``PERDURE_TEST_BACKENDS=sqlite,postgres,cockroach``
runs every ``app`` test on it too.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from browser import chromium_page, why_no_browser
from pgserver import Databases, Unavailable, postgres_databases

import perdure

if TYPE_CHECKING:
    from playwright.async_api import Page

BACKENDS = os.environ.get("PERDURE_TEST_BACKENDS", "sqlite,postgres").split(",")


def _on_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def _postgres() -> Iterator[Databases | str]:
    """The session's PostgreSQL databases, or the reason there are none."""
    try:
        with postgres_databases() as dbs:
            yield dbs
    except Unavailable as exc:
        yield str(exc)


@pytest.fixture
def postgres(_postgres: Databases | str) -> Databases:
    if isinstance(_postgres, str):
        if _on_ci():
            pytest.fail(f"CI=true but PostgreSQL is unavailable: {_postgres}")
        pytest.skip(_postgres)
    return _postgres


@pytest.fixture
async def page() -> AsyncIterator[Page]:
    """A page of a headless chromium of the test's own (``browser.py``), for ``async def``
    tests. Skipped without chromium or playwright, except under ``CI=true``."""
    missing = why_no_browser()
    if missing is not None:
        if _on_ci():
            pytest.fail(f"CI=true but no browser: {missing}")
        pytest.skip(missing)
    async with chromium_page() as opened:
        yield opened


@pytest.fixture(params=BACKENDS)
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'perdure.db'}"
    dbs: Databases = request.getfixturevalue("postgres")
    if request.param == "postgres":
        return dbs.url_for(dbs.create(dbs.template("postgres")))
    if request.param == "cockroach":
        monkeypatch.setenv("PERDURE_TEST_COCKROACH_EMULATION", "1")
        return dbs.url_for(dbs.create(dbs.template("cockroach")), "cockroachdb")
    raise AssertionError(request.param)


@pytest.fixture
async def app(database_url: str) -> AsyncIterator[perdure.App]:
    app = perdure.App(database_url)
    await app.migrate()
    yield app
    await app.close()


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("PERDURE_TEST", "1")
