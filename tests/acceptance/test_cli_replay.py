"""`perdure replay`: the pre-deploy check that new code still replays recorded runs."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
from pathlib import Path

from cli_harness import Cli

import perdure

V1 = textwrap.dedent(
    """
    import perdure
    from perdure import WorkflowContext

    app = perdure.App()

    @app.activity(name="charge")
    async def charge(amount: int) -> int:
        return amount

    @app.workflow(name="order")
    async def order(ctx: WorkflowContext, amount: int) -> int:
        paid = await ctx.activity(charge, amount)
        await ctx.wait_for_signal("shipped")
        return paid
    """
)

# v2 inserts a step before the charge, unguarded: old runs would break.
V2_BROKEN = V1.replace(
    "    paid = await ctx.activity(charge, amount)",
    "    await ctx.sleep(1)\n    paid = await ctx.activity(charge, amount)",
)
# v3 guards the same change with ctx.patched: old runs keep their path.
V3_PATCHED = V1.replace(
    "    paid = await ctx.activity(charge, amount)",
    "    if ctx.patched('sleep-first'):\n        await ctx.sleep(1)\n"
    "    paid = await ctx.activity(charge, amount)",
)
assert V1 != V2_BROKEN and V1 != V3_PATCHED


def _load(tmp_path: Path, name: str, source: str) -> perdure.App:
    (tmp_path / f"{name}.py").write_text(source)
    sys.path.insert(0, str(tmp_path))
    try:
        module = __import__(name)
    finally:
        sys.path.remove(str(tmp_path))
    app = module.app
    assert isinstance(app, perdure.App)
    return app


def test_replay_passes_for_compatible_code_and_fails_for_a_breaking_change(
    cli: Cli, tmp_path: Path
) -> None:
    url = cli.env["PERDURE_DATABASE_URL"]
    v1 = _load(tmp_path, "orders_v1", V1)

    async def record() -> None:
        app = perdure.App(url)
        app._registry = v1._registry
        async with app, app.worker():
            handle = await app.start_workflow("order", 42, workflow_id="order-1")
            while len(await handle.history()) < 3:
                await asyncio.sleep(0.05)

    asyncio.run(record())
    (tmp_path / "orders_v2.py").write_text(V2_BROKEN)
    (tmp_path / "orders_v3.py").write_text(V3_PATCHED)

    ok = cli("replay", "orders_v1:app")
    assert ok.returncode == 0, ok.stderr
    assert "order-1" in ok.stdout and "ok" in ok.stdout

    broken = cli("replay", "orders_v2:app")
    assert broken.returncode == 1
    assert "order-1" in broken.stdout and "timer_started" in broken.stdout
    assert "do not replay" in broken.stderr

    assert cli("replay", "orders_v3:app").returncode == 0

    exported = tmp_path / "order-1.json"
    exported.write_text(cli.ok("history", "order-1", "--json"))
    assert json.loads(exported.read_text())[0]["event_type"] == "workflow_started"
    assert cli("replay", "orders_v1:app", str(exported)).returncode == 0
    assert cli("replay", "orders_v2:app", str(exported)).returncode == 1
