"""The smallest perdure program: one activity, one workflow, a worker in this process.

    python examples/hello.py

The same app works from the command line too, on a database you name
(run these in examples/):

    export PERDURE_DATABASE_URL=sqlite:///hello.db
    perdure worker hello:app &
    perdure start hello '"Ada"' --app hello:app --wait
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile

from perdure import App, WorkflowContext

FOLDER = tempfile.mkdtemp(prefix="perdure-hello-")
app = App(os.environ.get("PERDURE_DATABASE_URL") or f"sqlite:///{FOLDER}/hello.db")


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
    try:
        asyncio.run(main())
    finally:
        shutil.rmtree(FOLDER, ignore_errors=True)
