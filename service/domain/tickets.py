"""Admin-side ticket rules: create, edit, delete, list, queue statistics."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import redis.exceptions
from sqlalchemy import func, select

from .. import errors
from ..models import DEFAULT_PRIORITY, GENERAL, Ticket, priority_rank, utcnow
from ..queue import TicketQueue
from . import DbSession, events
from .assignment import forget_held_best_effort
from .faults import fault_point
from .pagination import decode_cursor, page
from .queues import queue_names, require_queue
from .ticket_state import placement

log = logging.getLogger(__name__)


def get_ticket(session: DbSession, ticket_id: int) -> Ticket:
    ticket = session.get(Ticket, ticket_id)
    if ticket is None:
        raise errors.NotFound(f"no ticket {ticket_id}")
    return ticket


def create_ticket(
    session: DbSession,
    queue: TicketQueue,
    *,
    title: str,
    description: str,
    actor_id: int | None,
    queue_name: str = GENERAL,
    priority: str = DEFAULT_PRIORITY,
) -> Ticket:
    """Insert the ticket, then put it in its queue at its place (its priority, then
    its age).

    If the push fails (Redis down, a crash), the ticket is safe in PostgreSQL
    and the relay worker queues it.
    """
    require_queue(session, queue_name)
    now = utcnow()
    ticket = Ticket(
        title=title,
        description=description,
        status="unassigned",
        queue=queue_name,
        priority=priority_rank(priority),
        created_at=now,
        updated_at=now,
    )
    session.add(ticket)
    session.flush()
    events.record(session, "created", [ticket], actor_id=actor_id, at=now)
    session.commit()
    fault_point("ticket.after_insert")
    try:
        queue.enqueue([placement(ticket)])
    except redis.exceptions.RedisError as exc:
        log.warning("ticket %s saved but not queued (%s); the relay will queue it", ticket.id, exc)
    return ticket


def update_ticket(
    session: DbSession,
    queue: TicketQueue,
    ticket_id: int,
    changes: dict[str, Any],
    *,
    actor_id: int | None,
) -> Ticket:
    """Edit the title, description, queue or priority; record who did (``updated``).

    Never changes who holds the ticket. An unassigned ticket moved to another
    queue or priority moves in the order at once (and if Redis is down, the
    relay moves it: the move is in the outbox).
    """
    ticket = session.scalars(
        select(Ticket).where(Ticket.id == ticket_id).with_for_update()
    ).one_or_none()
    if ticket is None:
        session.rollback()
        raise errors.NotFound(f"no ticket {ticket_id}")
    if "queue" in changes:
        require_queue(session, changes["queue"])
    before = placement(ticket)
    for name in ("title", "description", "queue"):
        if name in changes:
            setattr(ticket, name, changes[name])
    if "priority" in changes:
        ticket.priority = priority_rank(changes["priority"])
    ticket.updated_at = utcnow()
    waiting = ticket.status == "unassigned"
    holder = ticket.agent_id
    events.record(session, "updated", [ticket], actor_id=actor_id, agent_id=holder)
    session.commit()
    after = placement(ticket)
    if waiting and after != before:
        fault_point("ticket.after_move")
        moved = after if after.queue == before.queue else replace(after, left=before.queue)
        try:
            queue.enqueue([moved])
        except redis.exceptions.RedisError as exc:
            log.warning("ticket %s moved but not in Redis (%s); the relay will", ticket_id, exc)
    return ticket


def delete_ticket(
    session: DbSession, queue: TicketQueue, ticket_id: int, *, actor_id: int | None
) -> None:
    """Delete a ticket; it is never handed out again, and its holder's slot frees."""
    ticket = session.scalars(
        select(Ticket).where(Ticket.id == ticket_id).with_for_update()
    ).one_or_none()
    if ticket is None:
        session.rollback()
        raise errors.NotFound(f"no ticket {ticket_id}")
    holder = ticket.agent_id if ticket.status == "assigned" else None
    waiting_in = ticket.queue
    events.record(session, "deleted", [ticket], actor_id=actor_id, agent_id=ticket.agent_id)
    session.delete(ticket)
    session.commit()
    # A stale id left in Redis is harmless: the confirm finds no row for it.
    try:
        queue.remove([ticket_id], [waiting_in])
    except redis.exceptions.RedisError as exc:
        log.warning("ticket %s deleted but still in the Redis queue (%s)", ticket_id, exc)
    if holder is not None:
        forget_held_best_effort(queue, holder, [ticket_id])


def list_tickets(
    session: DbSession,
    *,
    status: str | None = None,
    agent_id: int | None = None,
    queue: str | None = None,
    priority: str | None = None,
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
    if queue is not None:
        query = query.where(Ticket.queue == queue)
    if priority is not None:
        query = query.where(Ticket.priority == priority_rank(priority))
    return page(list(session.scalars(query)), limit)


@dataclass(frozen=True)
class QueueStats:
    queued: int
    unassigned: int
    assigned: int
    sold: int
    reserved: int


def queue_stats(session: DbSession, queue: TicketQueue) -> QueueStats:
    """Redis's queues (in all) beside PostgreSQL's counts, so drift shows."""
    counts = dict(
        session.execute(select(Ticket.status, func.count()).group_by(Ticket.status)).tuples().all()
    )
    depths, reserved = queue.depth(queue_names(session))
    return QueueStats(
        queued=sum(depths.values()),
        unassigned=counts.get("unassigned", 0),
        assigned=counts.get("assigned", 0),
        sold=counts.get("sold", 0),
        reserved=reserved,
    )
