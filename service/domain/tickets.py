"""Admin-side ticket rules: create, edit, delete, list, queue statistics."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis.exceptions
from sqlalchemy import func, select

from .. import errors
from ..models import Ticket, utcnow
from ..queue import TicketQueue
from . import DbSession, events
from .assignment import forget_held_best_effort
from .faults import fault_point
from .pagination import decode_cursor, page

log = logging.getLogger(__name__)


def get_ticket(session: DbSession, ticket_id: int) -> Ticket:
    ticket = session.get(Ticket, ticket_id)
    if ticket is None:
        raise errors.NotFound(f"no ticket {ticket_id}")
    return ticket


def create_ticket(
    session: DbSession, queue: TicketQueue, *, title: str, description: str, actor_id: int
) -> Ticket:
    """Insert the ticket, then queue it behind every older unassigned ticket.

    If the push fails (Redis down, a crash), the ticket is safe in PostgreSQL
    and the relay worker queues it.
    """
    now = utcnow()
    ticket = Ticket(
        title=title, description=description, status="unassigned", created_at=now, updated_at=now
    )
    session.add(ticket)
    session.flush()
    events.record(session, "created", [ticket.id], actor_id=actor_id, at=now)
    session.commit()
    fault_point("ticket.after_insert")
    try:
        queue.enqueue([ticket.id])
    except redis.exceptions.RedisError as exc:
        log.warning("ticket %s saved but not queued (%s); the relay will queue it", ticket.id, exc)
    return ticket


def update_ticket(session: DbSession, ticket_id: int, changes: dict[str, str]) -> Ticket:
    """Edit title or description. Never changes the holder nor the queue position."""
    ticket = get_ticket(session, ticket_id)
    for name in ("title", "description"):
        if name in changes:
            setattr(ticket, name, changes[name])
    ticket.updated_at = utcnow()
    session.commit()
    return ticket


def delete_ticket(session: DbSession, queue: TicketQueue, ticket_id: int, *, actor_id: int) -> None:
    """Delete a ticket; it is never handed out again, and its holder's slot frees."""
    ticket = session.scalars(
        select(Ticket).where(Ticket.id == ticket_id).with_for_update()
    ).one_or_none()
    if ticket is None:
        session.rollback()
        raise errors.NotFound(f"no ticket {ticket_id}")
    holder = ticket.agent_id if ticket.status == "assigned" else None
    session.delete(ticket)
    events.record(session, "deleted", [ticket_id], actor_id=actor_id, agent_id=ticket.agent_id)
    session.commit()
    # A stale id left in Redis is harmless: the confirm finds no row for it.
    try:
        queue.remove([ticket_id])
    except redis.exceptions.RedisError as exc:
        log.warning("ticket %s deleted but still in the Redis queue (%s)", ticket_id, exc)
    if holder is not None:
        forget_held_best_effort(queue, holder, [ticket_id])


def list_tickets(
    session: DbSession,
    *,
    status: str | None = None,
    agent_id: int | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[Ticket], str | None]:
    query = select(Ticket).order_by(Ticket.id).limit(limit + 1)
    after = decode_cursor(cursor)
    if after is not None:
        query = query.where(Ticket.id > after)
    if status is not None:
        query = query.where(Ticket.status == status)
    if agent_id is not None:
        query = query.where(Ticket.agent_id == agent_id)
    return page(list(session.scalars(query)), limit)


@dataclass(frozen=True)
class QueueStats:
    queued: int
    unassigned: int
    assigned: int
    sold: int
    reserved: int


def queue_stats(session: DbSession, queue: TicketQueue) -> QueueStats:
    """Redis's queue beside PostgreSQL's counts, so drift shows."""
    counts = dict(
        session.execute(select(Ticket.status, func.count()).group_by(Ticket.status)).tuples().all()
    )
    queued, reserved = queue.depth()
    return QueueStats(
        queued=queued,
        unassigned=counts.get("unassigned", 0),
        assigned=counts.get("assigned", 0),
        sold=counts.get("sold", 0),
        reserved=reserved,
    )
