"""The ticket event log: who had a ticket, and when."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Select, Update, bindparam, insert, literal, select
from sqlalchemy.engine import Connection

from ..database import writes_in_ctes
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


@dataclass(frozen=True)
class LoggedChange:
    """A guarded change of tickets (an ``UPDATE … RETURNING`` of ticket rows) that
    writes one ``kind`` event per changed row. ``actor``, ``agent`` and ``at`` name
    the change's bind parameters the events take their values from.

    On PostgreSQL the change and its events are one statement (a data-modifying
    CTE): one round trip, atomic even in autocommit. SQLite has no such CTEs: there
    it is the UPDATE, then ``record``, in the caller's transaction.
    """

    kind: str
    change: Update
    actor: str
    agent: str
    at: str
    one_statement: Select[Any] = field(init=False)

    def __post_init__(self) -> None:
        changed = self.change.cte(f"{self.kind}_rows")
        log = insert(TicketEvent.__table__).from_select(
            ["ticket_id", "kind", "actor_id", "agent_id", "at"],
            select(
                changed.c.id,
                literal(self.kind),
                bindparam(self.actor),
                bindparam(self.agent),
                bindparam(self.at),
            ),
        )
        object.__setattr__(
            self, "one_statement", select(changed).add_cte(log.cte(f"{self.kind}_events"))
        )

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> Sequence[Any]:
        """Run the change on ``conn``; return the changed rows."""
        if writes_in_ctes(conn):
            return conn.execute(self.one_statement, params).all()
        rows = conn.execute(self.change, params).all()
        record(
            conn,
            self.kind,
            sorted(row.id for row in rows),
            actor_id=params[self.actor],
            agent_id=params[self.agent],
            at=params[self.at],
        )
        return rows


def history(session: DbSession, ticket_id: int) -> list[TicketEvent]:
    return list(
        session.scalars(
            select(TicketEvent).where(TicketEvent.ticket_id == ticket_id).order_by(TicketEvent.id)
        )
    )
