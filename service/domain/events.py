"""The ticket event log: who had a ticket, and when."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import CTE, Select, bindparam, insert, literal, select
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


def logged(kind: str, changed: CTE, *, actor: str, agent: str, at: str) -> Select[Any]:
    """The rows of ``changed`` (a data-modifying CTE over tickets, with RETURNING)
    with one ``kind`` event per row written in the same statement: the change and
    its events are one round trip. ``actor``, ``agent`` and ``at`` name bind
    parameters. PostgreSQL only (SQLite has no data-modifying CTEs)."""
    log = insert(TicketEvent.__table__).from_select(
        ["ticket_id", "kind", "actor_id", "agent_id", "at"],
        select(changed.c.id, literal(kind), bindparam(actor), bindparam(agent), bindparam(at)),
    )
    return select(changed).add_cte(log.cte(f"{changed.name}_events"))


def history(session: DbSession, ticket_id: int) -> list[TicketEvent]:
    return list(
        session.scalars(
            select(TicketEvent).where(TicketEvent.ticket_id == ticket_id).order_by(TicketEvent.id)
        )
    )
