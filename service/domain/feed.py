"""Reading the ticket events in id order without ever skipping one.

Event ids come from a sequence, drawn while a transaction runs; transactions
commit in any order. So a reader that has seen event 101 may not have seen 100
yet: 100 may belong to a transaction still in flight, and commit a moment later.
A reader that moved its cursor past 101 would never see it.

The feed therefore stops at the first gap ("hole") in the ids and waits until
the gap is settled: every transaction that was in flight when the gap was first
seen has ended. Then an id still missing was rolled back (or never written) and
is passed over for good. Holes settle in the time a transaction takes, so a
reader is held back by milliseconds, and only when a hole is there.

Why that is enough: an event is always written after the change it records, in
the same transaction, so that transaction has its id (xid) before it draws the
event's id. When the gap is seen, a later event is already visible, so the
gap's transaction had its xid by then: it is either finished or among the
transactions in flight in that snapshot. Once PostgreSQL's oldest running
transaction is newer than all of those, none of them is running.

SQLite (embedded mode) runs one write transaction at a time, which commit in id
order: a gap there is always settled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, text
from sqlalchemy.engine import Connection

# The snapshot the rows are read in: the oldest running transaction, and the
# newest of those running (None: none was).
_SNAPSHOT = text(
    "SELECT pg_snapshot_xmin(s)::text::bigint AS xmin,"
    " (SELECT max(x::text::bigint) FROM pg_snapshot_xip(s) AS x) AS newest"
    " FROM pg_current_snapshot() AS s"
)


@dataclass(frozen=True)
class Position:
    """How far a reader has read: every event up to ``after`` is seen or settled
    as missing; ``hole_newest`` is set while a gap after it waits to settle (the
    newest transaction in flight when the gap was first seen)."""

    after: int = 0
    hole_newest: int | None = None

    def encode(self) -> str:
        return f"{self.after}:{'' if self.hole_newest is None else self.hole_newest}"

    @classmethod
    def decode(cls, raw: str | None) -> Position | None:
        if not raw:
            return None
        after, _, hole = raw.partition(":")
        return cls(int(after), int(hole) if hole else None)


def read(
    conn: Connection, query: Select[Any], position: Position, id_column: str = "id"
) -> tuple[Sequence[Any], Position]:
    """The events ``query`` selects after ``position`` (ordered by id, limited, and
    not filtered: a row left out would look like a gap), up to the first
    unsettled gap; and the position after them.

    ``query`` gets ``position.after`` as the bind parameter ``after``. Run on a
    connection of its own: on PostgreSQL it reads in one repeatable-read
    snapshot (the caller's transaction must not have begun).
    """
    postgres = conn.dialect.name == "postgresql"
    if postgres:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
    with conn.begin():
        snapshot = conn.execute(_SNAPSHOT).one() if postgres else None
        rows = conn.execute(query, {"after": position.after}).all()
    return settle(rows, position, snapshot, id_column)


def settle(
    rows: Sequence[Any], position: Position, snapshot: Any, id_column: str = "id"
) -> tuple[Sequence[Any], Position]:
    """Of ``rows`` (ascending ids after ``position.after``), those before the first
    unsettled gap, and the new position. ``snapshot`` is (xmin, newest in flight)
    of the read, or None where gaps always settle (SQLite)."""
    expected = position.after + 1
    hole = position.hole_newest  # of the gap right after position.after, if one was seen
    taken: list[Any] = []
    for row in rows:
        row_id = getattr(row, id_column)
        if row_id != expected and snapshot is not None:  # ids expected .. row_id - 1 missing
            if hole is None:
                hole = snapshot.newest  # first seen now; None: nothing was in flight
            if hole is not None and snapshot.xmin <= hole:
                # A transaction in flight at the first sighting is still running.
                return taken, Position(expected - 1, hole)
        hole = None  # filled, or settled: the missing ids will never appear
        taken.append(row)
        expected = row_id + 1
    return taken, Position(expected - 1, hole)
