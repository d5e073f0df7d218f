"""Payloads on the SQLite hot path: what the faster JSON encoder and the short-cuts for
small arguments and scalar results write must read back, and replay, as the same values;
and the refusals they skip for small payloads still happen for large or bad ones."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import perdure
from perdure import WorkflowContext
from perdure._store._sqlite_tx import dumps

ODD = [
    'é ü 中文 \u2028 \x00 tab\t quote" backslash\\',
    "lone surrogate \ud800",
    1.5,
    -0.0,
    1e-7,
    2**70,
    True,
    None,
    {"nested": [1, 2.25, "x"], "empty": {}},
]


@pytest.mark.parametrize("value", [*ODD, float("nan"), float("inf"), float("-inf")])
def test_store_json_reads_back_as_the_same_value(value: Any) -> None:
    back = json.loads(dumps(value))
    if isinstance(value, float) and math.isnan(value):
        assert math.isnan(back)
    else:
        assert back == value and type(back) is type(value)


def build(path: Path) -> perdure.App:
    app = perdure.App(f"sqlite:///{path}")

    @app.activity(name="echo")
    async def echo(value: Any) -> Any:
        return value

    @app.activity(name="nan")
    async def nan() -> float:
        return float("nan")

    @app.workflow(name="echoes")
    async def echoes(ctx: WorkflowContext, values: list[Any]) -> list[Any]:
        out = [await ctx.activity(echo, v) for v in values]
        out.append(math.isnan(await ctx.activity(nan)))
        return out

    @app.workflow(name="sizes")
    async def sizes(ctx: WorkflowContext, n: int) -> str:
        try:
            await ctx.activity(echo, "x" * n)
        except TypeError as exc:
            return str(exc)
        return "sent"

    @app.workflow(name="unserializable")
    async def unserializable(ctx: WorkflowContext) -> str:
        try:
            await ctx.activity(echo, object())
        except TypeError as exc:
            return str(exc)
        return "sent"

    return app


async def test_odd_values_survive_history_and_replay(tmp_path: Path) -> None:
    app = build(tmp_path / "p.db")
    async with app, app.worker():
        handle = await app.start_workflow("echoes", ODD)
        assert await handle.result() == [*ODD, True]
        history = await handle.history()
        await perdure.testing.replay(app, history)
    # Plain SQL reads what was written: valid JSON text with the same values.
    conn = sqlite3.connect(tmp_path / "p.db")
    results = [
        json.loads(r[0])["result"]
        for r in conn.execute(
            "SELECT attributes FROM perdure_history WHERE event_type = 'activity_completed'"
            " AND name = 'echo' ORDER BY seq"
        )
    ]
    conn.close()
    assert results == ODD


async def test_large_and_bad_activity_arguments_are_still_refused(tmp_path: Path) -> None:
    app = build(tmp_path / "p.db")
    async with app, app.worker():
        assert await app.execute_workflow("sizes", 4096) == "sent"
        refused = await app.execute_workflow("sizes", 3 * 1024 * 1024)
        assert "over the 2097152-byte limit" in refused
        message = await app.execute_workflow("unserializable")
        assert "argument 'value' of activity 'echo' is not serializable" in message
