"""A long-lived entity: a bank account as a workflow that lives as long as the account.

    python examples/entity.py

The workflow holds the account's state in local variables and changes it in
response to messages:

* ``deposit`` and ``withdraw`` are **updates**: the caller waits for the
  handler's return value (the new balance). A validator refuses bad input
  before anything is recorded; a handler that raises fails only that update.
* ``close`` is a **signal**: fire and forget; the workflow returns a statement.
* ``state`` is a **query**: a read-only look at the current state.

An entity that runs for months would grow an endless history, so every
``EVENTS_PER_RUN`` changes it calls ``ctx.continue_as_new(state)``: the run
ends and a fresh run with the same workflow id starts from the carried state,
with an empty history. Clients address the workflow id, so they do not notice.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import perdure
import perdure.testing
from perdure import ApplicationError, QueryRejectedError, UpdateFailedError, WorkflowContext

EVENTS_PER_RUN = 4

app = perdure.testing.new_app()  # a fresh temporary SQLite file


@dataclass
class Account:
    owner: str
    balance: int = 0
    generation: int = 1  # how many runs this account has lived through
    ledger: list[str] = field(default_factory=list)  # the last few entries


@app.workflow(name="account")
async def account(ctx: WorkflowContext, acct: Account) -> Account:
    changes = 0  # changes handled by this run
    closed = False

    def record(entry: str) -> None:
        nonlocal changes
        changes += 1
        acct.ledger = [*acct.ledger, entry][-5:]

    def positive(amount: int) -> None:  # a validator: raising rejects the update unrecorded
        if amount <= 0:
            raise ValueError(f"amount must be positive, got {amount}")

    @ctx.update_handler("deposit", validator=positive)
    def deposit(amount: int) -> int:
        acct.balance += amount
        record(f"+{amount}")
        return acct.balance

    @ctx.update_handler("withdraw", validator=positive)
    def withdraw(amount: int) -> int:
        if amount > acct.balance:
            raise ApplicationError(
                f"insufficient funds: balance {acct.balance}, asked {amount}",
                type="InsufficientFunds",
            )
        acct.balance -= amount
        record(f"-{amount}")
        return acct.balance

    @ctx.signal_handler("close")
    def close() -> None:
        nonlocal closed
        closed = True

    ctx.set_query_handler("state", lambda: acct)

    await ctx.wait_condition(lambda: closed or changes >= EVENTS_PER_RUN)
    if closed:
        return acct
    acct.generation += 1
    ctx.continue_as_new(acct)  # never returns


async def read_state(handle: perdure.WorkflowHandle[Any]) -> dict[str, Any]:
    """Query the entity. Just after a continue-as-new the next run may not have started
    yet (it has no handlers until it runs), so try again for a moment."""
    for _ in range(500):
        try:
            state: dict[str, Any] = await handle.query("state")
            return state
        except QueryRejectedError:
            await asyncio.sleep(0.01)
    raise RuntimeError("the entity did not answer")


async def main() -> None:
    async with app:
        async with app.worker():
            await app.start_workflow(account, Account(owner="ada"), workflow_id="account-ada")
            # A handle on the workflow id follows the entity from run to run; the handle
            # start_workflow returned is pinned to the first run.
            entity = app.get_handle("account-ada")

            for op, amount in [
                ("deposit", 100),
                ("withdraw", 30),
                ("deposit", 55),
                ("deposit", 20),
            ]:
                print(f"{op} {amount:>4}: balance {await entity.update(op, amount, timeout=10)}")
            print("state:", await read_state(entity))  # a new run, carrying the state

            try:
                await entity.update("withdraw", -5, timeout=10)
            except perdure.UpdateRejectedError as exc:
                print("rejected by the validator, nothing recorded:", exc.cause)
            try:
                await entity.update("withdraw", 1_000, timeout=10)
            except UpdateFailedError as exc:
                print("failed in the handler, the entity goes on:", exc.cause)

            for op, amount in [("withdraw", 45), ("deposit", 5), ("deposit", 7), ("withdraw", 12)]:
                print(f"{op} {amount:>4}: balance {await entity.update(op, amount, timeout=10)}")
            await entity.update("deposit", 1, timeout=10)

            await entity.signal("close")
            final = await entity.result(timeout=10)
            print(f"closed: balance {final['balance']}, generation {final['generation']}")
            print("ledger:", final["ledger"])

            print("runs of account-ada, newest first:")
            async for run in app.list_workflows(workflow_id_prefix="account-ada"):
                print(f"  {run.run_id[:8]}  {run.status:<17} {run.history_length:>2} events")
        # No worker holds the run now: the query is answered by replaying its history.
        print("state after closing, by replay:", (await read_state(entity))["balance"])


if __name__ == "__main__":
    folder = Path(app.database_url.removeprefix("sqlite:///")).parent
    try:
        asyncio.run(main())
    finally:
        shutil.rmtree(folder, ignore_errors=True)
