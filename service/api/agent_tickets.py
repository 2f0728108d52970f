"""Tickets, agent side: fetch a batch, list what you hold, sell."""

from __future__ import annotations

from flask import Response, current_app, g, jsonify

from .. import errors
from ..auth import current_claims, role_required
from ..domain import assignment, waiting
from ..extensions import db
from ..schemas import (
    ErrorSchema,
    FetchQuerySchema,
    HoldingSchema,
    TicketSchema,
    holding_json,
    ticket_json,
)
from ..state import ticket_queue
from . import RETRY_AFTER, TICKET_ID, Blueprint, link

blp = Blueprint(
    "agent_tickets", __name__, url_prefix="/api/agent/tickets", description="Tickets (agent)"
)

_HELD = {
    "id": 42,
    "title": "Printer on fire",
    "description": "Third floor, by the kitchen.",
    "queue": "general",
    "priority": "urgent",
    "status": "assigned",
    "agent_id": 7,
    "created_at": "2025-03-04T09:20:00+00:00",
    "updated_at": "2025-03-04T09:31:00+00:00",
    "assigned_at": "2025-03-04T09:31:00+00:00",
    "sold_at": None,
}
HOLDING = {"tickets": [_HELD], "capacity": 20}
SOLD = {
    **_HELD,
    "status": "sold",
    "updated_at": "2025-03-04T09:45:00+00:00",
    "sold_at": "2025-03-04T09:45:00+00:00",
}
_SELL_THE_FIRST = link(
    "sellTicket", "Sell the first ticket held", ticket_id="$response.body#/tickets/0/id"
)


# The agent routes check the account inside the one query they run anyway, and
# serialise with holding_json (HoldingSchema documents the same shape).
@blp.route(
    "/assign/",
    methods=["GET", "POST"],
    operation_id={"POST": "fetchTickets", "GET": "fetchTicketsWithGet"},
)
@blp.links(200, sellTicket=_SELL_THE_FIRST)
@blp.response(200, HoldingSchema, example=HOLDING)
@blp.alt_response(
    429,
    schema=ErrorSchema,
    description="Too many fetches waiting (`?wait=`), of this agent or in all; nothing"
    " was assigned",
    headers=RETRY_AFTER,
)
@role_required("agent", load_user=False)
@blp.arguments(FetchQuerySchema, location="query", as_kwargs=True)
def assign(wait: int = 0) -> Response:
    """If you are online, top up to capacity with the best unassigned tickets of your
    queues (higher priority, then older); return what you hold.

    With `?wait=N` (up to 30 seconds), a fetch that would assign nothing because
    your queues are empty (while you are online with room) waits up to N seconds
    for a ticket to arrive in one of them, and answers as soon as it has assigned
    one."""
    if g.get("redis_unavailable"):
        raise errors.RedisUnavailable()
    lease = current_app.config["RESERVATION_LEASE_SECONDS"]
    if wait:
        live = current_app.extensions["live"]
        result = waiting.assign_waiting(
            db.session, ticket_queue(), current_claims(), lease, wait, live
        )
    else:
        result = assignment.assign(db.session, ticket_queue(), current_claims(), lease)
    return jsonify(holding_json(result.tickets, result.capacity))


@blp.route("/", methods=["GET"], operation_id="listHeldTickets")
@blp.links(200, sellTicket=_SELL_THE_FIRST)
@blp.response(200, HoldingSchema, example=HOLDING)
@role_required("agent", load_user=False)
def held() -> Response:
    """What you hold, unsold, in creation order; assigns nothing."""
    result = assignment.holding(db.session, current_claims())
    return jsonify(holding_json(result.tickets, result.capacity))


@blp.route(f"/sell/{TICKET_ID}/", methods=["POST"], operation_id="sellTicket")
@blp.response(200, TicketSchema, example=SOLD)
@blp.alt_response(409, schema=ErrorSchema, description="You already sold this ticket")
@role_required("agent", load_user=False)
def sell(ticket_id: int) -> Response:
    """Sell (close) a ticket you hold."""
    sold = assignment.sell(db.session, ticket_queue(), current_claims(), ticket_id)
    return jsonify(ticket_json(sold))
