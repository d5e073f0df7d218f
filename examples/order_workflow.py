"""An order workflow: activities with retries, a durable timer, a signal, and a saga.

    python examples/order_workflow.py

Two orders run on a worker in this process, on a temporary SQLite file:

* ``order-1`` reserves stock, charges the card (the payment gateway fails the
  first attempt; the activity is retried), waits for a manager's approval
  signal, waits on a durable timer for the warehouse, ships, and returns a
  receipt.
* ``order-2`` is canceled while it waits for approval: the workflow catches
  the cancellation and compensates (refund, release the stock) before it ends.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import perdure
from perdure import App, ApplicationError, RetryPolicy, WorkflowContext

FOLDER = Path(tempfile.mkdtemp(prefix="perdure-orders-"))
app = App(f"sqlite:///{FOLDER / 'orders.db'}")


@dataclass
class LineItem:
    sku: str
    quantity: int
    unit_price_cents: int


@dataclass
class Order:
    order_id: str
    customer_id: str
    items: list[LineItem] = field(default_factory=list)

    @property
    def total_cents(self) -> int:
        return sum(i.quantity * i.unit_price_cents for i in self.items)


# -- activities: the side effects, each retried on failure ---------------------
@app.activity
def reserve_inventory(order: Order) -> str:  # a plain def runs in the worker's thread pool
    if any(i.quantity <= 0 for i in order.items):
        raise ApplicationError("quantity must be positive", type="InvalidOrder", non_retryable=True)
    print(f"  reserved {sum(i.quantity for i in order.items)} item(s) for {order.order_id}")
    return f"rsv-{order.order_id}"


@app.activity(retry=RetryPolicy(initial_interval="200ms", maximum_attempts=5))
async def charge_payment(customer_id: str, amount_cents: int) -> str:
    attempt = perdure.activity.info().attempt
    if attempt == 1:
        print(f"  charge attempt {attempt}: gateway timeout, perdure will retry")
        raise ConnectionError("payment gateway timed out")
    print(f"  charged {amount_cents / 100:.2f} to {customer_id} on attempt {attempt}")
    return f"ch_{secrets.token_hex(4)}"


@app.activity
async def refund_payment(charge_id: str) -> None:
    print(f"  refunded {charge_id}")


@app.activity
async def release_inventory(reservation: str) -> None:
    print(f"  released {reservation}")


@app.activity
async def ship_order(order: Order) -> str:
    tracking = f"1Z{secrets.token_hex(5).upper()}"
    print(f"  shipped {order.order_id}: tracking {tracking}")
    return tracking


# -- the workflow: deterministic orchestration, every step recorded -------------
@app.workflow(name="order-workflow")
async def order_workflow(ctx: WorkflowContext, order: Order) -> dict[str, Any]:
    undo: list[tuple[Any, str]] = []  # compensations, run in reverse if the order is called off
    try:
        reservation = await ctx.activity(reserve_inventory, order)
        undo.append((release_inventory, reservation))
        charge_id = await ctx.activity(charge_payment, order.customer_id, order.total_cents)
        undo.append((refund_payment, charge_id))
        approval = await ctx.wait_for_signal("approval", timeout="1h")
        if not approval or not approval.get("approved"):
            raise ApplicationError("order was not approved", type="NotApproved")
        await ctx.sleep("500ms", name="wait-for-warehouse")
    except (asyncio.CancelledError, ApplicationError):
        # a saga: undo what was done, then let the cancellation (or failure) stand
        for activity, arg in reversed(undo):
            await ctx.activity(activity, arg)
        raise
    tracking = await ctx.activity(ship_order, order)
    return {
        "order_id": order.order_id,
        "status": "shipped",
        "charge_id": charge_id,
        "approved_by": approval["by"],
        "tracking_number": tracking,
    }


async def main() -> None:
    async with app, app.worker():
        book = LineItem("book-42", 2, 2995)
        print("order-1:")
        first = await app.start_workflow(
            order_workflow, Order("order-1", "cus_1", [book]), workflow_id="order-1"
        )
        await asyncio.sleep(0.5)  # the manager takes a moment
        await first.signal("approval", {"approved": True, "by": "manager@example.com"})
        print("  result:", await first.result(timeout=30))

        print("order-2:")
        second = await app.start_workflow(
            order_workflow, Order("order-2", "cus_2", [book]), workflow_id="order-2"
        )
        await asyncio.sleep(0.5)
        await second.cancel("customer changed their mind")
        try:
            await second.result(timeout=30)
        except perdure.WorkflowFailedError as exc:
            print(f"  result: {exc.status} after compensating")
        print("statuses:", [(d.workflow_id, str(d.status)) async for d in app.list_workflows()])


if __name__ == "__main__":
    try:
        asyncio.run(main())
    finally:
        shutil.rmtree(FOLDER, ignore_errors=True)
