"""Tickets, admin side, and the queue's health."""

from __future__ import annotations

from typing import Any

from flask import g

from .. import errors
from ..auth import role_required
from ..domain import events, moves, tickets
from ..extensions import db
from ..models import Ticket
from ..schemas import (
    ErrorSchema,
    QueueStatsSchema,
    TicketAssignSchema,
    TicketCreateSchema,
    TicketEventListSchema,
    TicketPageSchema,
    TicketPatchSchema,
    TicketQuerySchema,
    TicketSchema,
)
from ..state import ticket_queue
from . import TICKET_ID, Blueprint, link

blp = Blueprint("admin_tickets", __name__, url_prefix="/api/admin", description="Tickets (admin)")

NEW_TICKET = {
    "title": "Printer on fire",
    "description": "Third floor, by the kitchen.",
    "queue": "general",
    "priority": "urgent",
}
TICKET = {
    "id": 42,
    **NEW_TICKET,
    "status": "unassigned",
    "agent_id": None,
    "created_at": "2025-03-04T09:20:00+00:00",
    "updated_at": "2025-03-04T09:20:00+00:00",
    "assigned_at": None,
    "sold_at": None,
}
# What a new ticket leads to: each operation on it by its id.
_THE_TICKET = "$response.body#/id"


# role_required sits above @blp.arguments so the token is checked before the body:
# an anonymous or wrong-role caller gets 401/403, never a 400/415 describing the body.
@blp.route("/tickets/", methods=["POST"])
@blp.links(
    201,
    getTicket=link("getTicket", "The new ticket", ticket_id=_THE_TICKET),
    updateTicket=link("updateTicket", "Change its title, queue or priority", ticket_id=_THE_TICKET),
    replaceTicket=link("replaceTicket", "Replace its fields", ticket_id=_THE_TICKET),
    assignTicket=link("assignTicket", "Give it to an agent", ticket_id=_THE_TICKET),
    listTicketEvents=link("listTicketEvents", "Its history", ticket_id=_THE_TICKET),
    deleteTicket=link("deleteTicket", "Delete it", ticket_id=_THE_TICKET),
)
@role_required("admin")
@blp.arguments(TicketCreateSchema, example=NEW_TICKET)
@blp.response(201, TicketSchema, example=TICKET)
def create_ticket(body: dict[str, str]) -> Ticket:
    """Create a ticket; it waits in its queue at its place (its priority, then its age).
    A queue that does not exist is a 400."""
    return tickets.create_ticket(
        db.session,
        ticket_queue(),
        actor_id=g.user.id,
        title=body["title"],
        description=body["description"],
        queue_name=body["queue"],
        priority=body["priority"],
    )


@blp.route("/tickets/", methods=["GET"])
@role_required("admin")
@blp.arguments(TicketQuerySchema, location="query")
@blp.response(200, TicketPageSchema)
def list_tickets(query: dict[str, Any]) -> dict[str, Any]:
    """List tickets in creation order, filtered by status, agent, queue or priority."""
    items, next_cursor = tickets.list_tickets(db.session, **query)
    return {"items": items, "next_cursor": next_cursor}


@blp.route(f"/tickets/{TICKET_ID}/", methods=["GET"])
@blp.response(200, TicketSchema)
@role_required("admin")
def get_ticket(ticket_id: int) -> Ticket:
    """Show one ticket."""
    return tickets.get_ticket(db.session, ticket_id)


@blp.route(f"/tickets/{TICKET_ID}/", methods=["PUT"], operation_id="replaceTicket")
@role_required("admin")
@blp.arguments(TicketCreateSchema)
@blp.response(200, TicketSchema)
def put_ticket(body: dict[str, str], ticket_id: int) -> Ticket:
    """Replace title, description, queue and priority; the holder stays. A queue that
    does not exist is a 400."""
    return tickets.update_ticket(db.session, ticket_queue(), ticket_id, body, actor_id=g.user.id)


@blp.route(f"/tickets/{TICKET_ID}/", methods=["PATCH"], operation_id="updateTicket")
@role_required("admin")
@blp.arguments(TicketPatchSchema)
@blp.response(200, TicketSchema)
def patch_ticket(body: dict[str, str], ticket_id: int) -> Ticket:
    """Change the title, description, queue or priority; the holder stays. An unassigned
    ticket moved to another queue or priority moves in the order at once. A queue that
    does not exist is a 400."""
    return tickets.update_ticket(db.session, ticket_queue(), ticket_id, body, actor_id=g.user.id)


@blp.route(f"/tickets/{TICKET_ID}/release/", methods=["POST"])
@blp.response(200, TicketSchema)
@blp.alt_response(409, schema=ErrorSchema, description="The ticket is unassigned or sold")
@role_required("admin")
def release_ticket(ticket_id: int) -> Ticket:
    """Take a held ticket back from its agent: it waits in its queue again, at its place."""
    return moves.release_ticket(db.session, ticket_queue(), ticket_id, actor_id=g.user.id)


@blp.route(f"/tickets/{TICKET_ID}/assign/", methods=["POST"])
@role_required("admin")
@blp.arguments(TicketAssignSchema, example={"agent_id": 7})
@blp.response(200, TicketSchema)
@blp.alt_response(
    409, schema=ErrorSchema, description="The agent is at its capacity, or the ticket is sold"
)
def assign_ticket(body: dict[str, int], ticket_id: int) -> Ticket:
    """Give a ticket to an active agent, from the pool or from another agent; the agent's
    capacity holds. An agent_id that names no active agent is a 400."""
    return moves.assign_ticket(
        db.session, ticket_queue(), ticket_id, body["agent_id"], actor_id=g.user.id
    )


@blp.route(f"/tickets/{TICKET_ID}/", methods=["DELETE"])
@blp.response(204)
@role_required("admin")
def delete_ticket(ticket_id: int) -> None:
    """Delete a ticket; it is never handed out again and frees its holder's slot."""
    tickets.delete_ticket(db.session, ticket_queue(), ticket_id, actor_id=g.user.id)


@blp.route(f"/tickets/{TICKET_ID}/events/", methods=["GET"], operation_id="listTicketEvents")
@blp.response(200, TicketEventListSchema)
@role_required("admin")
def ticket_history(ticket_id: int) -> dict[str, Any]:
    """Who had this ticket, and when (kept after the ticket is deleted)."""
    items = events.history(db.session, ticket_id)
    if not items:
        raise errors.NotFound(f"no ticket {ticket_id} and no history of one")
    return {"items": items}


@blp.route("/queue/", methods=["GET"], operation_id="getQueueStats")
@blp.response(200, QueueStatsSchema)
@role_required("admin")
def queue_stats() -> tickets.QueueStats:
    """The Redis queues' length (in all) beside PostgreSQL's counts, so drift shows."""
    return tickets.queue_stats(db.session, ticket_queue())
