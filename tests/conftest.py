"""Shared fixtures: every test that takes ``app`` runs once per backend."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import perdure

BACKENDS = ["sqlite"]


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'perdure.db'}"
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
