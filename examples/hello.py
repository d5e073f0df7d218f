"""The smallest perdure program: one activity, one workflow, a worker in this process.

    python examples/hello.py

The same app also works from the command line (run these in examples/):

    perdure worker hello:app &
    perdure start hello '"Ada"' --app hello:app --wait
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from perdure import App, WorkflowContext

DATABASE = Path(tempfile.gettempdir()) / "perdure-hello.db"
app = App(f"sqlite:///{DATABASE}")


@app.activity
async def greet(name: str) -> str:
    return f"Hello, {name}!"


@app.workflow
async def hello(ctx: WorkflowContext, name: str) -> str:
    return await ctx.activity(greet, name)


async def main() -> None:
    async with app, app.worker():
        print(await app.execute_workflow(hello, "world"))


if __name__ == "__main__":
    asyncio.run(main())
