"""What happened lately, as the admin's dashboard shows it: the newest events, and
assignments and sales per minute over the last hour.

Both read ``ticket_events`` by its primary key only: the table grows without
bound and has no index on ``at``, so the window's first event is found by a
binary search over ids (events are appended with the time of their change, so
``at`` grows with the id, give or take a transaction in flight), then the
window is one range scan of the key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from ..models import TicketEvent, utcnow
from . import DbSession
from .users import usernames


@dataclass(frozen=True)
class Minute:
    """One minute of the window: when it starts, and how many of each kind."""

    start: datetime
    assigned: int
    sold: int


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def first_event_since(session: DbSession, since: datetime) -> int | None:
    """The smallest event id whose ``at`` is ``since`` or later (None: no such event),
    in about log2(events) lookups by key."""
    low, high = session.execute(select(func.min(TicketEvent.id), func.max(TicketEvent.id))).one()
    if high is None:
        return None
    last_at = session.scalar(select(TicketEvent.at).where(TicketEvent.id == high))
    if last_at is None or _aware(last_at) < since:
        return None
    while low < high:
        middle = (low + high) // 2
        # The first event at or after `middle` (ids may have holes).
        row = session.execute(
            select(TicketEvent.id, TicketEvent.at)
            .where(TicketEvent.id >= middle)
            .order_by(TicketEvent.id)
            .limit(1)
        ).one()
        if _aware(row.at) >= since:
            high = row.id
        else:
            low = row.id + 1
    return int(low)


def per_minute(session: DbSession, minutes: int = 60, now: datetime | None = None) -> list[Minute]:
    """Assignments and sales in each of the last ``minutes`` minutes, oldest first (the
    current minute last)."""
    now = now or utcnow()
    current = now.replace(second=0, microsecond=0)
    start = current - timedelta(minutes=minutes - 1)
    counts: dict[tuple[datetime, str], int] = {}
    first = first_event_since(session, start)
    if first is not None:
        rows = session.execute(
            select(TicketEvent.kind, TicketEvent.at).where(
                TicketEvent.id >= first, TicketEvent.kind.in_(("assigned", "sold"))
            )
        )
        for kind, at in rows:
            minute = _aware(at).astimezone(UTC).replace(second=0, microsecond=0)
            if minute >= start:
                counts[(minute, kind)] = counts.get((minute, kind), 0) + 1
    slots = [start + timedelta(minutes=i) for i in range(minutes)]
    return [
        Minute(slot, counts.get((slot, "assigned"), 0), counts.get((slot, "sold"), 0))
        for slot in slots
    ]


@dataclass(frozen=True)
class FeedItem:
    """An event with the names of who did it and whom it concerns."""

    id: int
    kind: str
    at: datetime
    ticket_id: int
    title: str | None
    queue: str | None
    actor: str | None
    agent: str | None


def recent_events(session: DbSession, limit: int = 25) -> list[FeedItem]:
    """The newest ``limit`` events, newest first, with usernames."""
    events: Sequence[Any] = list(
        session.scalars(select(TicketEvent).order_by(TicketEvent.id.desc()).limit(limit))
    )
    ids = {i for e in events for i in (e.actor_id, e.agent_id) if i is not None}
    names = usernames(session, ids)
    return [
        FeedItem(
            id=e.id,
            kind=e.kind,
            at=_aware(e.at),
            ticket_id=e.ticket_id,
            title=(e.data or {}).get("title"),
            queue=(e.data or {}).get("queue"),
            actor=names.get(e.actor_id) if e.actor_id is not None else None,
            agent=names.get(e.agent_id) if e.agent_id is not None else None,
        )
        for e in events
    ]
