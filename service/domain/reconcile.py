"""Reconcile: bring agents' held sets in Redis back in line with PostgreSQL.

An agent's held set lists the tickets it holds (confirmed, or in flight). A
sale or a release whose Redis cleanup was lost (a crash, Redis down) leaves an
id there that the agent no longer holds; Redis losing data leaves one out. The
agent's own next fetch repairs its set; reconcile repairs the sets of agents
that do not fetch.

Each pass does bounded work, however many agents and tickets there are:

* the agents whose tickets changed since the last pass, read from the ticket
  events (service/domain/feed.py: in order, none skipped), so a lost cleanup is
  repaired within one reconcile interval;
* a rolling sweep of the next ``AGENT_BATCH`` agents by id, the net behind
  everything else;
* one page of the queue's rolling sweep (service/domain/queue_repair.py).

The rebuild runs ``fix_held`` over every agent.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import bindparam, select

from ..models import Ticket, TicketEvent, User
from ..queue import TicketQueue
from . import DbSession, feed
from .queue_repair import QueueRepair, sweep_queue
from .reaper import all_agent_ids
from .ticket_state import BATCH, ids_in, shorten, unassigned_among

log = logging.getLogger(__name__)

# Agents whose held sets are locked and resynced in one transaction, and the
# rolling sweep's step.
AGENT_BATCH = 500
# Events read per pass (a burst is caught up over the next passes).
EVENT_BATCH = 5_000
# Where the passes are, kept in Redis (a wipe restarts them; the rebuild that
# follows covers everything).
EVENTS_CURSOR = "reconcile:events"
AGENTS_CURSOR = "sweep:agents"
# The event kinds that add a ticket to a held set or take one out.
HELD_CHANGES = frozenset({"assigned", "sold", "released", "deleted"})


def _assigned_by_agent(
    session: DbSession, agent_ids: Sequence[int] | None, *, lock: bool = False
) -> dict[int, set[int]]:
    query = select(Ticket.agent_id, Ticket.id).where(Ticket.status == "assigned")
    if agent_ids is not None:
        query = query.where(ids_in(session, Ticket.agent_id, agent_ids))
    if lock:
        query = query.order_by(Ticket.id).with_for_update()
    truth: dict[int, set[int]] = defaultdict(set)
    for agent_id, ticket_id in session.execute(query).tuples():
        if agent_id is not None:
            truth[agent_id].add(ticket_id)
    return truth


@dataclass
class _HeldCheck:
    """Per agent whose held set differs from PostgreSQL beyond its fetches in flight:
    the listed ids that are no fetch's (taken, sold or deleted), and what Redis listed."""

    gone: dict[int, list[int]]
    listed: dict[int, set[int]]

    @property
    def agents(self) -> list[int]:
        return list(self.gone)


def _disagreeing(
    session: DbSession,
    queue: TicketQueue,
    agent_ids: Sequence[int],
    truth: dict[int, set[int]],
) -> _HeldCheck:
    held = queue.held_sets(agent_ids)
    extra = sorted({i for a in agent_ids for i in held[a] - truth.get(a, set())})
    # In flight: reserved and still unassigned. A reserved id PostgreSQL has as
    # assigned is a confirmed one whose lease lingers until its agent's next
    # fetch: in any other agent's held set it is junk. (Read without a lock: an
    # id dropped by mistake only costs its agent a surplus pop, which its
    # confirm refuses and gives back.)
    in_flight = (
        queue.reserved_among(extra) & set(unassigned_among(session, extra)) if extra else set()
    )
    check = _HeldCheck({}, {})
    for a in agent_ids:
        listed, known = held[a], truth.get(a, set())
        gone = sorted(listed - known - in_flight)
        if known - listed or gone:
            check.gone[a] = gone
            check.listed[a] = listed
    return check


