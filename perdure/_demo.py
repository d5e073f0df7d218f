"""``perdure demo``: an order workflow, end to end, on an embedded SQLite file.

It reserves inventory, charges a payment (the first attempt fails and is
retried), waits on a durable timer for the warehouse, ships, and prints the
result and the recorded history.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape

import perdure
from perdure import App, RetryPolicy, WorkflowContext
from perdure._cli import console, history_table, redact

DEFAULT_PATH = "perdure-demo.db"

out = console()


@dataclass
class Order:
    order_id: str
    customer_id: str
    item: str
    quantity: int
    unit_price_cents: int


class PaymentGatewayTimeout(Exception):
    """A transient failure: retrying is the right thing to do."""


async def reserve_inventory(order: Order) -> str:
    await asyncio.sleep(0.05)
    out.print(f"  [green]✓[/] reserved {order.quantity} x {order.item}")
    return f"rsv-{order.order_id}"


async def charge_payment(order: Order) -> dict[str, Any]:
    attempt = perdure.activity.info().attempt
    amount = order.quantity * order.unit_price_cents
    if attempt == 1:
        out.print(f"  [red]✗[/] charge_payment attempt {attempt}: gateway timeout (will retry)")
        raise PaymentGatewayTimeout("payment gateway did not answer within 5s")
    out.print(
        f"  [green]✓[/] charged ${amount / 100:.2f} to {order.customer_id} (attempt {attempt})"
    )
    return {"charge_id": f"ch_{secrets.token_hex(4)}", "amount_cents": amount}


def ship_order(order: Order, reservation: str) -> str:  # a plain def: runs in a thread
    tracking = f"1Z{secrets.token_hex(5).upper()}"
    out.print(f"  [green]✓[/] shipped {order.order_id} ({reservation}), tracking {tracking}")
    return tracking


async def order_workflow(ctx: WorkflowContext, order: Order) -> dict[str, Any]:
    reservation = await ctx.activity(reserve_inventory, order)
    charge = await ctx.activity(
        charge_payment, order, retry=RetryPolicy(initial_interval="300ms", maximum_attempts=5)
    )
    ctx.logger.info("waiting for the warehouse (durable timer, 1s)")
    await ctx.sleep("1s", name="wait-for-warehouse")
    tracking = await ctx.activity(ship_order, order, reservation)
    return {
        "order_id": order.order_id,
        "status": "shipped",
        "reservation": reservation,
        "charge_id": charge["charge_id"],
        "total": f"${charge['amount_cents'] / 100:.2f}",
        "tracking_number": tracking,
    }


def build_app(database_url: str) -> App:
    app = App(database_url)
    app.activity(name="reserve_inventory")(reserve_inventory)
    app.activity(name="charge_payment")(charge_payment)
    app.activity(name="ship_order")(ship_order)
    app.workflow(name="order-workflow")(order_workflow)
    return app


class _WorkflowLogLines(logging.Handler):
    """Prints what workflows log through ``ctx.logger`` (silent during replay)."""

    def emit(self, record: logging.LogRecord) -> None:
        out.print(f"  [cyan]…[/] {record.getMessage()}")


def _wipe(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


async def _main(database_url: str) -> None:
    app = build_app(database_url)
    order = Order(
        order_id=f"order-{secrets.token_hex(3)}",
        customer_id="cus_42",
        item="book",
        quantity=2,
        unit_price_cents=2995,
    )
    out.print(f"[bold]perdure demo[/] · a durable order workflow on {redact(database_url)}\n")
    async with app, app.worker():
        handle = await app.start_workflow(order_workflow, order, workflow_id=order.order_id)
        out.print(f"[bold]▶[/] started workflow {handle.workflow_id} (run {handle.run_id})")
        result = await handle.result(timeout=60)
        out.print("[bold green]✔[/] workflow completed; result:")
        out.print_json(data=result)
        events = await handle.history()
    out.print()
    title = f"history of {order.order_id}: {len(events)} events, replayable after any crash"
    out.print(history_table(events, title=title))
    again = f"perdure history {order.order_id} --database-url {database_url}"
    out.print(f"[dim]See it again: {again}[/]")
    browse = f"pip install 'perdure[ui]' && perdure ui --database-url {database_url}"
    out.print(f"[dim]Or in a browser: {escape(browse)}[/]")  # "[ui]" is not markup


def run(database_url: str | None = None) -> None:
    """Run the demo; the default database file is wiped first."""
    if database_url is None:
        path = Path(DEFAULT_PATH)
        _wipe(path)
        database_url = f"sqlite:///{path}"
    workflow_log = logging.getLogger("perdure.workflow")
    handler = _WorkflowLogLines()
    workflow_log.addHandler(handler)
    workflow_log.setLevel(logging.INFO)
    try:
        asyncio.run(_main(database_url))
    finally:
        workflow_log.removeHandler(handler)


if __name__ == "__main__":  # pragma: no cover
    run()
