"""A trip-booking saga: book a flight and a hotel, charge the card; undo on the way out.

    python examples/saga.py

Each step that succeeds pushes its compensation on a list. If the workflow is
canceled, or a step fails for good, it runs the compensations in reverse
order and then re-raises, so the run still ends ``canceled`` or ``failed``.
Every step, compensations included, is recorded: a worker that crashes
half-way through compensating resumes where it stopped.

Three trips run on a worker in this process, on a temporary SQLite file:

* ``trip-1`` is confirmed by the traveler and charged: ``completed``.
* ``trip-2`` is canceled while it waits for the traveler's confirmation:
  hotel and flight are released, and the run ends ``canceled``.
* ``trip-3`` is confirmed, but the card is declined: hotel and flight are
  released, and the run ends ``failed``.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import perdure
import perdure.testing
from perdure import ApplicationError, QueryRejectedError, RetryPolicy, WorkflowContext

app = perdure.testing.new_app()  # a fresh temporary SQLite file


@dataclass
class Trip:
    trip_id: str
    traveler: str
    flight: str
    hotel: str
    amount_cents: int
    card: str


# -- activities: the side effects and their compensations ----------------------
@app.activity
async def book_flight(trip: Trip) -> str:
    booking = f"FL-{trip.trip_id}"
    print(f"  [{trip.trip_id}] booked flight {trip.flight}: {booking}")
    return booking


@app.activity
async def book_hotel(trip: Trip) -> str:
    booking = f"HT-{trip.trip_id}"
    print(f"  [{trip.trip_id}] booked hotel {trip.hotel}: {booking}")
    return booking


@app.activity(retry=RetryPolicy(initial_interval="100ms", maximum_attempts=3))
async def charge(trip: Trip) -> str:
    # Stable across retries and workers: a payment API can deduplicate on it.
    key = perdure.activity.info().idempotency_key
    if trip.card.startswith("0000"):
        raise ApplicationError("card declined", type="CardDeclined", non_retryable=True)
    print(f"  [{trip.trip_id}] charged {trip.amount_cents / 100:.2f} (idempotency key {key})")
    return f"PAY-{trip.trip_id}"


@app.activity
async def cancel_flight(booking: str) -> None:
    print(f"  compensation: canceled flight {booking}")


@app.activity
async def cancel_hotel(booking: str) -> None:
    print(f"  compensation: canceled hotel {booking}")


@app.activity
async def refund(payment: str) -> None:
    print(f"  compensation: refunded {payment}")


# -- the workflow ---------------------------------------------------------------
@app.workflow(name="book-trip")
async def book_trip(ctx: WorkflowContext, trip: Trip) -> dict[str, str]:
    status = "booking"
    ctx.set_query_handler("status", lambda: status)
    compensations: list[tuple[Any, str]] = []
    try:
        flight = await ctx.activity(book_flight, trip)
        compensations.append((cancel_flight, flight))
        hotel = await ctx.activity(book_hotel, trip)
        compensations.append((cancel_hotel, hotel))

        status = "awaiting-confirmation"
        if not await ctx.wait_for_signal("confirm", timeout="24h"):
            raise ApplicationError("the traveler did not confirm", type="NotConfirmed")

        status = "charging"
        payment = await ctx.activity(charge, trip)
        compensations.append((refund, payment))
    except (asyncio.CancelledError, Exception):
        # Cancellation arrives as asyncio.CancelledError at the current await;
        # a step that failed for good arrives as perdure.ActivityError.
        status = "compensating"
        for undo, reference in reversed(compensations):
            await ctx.activity(undo, reference)
        raise  # the run ends canceled (or failed), after compensating
    status = "booked"
    return {"flight": flight, "hotel": hotel, "payment": payment}


async def wait_for_status(handle: perdure.WorkflowHandle[Any], wanted: str) -> None:
    """Poll the workflow's "status" query (answered by the live run in this process)."""
    for _ in range(500):
        try:
            if await handle.query("status") == wanted:
                return
        except QueryRejectedError:
            pass  # the run has not started yet: no query handler exists
        await asyncio.sleep(0.01)
    raise RuntimeError(f"{handle.workflow_id} never reached {wanted!r}")


async def outcome(handle: perdure.WorkflowHandle[Any]) -> str:
    try:
        return f"completed {await handle.result(timeout=30)}"
    except perdure.WorkflowFailedError as exc:
        cause = exc.cause
        if isinstance(cause, perdure.ActivityError):  # the activity's own error is its cause
            return f"{exc.status}: {cause} ({cause.cause})"
        return f"{exc.status}: {cause}"


async def main() -> None:
    async with app, app.worker():
        print("trip-1 (confirmed):")
        trip1 = Trip("trip-1", "Ada", "AF 1234", "Hotel du Nord", 84_000, "4242 4242")
        h1 = await app.start_workflow(book_trip, trip1, workflow_id="trip-1")
        await h1.signal("confirm", True)  # buffered until the workflow waits for it
        print("  ->", await outcome(h1))

        print("trip-2 (canceled while awaiting confirmation):")
        trip2 = Trip("trip-2", "Grace", "LH 400", "Hotel Adlon", 120_000, "4242 4242")
        h2 = await app.start_workflow(book_trip, trip2, workflow_id="trip-2")
        await wait_for_status(h2, "awaiting-confirmation")
        await h2.cancel()
        print("  ->", await outcome(h2))

        print("trip-3 (card declined):")
        trip3 = Trip("trip-3", "Alan", "BA 117", "The Savoy", 99_000, "0000 0000")
        h3 = await app.start_workflow(book_trip, trip3, workflow_id="trip-3")
        await h3.signal("confirm", True)
        print("  ->", await outcome(h3))

        print("statuses:")
        async for run in app.list_workflows(workflow_type="book-trip"):
            print(f"  {run.workflow_id}: {run.status} ({run.history_length} events)")
        print("trip-2 history:", ", ".join(e.event_type for e in await h2.history()))


if __name__ == "__main__":
    folder = Path(app.database_url.removeprefix("sqlite:///")).parent
    try:
        asyncio.run(main())
    finally:
        shutil.rmtree(folder, ignore_errors=True)
