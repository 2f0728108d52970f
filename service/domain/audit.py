"""Check the invariants (docs/design.md) on live data.

Live traffic moves things between any two reads: a ticket created a moment
ago is not queued yet, a fetch has just popped an id, a release is about to
requeue one. So each check that compares Redis with PostgreSQL first collects
suspects, waits ``recheck_after`` seconds, and reports only the suspects that
are still wrong when looked at again. Checks inside PostgreSQL alone read one
consistent snapshot and need no second look.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select, text

from ..database import patience
from ..models import Ticket, User
from ..queue import TicketQueue
from . import DbSession
from .queue_repair import compare_queue
from .reaper import holders
from .ticket_state import BATCH, ticket_states, unassigned_among


@dataclass(frozen=True)
class Violation:
    """One broken invariant, on one ticket or agent."""

    invariant: str  # "I1" .. "I5"
    message: str
    ticket_id: int | None = None
    agent_id: int | None = None

    def __str__(self) -> str:
        return f"{self.invariant}: {self.message}"


# Per ticket, in event order: an "assigned" must follow creation or a release,
# never another assignment or a sale; a sale is never followed by a release.
_HISTORY = text(
    """
    SELECT ticket_id, kind, prev_kind, agent_id, prev_agent
    FROM (
        SELECT ticket_id, kind, agent_id,
               lag(kind) OVER (PARTITION BY ticket_id ORDER BY id) AS prev_kind,
               lag(agent_id) OVER (PARTITION BY ticket_id ORDER BY id) AS prev_agent
        FROM ticket_events
    ) AS history
    WHERE (kind = 'assigned' AND prev_kind IN ('assigned', 'sold'))
       OR (kind = 'released' AND prev_kind = 'sold')
       OR (kind = 'sold' AND prev_kind = 'sold')
    ORDER BY ticket_id
    """
)

# A sold ticket keeps the agent that sold it.
_FOREIGN_SALES = text(
    """
    SELECT t.id, t.agent_id, e.agent_id
    FROM tickets AS t
    JOIN ticket_events AS e ON e.ticket_id = t.id AND e.kind = 'sold'
    WHERE t.status = 'sold' AND e.agent_id IS DISTINCT FROM t.agent_id
    ORDER BY t.id
    """
)


def audit(session: DbSession, queue: TicketQueue, *, recheck_after: float = 0.5) -> list[Violation]:
    """Every violation of an invariant that persists across a second look."""
    try:
        # The history check reads the whole event log (see _database_checks).
        with patience(600):
            found = _database_checks(session)
        duplicates = _duplicate_holders(session, queue)
        unqueued: list[int] = []
        stray: list[int] = []
        disordered: list[int] = []
        garbage: list[str] = []
        for part in compare_queue(session, queue, BATCH):
            unqueued += queue.absent(part.unqueued)  # reserved ones are in flight: fine
            stray += part.extra
            disordered += part.disordered
            garbage += part.garbage
        # A disordered id is out of its range: check its status separately.
        still_unassigned = _unassigned_among(session, disordered)
        stray += [i for i in disordered if i not in still_unassigned]
        session.rollback()
        if recheck_after and (duplicates or disordered or garbage or unqueued or stray):
            time.sleep(recheck_after)
        found += _recheck_duplicates(queue, duplicates)
        found += _recheck_order(queue, disordered)
        found += _recheck_unqueued(session, queue, unqueued)
        found += _recheck_stray(session, queue, stray)
        found += _recheck_garbage(queue, garbage)
        return found
    finally:
        session.rollback()


def _database_checks(session: DbSession) -> list[Violation]:
    found: list[Violation] = []
    if session.get_bind().dialect.name == "postgresql":
        # The history check reads the whole event log: more than the service's
        # per-statement limit allows on a large table. This transaction only.
        session.execute(text("SET LOCAL statement_timeout = '10min'"))
    for ticket_id, kind, prev_kind, agent_id, prev_agent in session.execute(_HISTORY):
        found.append(
            Violation(
                "I1",
                f"ticket {ticket_id}: {kind} (agent {agent_id}) right after {prev_kind} "
                f"(agent {prev_agent})",
                ticket_id=ticket_id,
                agent_id=agent_id,
            )
        )
    for ticket_id, holder, seller in session.execute(_FOREIGN_SALES):
        found.append(
            Violation(
                "I1",
                f"ticket {ticket_id} was sold by agent {seller} but belongs to agent {holder}",
                ticket_id=ticket_id,
                agent_id=holder,
            )
        )
    held = func.count(Ticket.id)
    over = session.execute(
        select(User.id, User.capacity, held)
        .join(Ticket, (Ticket.agent_id == User.id) & (Ticket.status == "assigned"))
        .group_by(User.id, User.capacity)
        .having(held > User.capacity)
        .order_by(User.id)
    ).tuples()
    for agent_id, capacity, count in over:
        found.append(
            Violation(
                "I2",
                f"agent {agent_id} holds {count} unsold tickets, capacity {capacity}",
                agent_id=agent_id,
            )
        )
    session.rollback()
    return found


def _duplicate_holders(session: DbSession, queue: TicketQueue) -> dict[int, list[int]]:
    """ticket id -> agents, for every ticket in more than one held set."""
    listed_by = holders(session, queue)
    session.rollback()
    return {t: list(agents) for t, agents in listed_by.items() if len(agents) > 1}


def _recheck_duplicates(queue: TicketQueue, duplicates: dict[int, list[int]]) -> list[Violation]:
    found: list[Violation] = []
    if not duplicates:
        return found
    agents = sorted({a for group in duplicates.values() for a in group})
    held = queue.held_sets(agents)
    for ticket_id, group in sorted(duplicates.items()):
        still = [a for a in group if ticket_id in held[a]]
        if len(still) > 1:
            found.append(
                Violation(
                    "I1",
                    f"ticket {ticket_id} is in the held sets of agents {still}",
                    ticket_id=ticket_id,
                )
            )
    return found


def _recheck_order(queue: TicketQueue, disordered: Sequence[int]) -> list[Violation]:
    scores = queue.queue_scores(disordered) if disordered else []
    return [
        Violation("I3", f"ticket {i} is queued with score {s}, not its id", ticket_id=i)
        for i, s in zip(disordered, scores, strict=True)
        if s is not None and s != i
    ]


def _unassigned_among(session: DbSession, ids: Sequence[int]) -> set[int]:
    found: set[int] = set()
    for start in range(0, len(ids), BATCH):
        found |= set(unassigned_among(session, sorted(ids[start : start + BATCH])))
    session.rollback()
    return found


def _recheck_unqueued(
    session: DbSession, queue: TicketQueue, suspects: Sequence[int]
) -> list[Violation]:
    if not suspects:
        return []
    still = sorted(_unassigned_among(session, suspects))
    return [
        Violation("I4", f"ticket {i} is unassigned but neither queued nor reserved", ticket_id=i)
        for i in queue.absent(still)
    ]


def _recheck_garbage(queue: TicketQueue, garbage: Sequence[str]) -> list[Violation]:
    scores = queue.queue_scores(garbage) if garbage else []
    return [
        Violation("I5", f"the queue holds {member!r}, which is no ticket id")
        for member, score in zip(garbage, scores, strict=True)
        if score is not None
    ]


def _recheck_stray(
    session: DbSession, queue: TicketQueue, suspects: Sequence[int]
) -> list[Violation]:
    found: list[Violation] = []
    ids = sorted(set(suspects))
    if not ids:
        return found
    status = {i: state for i, (state, _) in ticket_states(session, ids).items()}
    session.rollback()
    for ticket_id, score in zip(ids, queue.queue_scores(ids), strict=True):
        if score is not None and status.get(ticket_id) != "unassigned":
            state = status.get(ticket_id, "deleted")
            found.append(
                Violation("I5", f"ticket {ticket_id} is queued but {state}", ticket_id=ticket_id)
            )
    return found
