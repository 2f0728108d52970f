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
from ..models import AgentQueue, Ticket, User
from ..queue import Placement, TicketQueue
from . import DbSession
from .queue_repair import compare_queues, unknown_queues
from .queues import split_names
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
        missing: list[Placement] = []
        misplaced: list[Placement] = []
        stray: list[tuple[str, int]] = []
        garbage: list[tuple[str, str]] = []
        for part in compare_queues(session, queue, BATCH):
            candidates = [Placement(i, part.queue, part.expected[i]) for i in part.unqueued]
            scores, leases = queue.lookup(candidates)
            for place, score, lease in zip(candidates, scores, leases, strict=True):
                if score is not None:
                    misplaced.append(place)  # queued at another score
                elif lease is None:
                    missing.append(place)  # reserved ones are in flight: fine
            misplaced += [Placement(i, part.queue, s) for i, s in part.misscored.items()]
            stray += [(part.queue, i) for i in part.extra]
            garbage += [(part.queue, member) for member in part.garbage]
        unknown = unknown_queues(session, queue)
        if recheck_after and (duplicates or missing or misplaced or stray or garbage or unknown):
            time.sleep(recheck_after)
        found += _recheck_duplicates(queue, duplicates)
        found += _recheck_missing(session, queue, missing)
        found += _recheck_misplaced(session, queue, misplaced)
        found += _recheck_stray(session, queue, stray)
        found += _recheck_garbage(queue, garbage)
        found += [
            Violation("I5", f"Redis has a queue {name!r} that PostgreSQL does not have")
            for name in unknown_queues(session, queue)
            if name in unknown
        ]
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
    found += _queue_names_checks(session)
    session.rollback()
    return found


def _queue_names_checks(session: DbSession) -> list[Violation]:
    """Each agent's row names the queues agent_queues lists for it: the fetch takes
    work from the names on the row (I3, the order rule, needs the right queues)."""
    members: dict[int, list[str]] = {}
    for agent_id, name in session.execute(
        select(AgentQueue.agent_id, AgentQueue.queue).order_by(
            AgentQueue.agent_id, AgentQueue.queue
        )
    ):
        members.setdefault(agent_id, []).append(name)
    return [
        Violation(
            "I3",
            f"agent {agent_id} fetches from queues {names!r} but is in {members.get(agent_id, [])}",
            agent_id=agent_id,
        )
        for agent_id, names in session.execute(
            select(User.id, User.queue_names).where(User.role == "agent").order_by(User.id)
        )
        if split_names(names) != tuple(members.get(agent_id, []))
    ]


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


def _unassigned_now(session: DbSession, ids: Sequence[int]) -> dict[int, Placement]:
    found: dict[int, Placement] = {}
    ids = sorted(set(ids))
    for start in range(0, len(ids), BATCH):
        found.update(unassigned_among(session, ids[start : start + BATCH]))
    session.rollback()
    return found


def _recheck_missing(
    session: DbSession, queue: TicketQueue, suspects: Sequence[Placement]
) -> list[Violation]:
    if not suspects:
        return []
    still = _unassigned_now(session, [p.ticket_id for p in suspects])
    return [
        Violation(
            "I4",
            f"ticket {i} is unassigned in queue {still[i].queue} but neither queued nor reserved",
            ticket_id=i,
        )
        for i in queue.absent(list(still.values()))
    ]


def _recheck_misplaced(
    session: DbSession, queue: TicketQueue, suspects: Sequence[Placement]
) -> list[Violation]:
    """Queued in its queue, but not at its place (its priority and age)."""
    if not suspects:
        return []
    still = list(_unassigned_now(session, [p.ticket_id for p in suspects]).values())
    scores, _ = queue.lookup(still)
    return [
        Violation(
            "I3",
            f"ticket {place.ticket_id} waits in queue {place.queue} at score {score:.0f},"
            f" not at its place ({place.score})",
            ticket_id=place.ticket_id,
        )
        for place, score in zip(still, scores, strict=True)
        if score is not None and int(score) != place.score
    ]


def _recheck_stray(
    session: DbSession, queue: TicketQueue, suspects: Sequence[tuple[str, int]]
) -> list[Violation]:
    """Queued in a queue it does not belong to (now): taken, deleted, or elsewhere."""
    found: list[Violation] = []
    if not suspects:
        return found
    states = ticket_states(session, sorted({i for _, i in suspects}))
    session.rollback()
    places = [Placement(i, name, 0) for name, i in suspects]
    scores, _ = queue.lookup(places)
    for place, score in zip(places, scores, strict=True):
        state = states.get(place.ticket_id)
        if score is None:
            continue  # gone since the first look
        if state is None:
            what = "deleted"
        elif state.status != "unassigned":
            what = state.status
        elif state.queue != place.queue:
            what = f"unassigned in queue {state.queue}"
        else:
            continue
        found.append(
            Violation(
                "I5",
                f"ticket {place.ticket_id} is queued in {place.queue} but {what}",
                ticket_id=place.ticket_id,
            )
        )
    return found


def _recheck_garbage(queue: TicketQueue, garbage: Sequence[tuple[str, str]]) -> list[Violation]:
    found: list[Violation] = []
    for name, member in garbage:
        if queue.client.zscore(queue.queue_key(name), member) is not None:
            found.append(Violation("I5", f"queue {name} holds {member!r}, which is no ticket id"))
    return found
