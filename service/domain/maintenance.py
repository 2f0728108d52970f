"""Keeping Redis in step with PostgreSQL: the relay, the reaper and reconcile.

Each function is safe to run at any moment, in any number of processes at
once, while the API takes traffic:

* Before Redis is changed on PostgreSQL's word, the ticket rows concerned are
  locked (``FOR UPDATE``), the lock a confirm, a delete or a release takes too,
  so the state read cannot change until Redis agrees with it.
* The Redis side of each change is one Lua script that re-checks what it
  relies on (a reservation still there, an id not reserved), so a fetch that
  ran in between is never undone.

Running a step twice, or in two workers at once, therefore changes nothing the
first run did not; the workers' locks only save duplicated work.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, any_, func, literal, select
from sqlalchemy.dialects.postgresql import ARRAY

from .. import metrics
from ..models import Ticket, User
from ..queue import TicketQueue
from . import DbSession

log = logging.getLogger(__name__)

# Unassigned ids read from PostgreSQL per round trip. Large enough that a
# million tickets take a hundred rounds; small enough that the row locks a
# batch takes are held for milliseconds.
BATCH = 10_000
# Agents whose held sets are locked and resynced in one transaction.
AGENT_BATCH = 500

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


@dataclass
class QueueSlice:
    """PostgreSQL's unassigned ids in one id range beside the queue members scored in it."""

    unassigned: list[int]  # unassigned in PostgreSQL, ascending
    unqueued: list[int]  # of those, not queued (maybe reserved: in flight)
    extra: list[int]  # queued with score == id, but not unassigned in PostgreSQL's read
    disordered: list[int]  # queued with a score other than the id
    garbage: list[str]  # queue members that are no ticket id


def compare_queue(
    session: DbSession, queue: TicketQueue, batch: int = BATCH
) -> Iterator[QueueSlice]:
    """Walk PostgreSQL's unassigned ids and the queue side by side, one id range at a time.

    Both are read in id (= score) order: a keyset page of unassigned ids,
    then the queue members scored in the same range, so neither side is
    ever held in memory whole and PostgreSQL is only read by index range.
    Each slice is a snapshot: callers re-check before acting on it.
    """
    after: int | None = None
    while True:
        query = select(Ticket.id).where(Ticket.status == "unassigned")
        if after is not None:
            query = query.where(Ticket.id > after)
        # Core, not ORM, rows: plain ids, without the ORM's per-row work.
        ids = list(session.connection().execute(query.order_by(Ticket.id).limit(batch)).scalars())
        # End the read transaction between pages: a long scan must not hold
        # one snapshot open (vacuum) nor leave a connection idle in transaction.
        session.rollback()
        last = len(ids) < batch
        queued, odd = queue.queued_between(after, None if last else ids[-1])
        yield _slice(ids, queued, odd)
        if last:
            return
        after = ids[-1]


def _slice(ids: list[int], queued: list[int], odd: list[tuple[str, float]]) -> QueueSlice:
    unassigned = set(ids)
    in_queue = set(queued)
    disordered: list[int] = []
    garbage: list[str] = []
    for member, _score in odd:
        if member.isdigit():
            disordered.append(int(member))
        else:
            garbage.append(member)
    return QueueSlice(
        unassigned=ids,
        unqueued=[i for i in ids if i not in in_queue],
        extra=[i for i in queued if i not in unassigned],
        disordered=disordered,
        garbage=garbage,
    )


def ticket_states(
    session: DbSession, ids: Sequence[int], *, lock: bool = False
) -> dict[int, tuple[str, int | None]]:
    """(status, agent id) of those of ``ids`` that exist (a missing one was deleted).

    With ``lock`` the rows are locked in id order, as a confirm locks them, until
    the caller ends the transaction.
    """
    query = select(Ticket.id, Ticket.status, Ticket.agent_id).where(ids_in(session, Ticket.id, ids))
    if lock:
        query = query.order_by(Ticket.id).with_for_update()
    return {row.id: (row.status, row.agent_id) for row in session.connection().execute(query)}


def unassigned_among(session: DbSession, ids: Sequence[int], *, lock: bool = False) -> list[int]:
    """Those of ``ids`` that are unassigned, ascending; with ``lock``, row-locked.

    Locked rows stay locked until the caller ends the transaction: a
    confirm, a delete or a release of one of them waits until then. Many
    close ids are read through their id range (an index range scan), far
    cheaper than a list of thousands of ids.
    """
    if not ids:
        return []
    query = select(Ticket.id).where(Ticket.status == "unassigned")
    low, high = min(ids), max(ids)
    if len(ids) > 64 and high - low < 8 * len(ids):
        query = query.where(Ticket.id.between(low, high))
    else:
        query = query.where(ids_in(session, Ticket.id, ids))
    query = query.order_by(Ticket.id)
    if lock:
        query = query.with_for_update()  # id order, as confirm locks: no deadlock
    wanted = set(ids)
    return [i for i in session.connection().execute(query).scalars() if i in wanted]


def push_missing(
    session: DbSession, queue: TicketQueue, ids: Sequence[int], *, dry_run: bool = False
) -> list[int]:
    """Queue those of ``ids`` (seen unqueued) that are still unassigned and not reserved.

    Returns the ids queued (or, on a dry run, that would be).
    """
    if not ids:
        return []
    try:
        if dry_run:
            return queue.absent(unassigned_among(session, ids))
        # Locked while Redis is written: no ticket is queued after a fetch took it.
        return queue.enqueue(unassigned_among(session, ids, lock=True))
    finally:
        session.rollback()  # nothing was written in PostgreSQL; this frees the locks


