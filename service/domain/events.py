"""The ticket event log: who had a ticket, and when."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from ..models import TicketEvent, utcnow
from . import DbSession

_INSERT = insert(TicketEvent.__table__)


def record(
    db: DbSession | Connection,
    kind: str,
    ticket_ids: Iterable[int],
    *,
    actor_id: int | None,
    agent_id: int | None = None,
    at: datetime | None = None,
) -> None:
    """Append one event per ticket, in one INSERT, on the session's or ``db``'s
    connection (Core, no ORM work)."""
    at = at or utcnow()
    rows = [
        {"ticket_id": tid, "kind": kind, "actor_id": actor_id, "agent_id": agent_id, "at": at}
        for tid in ticket_ids
    ]
    if not rows:
        return
    conn = db if isinstance(db, Connection) else db.connection()
    # One row (a sale, most top-ups) as a plain execute: the many-rows path
    # costs more Python than the INSERT itself.
    conn.execute(_INSERT, rows[0] if len(rows) == 1 else rows)


def history(session: DbSession, ticket_id: int) -> list[TicketEvent]:
    return list(
        session.scalars(
            select(TicketEvent).where(TicketEvent.ticket_id == ticket_id).order_by(TicketEvent.id)
        )
    )
