"""The ticket event log: who had a ticket, and when."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import insert, select

from ..models import TicketEvent, utcnow
from . import DbSession


def record(
    session: DbSession,
    kind: str,
    ticket_ids: Iterable[int],
    *,
    actor_id: int | None,
    agent_id: int | None = None,
    at: datetime | None = None,
) -> None:
    """Append one event per ticket, in one multi-row INSERT."""
    at = at or utcnow()
    rows = [
        {"ticket_id": tid, "kind": kind, "actor_id": actor_id, "agent_id": agent_id, "at": at}
        for tid in ticket_ids
    ]
    if rows:
        # Core, on the session's connection: one multi-row INSERT, no ORM work.
        session.connection().execute(insert(TicketEvent.__table__), rows)


def history(session: DbSession, ticket_id: int) -> list[TicketEvent]:
    return list(
        session.scalars(
            select(TicketEvent).where(TicketEvent.ticket_id == ticket_id).order_by(TicketEvent.id)
        )
    )
