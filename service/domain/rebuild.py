"""Rebuild Redis from PostgreSQL: the queue, every agent's held set, the blocklist."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select

from ..models import RevokedToken, Ticket, utcnow
from ..queue import TicketQueue
from . import DbSession

BATCH = 10_000


@dataclass
class RebuildSummary:
    queued: int = 0
    held_agents: int = 0
    revoked: int = 0


def rebuild(session: DbSession, queue: TicketQueue) -> RebuildSummary:
    """Write every unassigned ticket, held set and revocation PostgreSQL knows into Redis."""
    summary = RebuildSummary()
    batch: list[int] = []
    for ticket_id in session.scalars(
        select(Ticket.id)
        .where(Ticket.status == "unassigned")
        .order_by(Ticket.id)
        .execution_options(yield_per=BATCH)
    ):
        batch.append(ticket_id)
        if len(batch) >= BATCH:
            summary.queued += len(batch)
            queue.push(batch)
            batch = []
    if batch:
        summary.queued += len(batch)
        queue.push(batch)

    held: dict[int, list[int]] = {}
    for agent_id, ticket_id in session.execute(
        select(Ticket.agent_id, Ticket.id).where(Ticket.status == "assigned")
    ):
        held.setdefault(agent_id, []).append(ticket_id)
    for agent_id, ids in held.items():
        queue.resync_held(agent_id, ids)
    summary.held_agents = len(held)

    now = utcnow()
    for token in session.scalars(select(RevokedToken).where(RevokedToken.expires_at > now)):
        expires = (
            token.expires_at
            if token.expires_at.tzinfo
            else token.expires_at.replace(tzinfo=now.tzinfo)
        )
        queue.revoke(token.jti, int((expires - now).total_seconds()) + 1)
        summary.revoked += 1
    queue.mark_built(uuid.uuid4().hex)
    session.rollback()
    return summary
