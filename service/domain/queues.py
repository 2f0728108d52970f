"""Queues: named lines of tickets (a team, a skill, a language) and who works them.

A ticket waits in one queue; an agent takes work from any number of them. The
queue ``general`` always exists, and a ticket or an agent that names no queue is
in it, so a deployment that never names one works as a single line.

A queue's name is checked, under a lock on its row, whenever a ticket enters it
or an agent joins it (FOR KEY SHARE), and deleting it takes the row's exclusive
lock: no ticket or agent slips into a queue being deleted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, literal, select, union_all, update
from sqlalchemy.exc import IntegrityError

from .. import errors
from ..models import GENERAL, PRIORITIES, AgentQueue, Queue, Ticket, User, utcnow
from . import DbSession


@dataclass(frozen=True)
class QueueView:
    """A queue with its numbers, as the admin sees it."""

    name: str
    description: str
    created_at: datetime
    unassigned: int
    assigned: int
    agents: int
    agents_online: int
    oldest_unassigned_at: datetime | None


def queue_names(session: DbSession) -> list[str]:
    return list(session.scalars(select(Queue.name).order_by(Queue.name)))


def _unknown(field: str, names: Iterable[str]) -> errors.ValidationFailed:
    listed = ", ".join(repr(n) for n in names)
    return errors.ValidationFailed(
        f"{field}: no such queue: {listed}", fields={field: f"no such queue: {listed}"}
    )


def require_queues(session: DbSession, names: Sequence[str], field: str = "queues") -> None:
    """400 unless every name is a queue; each stays one until the caller commits
    (FOR KEY SHARE: a delete of the queue waits)."""
    found = set(
        session.scalars(
            select(Queue.name).where(Queue.name.in_(list(names))).with_for_update(key_share=True)
        )
    )
    missing = sorted(set(names) - found)
    if missing:
        session.rollback()
        raise _unknown(field, missing)


def require_queue(session: DbSession, name: str) -> None:
    require_queues(session, [name], field="queue")


def _views(session: DbSession, names: Sequence[str] | None) -> list[QueueView]:
    query = select(Queue).order_by(Queue.name)
    if names is not None:
        query = query.where(Queue.name.in_(list(names)))
    queues = list(session.scalars(query))
    if not queues:
        return []
    wanted = [q.name for q in queues]
    tickets = session.execute(
        select(Ticket.queue, Ticket.status, func.count())
        .where(Ticket.queue.in_(wanted), Ticket.status.in_(("unassigned", "assigned")))
        .group_by(Ticket.queue, Ticket.status)
    ).all()
    counts = {(q, status): n for q, status, n in tickets}
    members = session.execute(
        select(
            AgentQueue.queue,
            func.count(),
            func.count().filter((User.status == "online") & User.is_active),
        )
        .join(User, User.id == AgentQueue.agent_id)
        .where(AgentQueue.queue.in_(wanted))
        .group_by(AgentQueue.queue)
    ).all()
    agents = {q: (n, online) for q, n, online in members}
    oldest = {q: _oldest_waiting(session, q) for q in wanted}
    return [
        QueueView(
            name=q.name,
            description=q.description,
            created_at=q.created_at,
            unassigned=counts.get((q.name, "unassigned"), 0),
            assigned=counts.get((q.name, "assigned"), 0),
            agents=agents.get(q.name, (0, 0))[0],
            agents_online=agents.get(q.name, (0, 0))[1],
            oldest_unassigned_at=oldest[q.name],
        )
        for q in queues
    ]


def _oldest_waiting(session: DbSession, name: str) -> datetime | None:
    """When the queue's oldest unassigned ticket was created: the first of each
    priority (one probe of the (queue, priority, id) index each), then the oldest."""
    firsts = [
        select(Ticket.id.label("id"), Ticket.created_at.label("at"))
        .where(
            Ticket.queue == name,
            Ticket.status == "unassigned",
            Ticket.priority == literal(rank),
        )
        .order_by(Ticket.id)
        .limit(1)
        .subquery()
        .select()
        for rank in range(len(PRIORITIES))
    ]
    candidates = union_all(*firsts).subquery()
    at: datetime | None = session.scalar(select(candidates.c.at).order_by(candidates.c.id).limit(1))
    return at


def list_queues(session: DbSession) -> list[QueueView]:
    return _views(session, None)


def get_queue(session: DbSession, name: str) -> QueueView:
    views = _views(session, [name])
    if not views:
        raise errors.NotFound(f"no queue {name!r}")
    return views[0]


def create_queue(session: DbSession, *, name: str, description: str = "") -> QueueView:
    if session.get(Queue, name) is not None:
        raise errors.Conflict(f"queue {name!r} exists", code="duplicate")
    session.add(Queue(name=name, description=description, created_at=utcnow()))
    try:
        session.commit()
    except IntegrityError:
        session.rollback()  # created meanwhile by another admin
        raise errors.Conflict(f"queue {name!r} exists", code="duplicate") from None
    return get_queue(session, name)


def update_queue(session: DbSession, name: str, *, description: str) -> QueueView:
    queue = session.get(Queue, name)
    if queue is None:
        raise errors.NotFound(f"no queue {name!r}")
    queue.description = description
    session.commit()
    return get_queue(session, name)


def delete_queue(session: DbSession, name: str) -> None:
    """Delete an empty queue; 409 while a ticket waits or is held in it, or an agent
    belongs to it, and always for ``general``."""
    if name == GENERAL:
        raise errors.Conflict("the general queue always exists", code="queue_in_use")
    # The row's exclusive lock: a ticket entering or an agent joining waits, then
    # finds the queue gone.
    queue = session.scalars(select(Queue).where(Queue.name == name).with_for_update()).one_or_none()
    if queue is None:
        session.rollback()
        raise errors.NotFound(f"no queue {name!r}")
    busy = session.scalar(
        select(func.count())
        .select_from(Ticket)
        .where(Ticket.queue == name, Ticket.status.in_(("unassigned", "assigned")))
    )
    members = session.scalar(
        select(func.count()).select_from(AgentQueue).where(AgentQueue.queue == name)
    )
    if busy or members:
        session.rollback()
        raise errors.Conflict(
            f"queue {name!r} is in use: {busy} unassigned or assigned ticket(s),"
            f" {members} agent(s)",
            code="queue_in_use",
        )
    session.execute(delete(Queue).where(Queue.name == name))
    session.commit()


def set_agent_queues(session: DbSession, agent_id: int, names: Sequence[str]) -> None:
    """Make the agent's queues exactly ``names`` (the caller commits): its rows in
    agent_queues, and the names on its own row, which the fetch reads."""
    require_queues(session, names)
    wanted = sorted(set(names))
    session.execute(delete(AgentQueue).where(AgentQueue.agent_id == agent_id))
    session.add_all(AgentQueue(agent_id=agent_id, queue=name) for name in wanted)
    session.execute(
        update(User).where(User.id == agent_id).values(queue_names=joined_names(wanted))
    )


def joined_names(names: Sequence[str]) -> str:
    """Queue names as ``users.queue_names`` keeps them: sorted, comma-separated."""
    return ",".join(sorted(set(names)))


def split_names(joined: str | None) -> tuple[str, ...]:
    return tuple(joined.split(",")) if joined else ()


def agent_queues(session: DbSession, agent_ids: Sequence[int]) -> dict[int, list[str]]:
    """Each agent's queues, by name."""
    found: dict[int, list[str]] = {a: [] for a in agent_ids}
    rows = session.execute(
        select(AgentQueue.agent_id, AgentQueue.queue)
        .where(AgentQueue.agent_id.in_(list(agent_ids)))
        .order_by(AgentQueue.agent_id, AgentQueue.queue)
    )
    for agent_id, name in rows:
        found[agent_id].append(name)
    return found
