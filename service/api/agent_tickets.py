"""Tickets, agent side: fetch a batch, list what you hold, sell."""

from __future__ import annotations

from flask import Response, current_app, g, jsonify

from .. import errors
from ..auth import current_claims, role_required
from ..domain import assignment
from ..extensions import db
from ..schemas import ErrorSchema, HoldingSchema, TicketSchema, holding_json, ticket_json
from ..state import ticket_queue
from . import TICKET_ID, Blueprint

blp = Blueprint(
    "agent_tickets", __name__, url_prefix="/api/agent/tickets", description="Tickets (agent)"
)


# The agent routes check the account inside the one query they run anyway, and
# serialise with holding_json (HoldingSchema documents the same shape).
@blp.route(
    "/assign/",
    methods=["GET", "POST"],
    operation_id={"POST": "fetchTickets", "GET": "fetchTicketsWithGet"},
)
@blp.response(200, HoldingSchema)
@role_required("agent", load_user=False)
def assign() -> Response:
    """Top up to capacity with the oldest unassigned tickets; return what you hold."""
    if g.get("redis_unavailable"):
        raise errors.RedisUnavailable()
    result = assignment.assign(
        db.session,
        ticket_queue(),
        current_claims(),
        lease_seconds=current_app.config["RESERVATION_LEASE_SECONDS"],
    )
    return jsonify(holding_json(result.tickets, result.capacity))


@blp.route("/", methods=["GET"], operation_id="listHeldTickets")
@blp.response(200, HoldingSchema)
@role_required("agent", load_user=False)
def held() -> Response:
    """What you hold, unsold, in creation order; assigns nothing."""
    result = assignment.holding(db.session, current_claims())
    return jsonify(holding_json(result.tickets, result.capacity))


@blp.route(f"/sell/{TICKET_ID}/", methods=["POST"], operation_id="sellTicket")
@blp.response(200, TicketSchema)
@blp.alt_response(409, schema=ErrorSchema, description="You already sold this ticket")
@role_required("agent", load_user=False)
def sell(ticket_id: int) -> Response:
    """Sell (close) a ticket you hold."""
    sold = assignment.sell(db.session, ticket_queue(), current_claims(), ticket_id)
    return jsonify(ticket_json(sold))
