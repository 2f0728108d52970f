"""The agents' workload, as an admin sees it: presence, queues, held against capacity."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select

from ..models import AgentQueue, Ticket, User
from ..queue import TicketQueue
from . import DbSession
from .pagination import decode_cursor, page
from .queues import agent_queues


@dataclass(frozen=True)
class Workload:
    id: int
    username: str
    is_active: bool
    status: str
    status_since: datetime
    queues: list[str]
    capacity: int
    held: int  # unsold tickets now
    sold: int  # all time
    last_seen_at: datetime | None


def list_workload(
    session: DbSession,
    queue: TicketQueue,
    *,
    queue_name: str | None = None,
    status: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[Workload], str | None]:
    """Agents by id, a page at a time, filtered by queue or presence.

    ``last_seen_at`` is the fresher of PostgreSQL's (written lazily by the
    workers) and Redis's (noted on every agent request), when Redis answers.
    """
    query = select(User).where(User.role == "agent").order_by(User.id).limit(limit + 1)
    after = decode_cursor(cursor)
    if after is not None:
        query = query.where(User.id > after)
    if status is not None:
        query = query.where(User.status == status)
    if queue_name is not None:
        query = query.where(
            select(AgentQueue.agent_id)
            .where(AgentQueue.agent_id == User.id, AgentQueue.queue == queue_name)
            .exists()
        )
    agents, next_cursor = page(list(session.scalars(query)), limit)
    ids = [a.id for a in agents]
    counts = {
        (agent_id, state): n
        for agent_id, state, n in session.execute(
            select(Ticket.agent_id, Ticket.status, func.count())
            .where(Ticket.agent_id.in_(ids), Ticket.status.in_(("assigned", "sold")))
            .group_by(Ticket.agent_id, Ticket.status)
        )
    }
    queues = agent_queues(session, ids)
    try:
        fresh = queue.seen(ids)
    except Exception:  # noqa: BLE001 - Redis is only fresher; PostgreSQL's time stands
        fresh = {}
    items = [
        Workload(
            id=a.id,
            username=a.username,
            is_active=a.is_active,
            status=a.status or "online",
            status_since=a.status_since or a.created_at,
            queues=queues[a.id],
            capacity=a.capacity or 0,
            held=counts.get((a.id, "assigned"), 0),
            sold=counts.get((a.id, "sold"), 0),
            last_seen_at=_latest(a.last_seen_at, fresh.get(a.id)),
        )
        for a in agents
    ]
    return items, next_cursor


def _latest(stored: datetime | None, noted: float | None) -> datetime | None:
    if noted is None:
        return stored
    seen = datetime.fromtimestamp(noted, UTC)
    if stored is None:
        return seen
    stored = stored if stored.tzinfo else stored.replace(tzinfo=UTC)
    return max(stored, seen)
