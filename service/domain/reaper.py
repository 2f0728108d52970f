"""The reaper: end reservations whose lease ran out.

A reservation is an id a fetch popped from the queue and has not confirmed yet
(or a confirmed one whose agent has not fetched since). When the process that
popped it died, or hung, its lease ends: the reaper puts a still-unassigned id
back in the queue, at its place, and drops the reservation of one that was
taken, sold or deleted meanwhile. It reads only the reservations that are due,
so an idle service costs it one Redis range read per pass.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import select

from .. import metrics
from ..models import User
from ..queue import TicketQueue
from . import DbSession
from .ticket_state import shorten, ticket_states

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReapResult:
    """What one reaper pass did with the reservations whose lease ended."""

    returned: list[int] = field(default_factory=list)  # still unassigned: back to the queue
    dropped: list[int] = field(default_factory=list)  # assigned, sold or deleted: forgotten

    def __len__(self) -> int:
        return len(self.returned) + len(self.dropped)


def reap(session: DbSession, queue: TicketQueue, limit: int = 1000) -> ReapResult:
    """End up to ``limit`` reservations whose lease passed (by Redis's clock).

    A lease ends when the process that popped the ids died, or hung, before
    settling them. Still unassigned: the id goes back to the queue (by its
    score, so ahead of younger ones) and out of the popper's held set.
    Assigned, sold or deleted: only the reservation is dropped.
    """
    now = queue.now()
    expired = [ticket_id for ticket_id, _ in queue.reservations(max_deadline=now, limit=limit)]
    if not expired:
        return ReapResult()
    result = end_reservations(session, queue, expired, cutoff=now, requeue=True)
    metrics.reservations_returned(len(result.returned))
    if result.returned:
        log.info(
            "reaper: returned %d expired reservation(s) to the queue: %s",
            len(result.returned),
            shorten(result.returned),
        )
    if result.dropped:
        # Routine: a confirmed ticket keeps its reservation until its agent's
        # next fetch, and an agent that stops fetching leaves it to the reaper.
        log.debug(
            "reaper: ended %d expired reservation(s) of tickets assigned, sold or deleted: %s",
            len(result.dropped),
            shorten(result.dropped),
        )
    return result


def end_reservations(
    session: DbSession,
    queue: TicketQueue,
    ids: Sequence[int],
    *,
    cutoff: float,
    requeue: bool,
    dry_run: bool = False,
) -> ReapResult:
    """End the reservations of ``ids`` whose deadline is at most ``cutoff``.

    Ids still unassigned go back to the queue when ``requeue`` (else they stay
    reserved: a fetch in flight); the others are dropped.
    """
    try:
        # Locked unless a dry run: a confirm in progress holds these rows, so
        # its outcome, not the state before it, decides between requeue and drop.
        states = ticket_states(session, ids, lock=not dry_run)
        unassigned = sorted(i for i in ids if i in states and states[i].status == "unassigned")
        taken = sorted(i for i in ids if i in states and states[i].status != "unassigned")
        deleted = sorted(i for i in ids if i not in states)
        if dry_run:
            return ReapResult(returned=unassigned if requeue else [], dropped=taken + deleted)
        returned: list[int] = []
        dropped = queue.reap([(i, None) for i in taken], cutoff=cutoff)
        # Nobody may keep an unassigned or deleted ticket in its held set: the
        # agent whose fetch died still lists it there.
        stale = (unassigned if requeue else []) + deleted
        listed_by = holders(session, queue, stale) if stale else {}
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for ticket_id in stale:
            groups[listed_by.get(ticket_id, ())].append(ticket_id)
        for agents, group in groups.items():
            # Back to its place in its queue, or (deleted) just dropped.
            ends = [(i, states[i].placement(i) if i in states else None) for i in group]
            acted = set(queue.reap(ends, cutoff=cutoff, held_agents=agents))
            returned += [i for i in group if i in acted and i in states]
            dropped += [i for i in group if i in acted and i not in states]
        return ReapResult(returned=sorted(returned), dropped=sorted(dropped))
    finally:
        session.rollback()


def all_agent_ids(session: DbSession, queue: TicketQueue) -> list[int]:
    """Every agent PostgreSQL knows, plus any id that has a held set in Redis."""
    known = set(session.scalars(select(User.id).where(User.role == "agent")))
    return sorted(known | queue.held_agent_ids())


def holders(
    session: DbSession, queue: TicketQueue, ticket_ids: Iterable[int] | None = None
) -> dict[int, tuple[int, ...]]:
    """ticket id -> the agents whose held set lists it (of ``ticket_ids``, or of all)."""
    wanted = None if ticket_ids is None else set(ticket_ids)
    found: dict[int, list[int]] = defaultdict(list)
    for agent_id, members in queue.held_sets(all_agent_ids(session, queue)).items():
        for ticket_id in members if wanted is None else members & wanted:
            found[ticket_id].append(agent_id)
    return {ticket_id: tuple(sorted(agents)) for ticket_id, agents in found.items()}
