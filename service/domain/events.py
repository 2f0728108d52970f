"""The ticket event log: every committed change of a ticket, in order, with its state.

An event is written in the same transaction as the change it records, after
it (service/domain/feed.py relies on that order), and keeps the ticket's row as
the change left it (``data``; for a deletion, as it was), so a stream or a
webhook delivered later tells what this change did.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Select, Update, bindparam, func, insert, literal, select
from sqlalchemy.engine import Connection

from .. import notify
from ..database import writes_in_ctes
from ..models import EVENT_KINDS, Ticket, TicketEvent, utcnow
from . import DbSession

# What integrations call the kinds of events: the SSE ``event:`` field, the
# webhook's X-TQ-Event header and body ``type``, a webhook's ``events`` filter.
EVENT_TYPES = tuple(f"ticket.{kind}" for kind in EVENT_KINDS)
_TIMES = ("created_at", "updated_at", "assigned_at", "sold_at")

_INSERT = insert(TicketEvent.__table__)
_COLUMNS = [c.name for c in Ticket.__table__.columns]


def _iso(value: Any) -> Any:
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).isoformat()
    return value


def snapshot(ticket: Any) -> dict[str, Any]:
    """A ticket row (or model) as the event keeps it: every column, times in ISO 8601
    UTC, as PostgreSQL's ``row_to_json`` writes them in the one-statement form."""
    return {name: _iso(getattr(ticket, name)) for name in _COLUMNS}


def record(
    db: DbSession | Connection,
    kind: str,
    tickets: Iterable[Any],
    *,
    actor_id: int | None,
    agent_id: int | None = None,
    at: datetime | None = None,
) -> None:
    """Append one ``kind`` event per ticket (rows or models, in their state after the
    change), in one INSERT, on the session's or ``db``'s connection."""
    at = at or utcnow()
    rows = [
        {
            "ticket_id": t.id,
            "kind": kind,
            "actor_id": actor_id,
            "agent_id": agent_id,
            "at": at,
            "data": snapshot(t),
        }
        for t in sorted(tickets, key=lambda t: t.id)
    ]
    if not rows:
        return
    conn = db if isinstance(db, Connection) else db.connection()
    # One row (a sale, most top-ups) as a plain execute: the many-rows path
    # costs more Python than the INSERT itself.
    conn.execute(_INSERT, rows[0] if len(rows) == 1 else rows)
    notify.events_written(conn)  # open event streams hear of it once committed


@dataclass(frozen=True)
class LoggedChange:
    """A guarded change of tickets (an ``UPDATE … RETURNING`` of ticket rows) that
    writes one ``kind`` event per changed row. ``actor``, ``agent`` and ``at`` name
    the change's bind parameters the events take their values from.

    On PostgreSQL the change and its events are one statement (a data-modifying
    CTE; the event keeps the row with ``row_to_json``): one round trip, atomic
    even in autocommit. SQLite has no such CTEs: there it is the UPDATE, then
    ``record``, in the caller's transaction.
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
            ["ticket_id", "kind", "actor_id", "agent_id", "at", "data"],
            select(
                changed.c.id,
                literal(self.kind),
                bindparam(self.actor),
                bindparam(self.agent),
                bindparam(self.at),
                func.row_to_json(changed.table_valued()),
            ),
        )
        object.__setattr__(
            self, "one_statement", select(changed).add_cte(log.cte(f"{self.kind}_events"))
        )

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> Sequence[Any]:
        """Run the change on ``conn``; return the changed rows."""
        if writes_in_ctes(conn):
            rows = conn.execute(self.one_statement, params).all()
            if rows:
                notify.events_written(conn)
            return rows
        rows = conn.execute(self.change, params).all()
        record(
            conn,
            self.kind,
            rows,
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


def event_type(kind: str) -> str:
    return f"ticket.{kind}"


def message(event: Any) -> dict[str, Any]:
    """An event (a ``TicketEvent`` or a row of its columns) as streams and webhooks
    send it, before serialization (``schemas.EventMessageSchema`` dumps it):
    ``ticket`` is the ticket as this change left it (as it was, for a deletion),
    or None for an event recorded before the service kept that."""
    return {
        "id": event.id,
        "type": event_type(event.kind),
        "at": event.at,
        "ticket": _ticket(event.data),
        "actor_id": event.actor_id,
        "agent_id": event.agent_id,
    }


def _ticket(data: Mapping[str, Any] | None) -> SimpleNamespace | None:
    if not data:
        return None
    fields = dict(data)
    for name in _TIMES:
        if isinstance(fields.get(name), str):
            fields[name] = datetime.fromisoformat(fields[name])
    return SimpleNamespace(**fields)
