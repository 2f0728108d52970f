"""Moving held tickets: back to their queues (a release), or to a chosen agent.

A release returns a ticket to its queue at its place: its priority and its age
decide where it waits again, so it goes ahead of every younger ticket of its
priority. An admin may also give a ticket to an agent (from the pool, or from
another agent); capacity holds there as everywhere: the receiving agent's row
is locked and its held tickets counted, as a fetch's confirm does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import redis.exceptions
from sqlalchemy import func, select, update

from .. import errors
from ..models import Ticket, User, utcnow
from ..queue import Placement, TicketQueue
from . import DbSession, events
from .faults import fault_point
from .reaper import holders
from .ticket_state import placement

log = logging.getLogger(__name__)


def release(
    session: DbSession, agent_id: int, ticket_ids: Sequence[int], *, actor_id: int | None
) -> list[Placement]:
    """Return the agent's held tickets among ``ticket_ids`` to the pool in PostgreSQL
    (the caller commits); where each now waits."""
    if not ticket_ids:
        return []
    now = utcnow()
    rows = session.execute(
        update(Ticket)
        .where(
            Ticket.id.in_(list(ticket_ids)),
            Ticket.agent_id == agent_id,
            Ticket.status == "assigned",
        )
        .values(status="unassigned", agent_id=None, assigned_at=None, updated_at=now)
        .returning(*Ticket.__table__.c)
    ).all()
    events.record(session, "released", rows, actor_id=actor_id, agent_id=agent_id, at=now)
    return sorted((placement(r) for r in rows), key=lambda p: p.ticket_id)


def requeue_best_effort(queue: TicketQueue, agent_id: int, places: Sequence[Placement]) -> None:
    """Put released tickets back in their queues; if Redis is down, the relay does it
    (the release is in the outbox)."""
    if not places:
        return
    try:
        queue.forget_held(agent_id, [p.ticket_id for p in places])
        queue.enqueue(places)
    except redis.exceptions.RedisError as exc:
        log.warning("released tickets of agent %s not requeued (%s); the relay will", agent_id, exc)


def release_ticket(
    session: DbSession, queue: TicketQueue, ticket_id: int, *, actor_id: int | None
) -> Ticket:
    """An admin returns a held ticket to its queue, at its place. 409 unless it is held."""
    ticket = session.scalars(
        select(Ticket).where(Ticket.id == ticket_id).with_for_update()
    ).one_or_none()
    if ticket is None:
        session.rollback()
        raise errors.NotFound(f"no ticket {ticket_id}")
    if ticket.status != "assigned" or ticket.agent_id is None:
        session.rollback()
        raise errors.Conflict(
            f"ticket {ticket_id} is {ticket.status}, not held by an agent", code="not_assigned"
        )
    holder = ticket.agent_id
    places = release(session, holder, [ticket_id], actor_id=actor_id)
    session.commit()
    fault_point("release.after_commit")
    requeue_best_effort(queue, holder, places)
    session.refresh(ticket)
    return ticket


def assign_ticket(
    session: DbSession,
    queue: TicketQueue,
    ticket_id: int,
    agent_id: int,
    *,
    actor_id: int | None,
) -> Ticket:
    """An admin gives a ticket to an agent: from the pool, or moved from another agent.

    400 unless ``agent_id`` is an active agent; 409 ``already_sold`` for a sold
    ticket; 409 ``agent_full`` when the agent holds its capacity. The rows are
    locked as a fetch locks them (agents first, in id order, then the ticket),
    so a fetch of either agent waits and capacity holds.
    """
    found = session.execute(select(Ticket.agent_id).where(Ticket.id == ticket_id)).one_or_none()
    if found is None:
        session.rollback()
        raise errors.NotFound(f"no ticket {ticket_id}")
    current = found.agent_id
    agents = sorted({agent_id, *([current] if current else [])})
    locked = {
        row.id: row
        for row in session.execute(
            select(User.id, User.role, User.is_active, User.capacity)
            .where(User.id.in_(agents))
            .order_by(User.id)
            .with_for_update(key_share=True)
        )
    }
    target = locked.get(agent_id)
    if target is None or target.role != "agent" or not target.is_active:
        session.rollback()
        raise errors.ValidationFailed(
            "agent_id: not an active agent", fields={"agent_id": "not an active agent"}
        )
    ticket = session.scalars(
        select(Ticket).where(Ticket.id == ticket_id).with_for_update()
    ).one_or_none()
    if ticket is None:
        session.rollback()
        raise errors.NotFound(f"no ticket {ticket_id}")
    if ticket.agent_id != current:  # moved between the first look and the locks
        session.rollback()
        raise errors.DatabaseGaveUp("the ticket moved meanwhile; nothing was changed, retry")
    if ticket.status == "sold":
        session.rollback()
        raise errors.Conflict(f"ticket {ticket_id} is already sold", code="already_sold")
    if ticket.agent_id == agent_id:
        session.rollback()
        return ticket  # already this agent's: nothing to do
    held = session.scalar(
        select(func.count()).where(Ticket.agent_id == agent_id, Ticket.status == "assigned")
    )
    if held >= target.capacity:
        session.rollback()
        raise errors.Conflict(
            f"agent {agent_id} holds {held} of its {target.capacity} tickets", code="agent_full"
        )
    previous, waiting_in = ticket.agent_id, ticket.queue
    now = utcnow()
    if previous is not None:
        release(session, previous, [ticket_id], actor_id=actor_id)
    ticket.status, ticket.agent_id = "assigned", agent_id
    ticket.assigned_at = ticket.updated_at = now
    session.flush()
    events.record(session, "assigned", [ticket], actor_id=actor_id, agent_id=agent_id, at=now)
    session.commit()
    fault_point("assign_ticket.after_commit")
    try:
        # Out of the queue (a fetch that popped it meanwhile has its confirm refused),
        # out of the previous holder's set; the new holder's next fetch lists it.
        # A fetch may have popped it (in flight, or dead before its confirm): that
        # agent's held set lists it. A fetch in flight has its confirm refused
        # anyway; a dead one's entry would stay until that agent fetched again.
        popped = previous is None and queue.is_reserved(ticket_id)
        queue.remove([ticket_id], [waiting_in])  # and its reservation
        if previous is not None:
            queue.forget_held(previous, [ticket_id])
        elif popped:
            # Rare (an admin's move of a ticket being handed out): the scan is affordable.
            for other in holders(session, queue, [ticket_id]).get(ticket_id, ()):
                if other != agent_id:
                    queue.forget_held(other, [ticket_id])
            session.rollback()
    except redis.exceptions.RedisError as exc:
        log.warning("ticket %s given to agent %s; Redis not updated (%s)", ticket_id, agent_id, exc)
    return ticket
