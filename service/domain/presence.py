"""Agents' presence: online, away or offline; when each was last seen; the opt-in rules.

Only online agents are topped up; an away or offline agent's fetch returns
what it holds. An agent sets its own status; an admin may set it too.

When an agent was last seen costs its requests no PostgreSQL write: the token
check notes it in Redis on the round trip it makes anyway, and the workers
write it to ``users.last_seen_at`` a few seconds later, in batches. Two rules
run in the workers when configured (unset: never):

* ``AGENT_IDLE_OFFLINE_SECONDS``: an online agent not seen for that long
  becomes offline;
* ``OFFLINE_RELEASE_SECONDS``: an agent offline for that long has its unsold
  tickets released to their queues, each at its place (``released`` events,
  with no actor).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import DateTime, Integer, column, func, or_, select, update, values

from .. import errors
from ..auth import Claims, ensure_current
from ..models import Ticket, User, utcnow
from ..queue import TicketQueue
from . import DbSession
from .moves import release, requeue_best_effort
from .ticket_state import shorten

log = logging.getLogger(__name__)

# Where the last-seen times were written up to (a Redis cursor), and how many
# agents one pass writes.
SEEN_CURSOR = "presence:seen"
SEEN_BATCH = 5_000


def _agent(session: DbSession, caller: Claims, *, lock: bool = False) -> User:
    query = select(User).where(User.id == caller.user_id)
    if lock:
        query = query.with_for_update(key_share=True)
    user = session.scalars(query).one_or_none()
    ensure_current(user, caller)
    assert user is not None  # (ensure_current raised otherwise)
    if user.role != "agent":
        raise errors.Forbidden("only agents have a status")
    return user


def get_status(session: DbSession, caller: Claims) -> tuple[str, datetime]:
    user = _agent(session, caller)
    return user.status or "online", user.status_since or user.created_at


def set_status(session: DbSession, caller: Claims, status: str) -> tuple[str, datetime]:
    """The agent sets its own presence; ``since`` moves only when it changes."""
    user = _agent(session, caller, lock=True)
    if user.status != status:
        user.status, user.status_since = status, utcnow()
    session.commit()
    return user.status or status, user.status_since or user.created_at


def persist_last_seen(session: DbSession, queue: TicketQueue) -> int:
    """Write the last-seen times Redis noted since the last pass; how many agents."""
    after = float(queue.cursor_text(SEEN_CURSOR) or 0)
    seen = queue.seen_after(after, SEEN_BATCH)
    if not seen:
        return 0
    # One UPDATE … FROM (VALUES …) for the whole batch: an executemany would be
    # one statement per agent with psycopg2 (a thousand agents, a thousand).
    noted = values(
        column("agent", Integer), column("at", DateTime(timezone=True)), name="seen"
    ).data([(agent, datetime.fromtimestamp(when, UTC)) for agent, when in seen])
    session.execute(
        update(User)
        .where(User.id == noted.c.agent, User.is_active)
        .values(last_seen_at=noted.c.at)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    queue.set_cursor_text(SEEN_CURSOR, repr(seen[-1][1]))
    return len(seen)


def idle_to_offline(session: DbSession, idle_seconds: float) -> list[int]:
    """Online agents not seen for ``idle_seconds`` (nor since they went online) become
    offline; returns them."""
    cutoff = utcnow() - timedelta(seconds=idle_seconds)
    idle = list(
        session.scalars(
            update(User)
            .where(
                User.role == "agent",
                User.status == "online",
                User.status_since < cutoff,
                or_(User.last_seen_at.is_(None), User.last_seen_at < cutoff),
            )
            .values(status="offline", status_since=func.now())
            .returning(User.id)
        )
    )
    session.commit()
    if idle:
        log.info("presence: %d idle agent(s) now offline: %s", len(idle), shorten(sorted(idle)))
    return sorted(idle)


def release_offline(session: DbSession, queue: TicketQueue, offline_seconds: float) -> int:
    """Release the unsold tickets of agents offline for ``offline_seconds``; how many."""
    cutoff = utcnow() - timedelta(seconds=offline_seconds)
    holders = list(
        session.scalars(
            select(User.id)
            .where(
                User.role == "agent",
                User.status == "offline",
                User.status_since < cutoff,
                select(Ticket.id)
                .where(Ticket.agent_id == User.id, Ticket.status == "assigned")
                .exists(),
            )
            .order_by(User.id)
        )
    )
    session.rollback()
    released = 0
    for agent_id in holders:
        # The agent's row first, as a fetch and a deactivation lock it; then
        # re-check it is still offline (it may have come back meanwhile).
        agent = session.scalars(
            select(User).where(User.id == agent_id).with_for_update(key_share=True)
        ).one()
        if agent.status != "offline" or agent.status_since is None:
            session.rollback()
            continue
        held = list(
            session.scalars(
                select(Ticket.id)
                .where(Ticket.agent_id == agent_id, Ticket.status == "assigned")
                .order_by(Ticket.id)
            )
        )
        places = release(session, agent_id, held, actor_id=None)
        session.commit()
        requeue_best_effort(queue, agent_id, places)
        released += len(places)
        log.info("presence: released %d ticket(s) of agent %s, offline", len(places), agent_id)
    return released
