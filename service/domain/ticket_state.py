"""Reading tickets' states by id: what the hot path and the background loops share.

Every reader here can lock the rows it reads (``FOR UPDATE``, in id order as a
confirm locks them), for callers that change Redis on PostgreSQL's word: the
state read cannot change until Redis agrees with it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from sqlalchemy import BigInteger, ColumnElement, any_, literal, select
from sqlalchemy.dialects.postgresql import ARRAY

from ..models import Ticket
from ..queue import Placement, score
from . import DbSession

# Ids read from PostgreSQL per round trip in the scans. Large enough that a
# million tickets take a hundred rounds; small enough that the row locks a
# batch takes are held for milliseconds.
BATCH = 10_000

# (phase, done, total): called as a long scan advances.
Progress = Callable[[str, int, int], None]


def ids_in(session: DbSession, column: Any, ids: Sequence[int]) -> ColumnElement[bool]:
    """``column IN ids``; one array parameter on PostgreSQL instead of thousands."""
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(literal(list(ids), ARRAY(BigInteger)))
    return column.in_(list(ids))


def shorten(ids: Sequence[int], limit: int = 20) -> str:
    """Ids for a log line: all of them when few, else the first ones and a count."""
    if len(ids) <= limit:
        return ", ".join(map(str, ids))
    return ", ".join(map(str, ids[:limit])) + f", ... ({len(ids)} in all)"


class State(NamedTuple):
    """A ticket's state as the queues see it."""

    status: str
    agent_id: int | None
    queue: str
    priority: int  # 0 urgent .. 3 low

    def placement(self, ticket_id: int) -> Placement:
        """Where the ticket waits when unassigned: its queue, at its priority and age."""
        return Placement(ticket_id, self.queue, score(self.priority, ticket_id))


def placement(row: Any) -> Placement:
    """The place of a ticket row (with id, queue and priority) in its queue."""
    return Placement(row.id, row.queue, score(row.priority, row.id))


def ticket_states(
    session: DbSession, ids: Sequence[int], *, lock: bool = False
) -> dict[int, State]:
    """The state of those of ``ids`` that exist (a missing one was deleted).

    With ``lock`` the rows are locked in id order, as a confirm locks them, until
    the caller ends the transaction.
    """
    query = select(Ticket.id, Ticket.status, Ticket.agent_id, Ticket.queue, Ticket.priority).where(
        ids_in(session, Ticket.id, ids)
    )
    if lock:
        query = query.order_by(Ticket.id).with_for_update()
    return {
        row.id: State(row.status, row.agent_id, row.queue, row.priority)
        for row in session.connection().execute(query)
    }


def unassigned_among(
    session: DbSession, ids: Sequence[int], *, lock: bool = False
) -> dict[int, Placement]:
    """Those of ``ids`` that are unassigned, by id (ascending), each with its place;
    with ``lock``, row-locked.

    Locked rows stay locked until the caller ends the transaction: a
    confirm, a delete or a release of one of them waits until then. Many
    close ids are read through their id range (an index range scan), far
    cheaper than a list of thousands of ids.
    """
    if not ids:
        return {}
    query = select(Ticket.id, Ticket.queue, Ticket.priority).where(Ticket.status == "unassigned")
    low, high = min(ids), max(ids)
    if len(ids) > 64 and high - low < 8 * len(ids):
        query = query.where(Ticket.id.between(low, high))
    else:
        query = query.where(ids_in(session, Ticket.id, ids))
    query = query.order_by(Ticket.id)
    if lock:
        query = query.with_for_update()  # id order, as confirm locks: no deadlock
    wanted = set(ids)
    return {
        row.id: placement(row) for row in session.connection().execute(query) if row.id in wanted
    }