def fix_held(
    session: DbSession,
    queue: TicketQueue,
    agents: Sequence[int] | None = None,
    *,
    dry_run: bool = False,
    quiet: bool = False,
) -> list[int]:
    """Resync the held sets of ``agents`` (default: every agent, and every held set
    Redis has) that disagree with PostgreSQL; return those agents.

    Ids reserved and still unassigned are kept (``resync.lua``): they belong to
    fetches in flight.
    """
    everyone = agents is None
    agents = all_agent_ids(session, queue) if agents is None else list(agents)
    truth = _assigned_by_agent(session, None if everyone else agents)
    suspects = _disagreeing(session, queue, agents, truth).agents
    session.rollback()
    if dry_run or not suspects:
        return suspects
    fixed: list[int] = []
    for start in range(0, len(suspects), AGENT_BATCH):
        batch = suspects[start : start + AGENT_BATCH]
        try:
            # The agent rows first, as confirm and deactivation lock them: the
            # agents' fetches wait; then their tickets, so a sale waits too.
            # FOR NO KEY UPDATE, as they do: a sale that holds one of those
            # tickets must still pass its foreign-key check on the agent's row.
            session.execute(
                select(User.id)
                .where(ids_in(session, User.id, batch))
                .order_by(User.id)
                .with_for_update(key_share=True)
            ).all()
            truth = _assigned_by_agent(session, batch, lock=True)
            check = _disagreeing(session, queue, batch, truth)
            for agent_id in check.agents:
                queue.resync_held(
                    agent_id, sorted(truth.get(agent_id, set())), check.gone[agent_id]
                )
                listed, held = sorted(check.listed[agent_id]), sorted(truth.get(agent_id, set()))
                if quiet or not listed:
                    # Redis had nothing for this agent (a restart, a wipe): restored.
                    log.debug("held tickets of agent %s restored: %s", agent_id, shorten(held))
                else:
                    log.info(
                        "held tickets of agent %s corrected: Redis listed %s, PostgreSQL has %s",
                        agent_id,
                        shorten(listed),
                        shorten(held) or "none",
                    )
                fixed.append(agent_id)
        finally:
            session.rollback()
    return fixed


@dataclass
class Reconciled:
    """What one reconcile pass looked at and put right."""

    agents_checked: int = 0
    agents_fixed: int = 0
    queue: QueueRepair | None = None


_EVENTS = (
    select(TicketEvent.id, TicketEvent.kind, TicketEvent.agent_id)
    .where(TicketEvent.id > bindparam("after"))
    .order_by(TicketEvent.id)
    .limit(EVENT_BATCH)
)


def _changed_agents(session: DbSession, queue: TicketQueue) -> list[int]:
    """Agents whose held tickets changed since the last pass (the events after the
    cursor); the first pass starts from the newest event."""
    position = feed.Position.decode(queue.cursor_text(EVENTS_CURSOR))
    if position is None:
        newest = session.scalar(select(TicketEvent.id).order_by(TicketEvent.id.desc()).limit(1))
        session.rollback()
        queue.set_cursor_text(EVENTS_CURSOR, feed.Position(int(newest or 0)).encode())
        return []
    with session.get_bind().engine.connect() as conn:
        rows, position = feed.read(conn, _EVENTS, position)
    queue.set_cursor_text(EVENTS_CURSOR, position.encode())
    return sorted({r.agent_id for r in rows if r.kind in HELD_CHANGES and r.agent_id})


def _next_agents(session: DbSession, queue: TicketQueue) -> list[int]:
    """The next ``AGENT_BATCH`` agents by id after the sweep's cursor (wrapping)."""
    after = queue.cursor(AGENTS_CURSOR) or 0
    agents = list(
        session.scalars(
            select(User.id)
            .where(User.role == "agent", User.id > after)
            .order_by(User.id)
            .limit(AGENT_BATCH)
        )
    )
    session.rollback()
    queue.set_cursor(AGENTS_CURSOR, agents[-1] if len(agents) == AGENT_BATCH else None)
    return agents


def reconcile(session: DbSession, queue: TicketQueue, *, batch: int = BATCH) -> Reconciled:
    """One bounded pass: the agents that changed, the sweep's next agents and the
    queue sweep's next page."""
    agents = sorted(set(_changed_agents(session, queue)) | set(_next_agents(session, queue)))
    fixed = fix_held(session, queue, agents) if agents else []
    return Reconciled(len(agents), len(fixed), sweep_queue(session, queue, batch=batch))