def relay(session: DbSession, queue: TicketQueue, *, batch: int = BATCH) -> int:
    """Queue every ticket PostgreSQL holds as unassigned that is neither queued nor reserved.

    The safety net behind every push that can fail: a crash after a ticket's
    INSERT, a release or a refused id while Redis was down. Returns the count.
    """
    pushed = 0
    for part in compare_queue(session, queue, batch):
        added = push_missing(session, queue, part.unqueued)
        if added:
            log.info("relay: queued %d missing ticket(s): %s", len(added), shorten(added))
            pushed += len(added)
    return pushed


@dataclass
class QueueRepair:
    """What one pass over the queue found (and, unless a dry run, put right)."""

    unassigned: int = 0  # unassigned tickets PostgreSQL had during the pass
    missing: int = 0  # unassigned, neither queued nor reserved: queued
    extra: int = 0  # queued, but assigned, sold, deleted or no id at all: taken out
    out_of_order: int = 0  # queued with a score other than the id: score reset


def repair_queue(
    session: DbSession,
    queue: TicketQueue,
    *,
    push: bool = True,
    dry_run: bool = False,
    progress: Progress | None = None,
    batch: int = BATCH,
    quiet: bool = False,
) -> QueueRepair:
    """Make the queue hold exactly PostgreSQL's unassigned tickets, scored by id.

    One pass in id order: queue missing ids (unless ``push`` is False: the
    relay's job), take out ids PostgreSQL no longer has as unassigned after a
    re-check under their row locks, reset wrong scores.
    """
    fixes = QueueRepair()
    total = 0
    if progress:
        total = session.scalar(select(func.count()).where(Ticket.status == "unassigned")) or 0
        session.rollback()
        progress("queue", 0, total)
    for part in compare_queue(session, queue, batch):
        fixes.unassigned += len(part.unassigned)
        if push:
            added = push_missing(session, queue, part.unqueued, dry_run=dry_run)
            fixes.missing += len(added)
            if added and not dry_run:
                log.log(
                    logging.DEBUG if quiet else logging.INFO,
                    "queue: queued %d missing ticket(s): %s",
                    len(added),
                    shorten(added),
                )
        if part.disordered:
            fixes.out_of_order += (
                len(part.disordered) if dry_run else queue.fix_order(part.disordered)
            )
            if not dry_run:
                log.info("queue: reset the score of %s to the id", shorten(part.disordered))
        if part.garbage:
            fixes.extra += len(part.garbage) if dry_run else queue.dequeue(part.garbage)
            if not dry_run:
                log.info("queue: took out members that are no ticket id: %s", part.garbage[:20])
        # A disordered id may also be one PostgreSQL no longer has as unassigned.
        suspects = part.extra + part.disordered
        if suspects:
            fixes.extra += len(_dequeue_taken(session, queue, suspects, dry_run))
        if progress:
            progress("queue", fixes.unassigned, max(total, fixes.unassigned))
    return fixes


def tidy_queue(session: DbSession, queue: TicketQueue) -> QueueRepair:
    """Take stray ids out of the queue and reset wrong scores; the relay adds missing ones."""
    return repair_queue(session, queue, push=False)


def _dequeue_taken(
    session: DbSession, queue: TicketQueue, ids: list[int], dry_run: bool
) -> list[int]:
    """Take out of the queue those of ``ids`` that are assigned, sold or deleted."""
    try:
        # Re-check under the row locks: a release that makes one of them
        # unassigned again waits, then queues it itself after we are done.
        still = set(unassigned_among(session, ids, lock=not dry_run))
        taken = sorted(i for i in set(ids) if i not in still)
        if taken and not dry_run:
            queue.dequeue(taken)
            log.info("queue: took out %d stray id(s): %s", len(taken), shorten(taken))
        return taken
    finally:
        session.rollback()


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
        status = {
            i: state for i, (state, _) in ticket_states(session, ids, lock=not dry_run).items()
        }
        unassigned = sorted(i for i in ids if status.get(i) == "unassigned")
        taken = sorted(i for i in ids if i in status and status[i] != "unassigned")
        deleted = sorted(i for i in ids if i not in status)
        if dry_run:
            return ReapResult(returned=unassigned if requeue else [], dropped=taken + deleted)
        returned: list[int] = []
        dropped = queue.reap(taken, requeue=False, cutoff=cutoff)
        # Nobody may keep an unassigned or deleted ticket in its held set: the
        # agent whose fetch died still lists it there.
        stale = (unassigned if requeue else []) + deleted
        listed_by = holders(session, queue, stale) if stale else {}
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for ticket_id in stale:
            groups[listed_by.get(ticket_id, ())].append(ticket_id)
        gone = set(deleted)
        for agents, group in groups.items():
            back = [i for i in group if i not in gone]
            returned += queue.reap(back, requeue=True, cutoff=cutoff, held_agents=agents)
            dropped += queue.reap(
                [i for i in group if i in gone], requeue=False, cutoff=cutoff, held_agents=agents
            )
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
    session: DbSession, queue: TicketQueue, *, dry_run: bool = False, quiet: bool = False
) -> list[int]:
    """Resync every agent's held set that disagrees with PostgreSQL; return those agents.

    Ids reserved and still unassigned are kept (``resync.lua``): they belong to
    fetches in flight.
    """
    agents = all_agent_ids(session, queue)
    suspects = _disagreeing(session, queue, agents, _assigned_by_agent(session, None)).agents
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


def reconcile(session: DbSession, queue: TicketQueue) -> int:
    """Resync every agent's held set that disagrees with PostgreSQL; return how many."""
    return len(fix_held(session, queue))
