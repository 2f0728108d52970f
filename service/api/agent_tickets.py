"""Tickets, agent side: fetch a batch, list what you hold, sell."""

from __future__ import annotations

from flask import current_app, g

from .. import errors
from ..auth import current_user_id, role_required
from ..domain import assignment
from ..extensions import db
from ..models import Ticket
from ..schemas import ErrorSchema, HoldingSchema, TicketSchema
from ..state import ticket_queue
from . import Blueprint

blp = Blueprint(
    "agent_tickets", __name__, url_prefix="/api/agent/tickets", description="Tickets (agent)"
)


# The agent routes check the account inside the one query they run anyway.
@blp.route("/assign/", methods=["GET", "POST"])
@blp.response(200, HoldingSchema)
@role_required("agent", load_user=False)
def assign() -> assignment.Holding:
    """Top up to capacity with the oldest unassigned tickets; return what you hold."""
    if g.get("redis_unavailable"):
        raise errors.RedisUnavailable()
    return assignment.assign(
        db.session,
        ticket_queue(),
        current_user_id(),
        lease_seconds=current_app.config["RESERVATION_LEASE_SECONDS"],
    )


@blp.route("/", methods=["GET"])
@blp.response(200, HoldingSchema)
@role_required("agent", load_user=False)
def held() -> assignment.Holding:
    """What you hold, unsold, in creation order; assigns nothing."""
    return assignment.holding(db.session, current_user_id())


@blp.route("/sell/<int:ticket_id>/", methods=["POST"])
@blp.response(200, TicketSchema)
@blp.alt_response(409, schema=ErrorSchema, description="You already sold this ticket")
@role_required("agent")
def sell(ticket_id: int) -> Ticket:
    """Sell (close) a ticket you hold."""
    return assignment.sell(db.session, ticket_queue(), g.user.id, ticket_id)
