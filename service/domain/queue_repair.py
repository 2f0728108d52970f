"""Comparing the Redis queue with PostgreSQL's unassigned tickets, and putting it right.

The queue and PostgreSQL are walked side by side in id (= score) order, one id
range at a time: a keyset page of unassigned ids, then the queue members scored
in the same range. Neither side is ever held in memory whole, and PostgreSQL is
only read by index range. The rebuild and the audit walk everything; the
reconcile worker walks one page per pass and remembers where it stopped (a
rolling sweep), so its cost per pass does not grow with the backlog.

Before Redis is changed on PostgreSQL's word the ticket rows concerned are
locked (``FOR UPDATE``), the lock a confirm, a delete or a release takes too,
and each Redis change is a Lua script that re-checks what it relies on: running
a repair twice, or in two processes at once, changes nothing the first did not.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from sqlalchemy import func, select

from ..models import Ticket
from ..queue import TicketQueue
from . import DbSession
from .ticket_state import BATCH, Progress, shorten, unassigned_among

log = logging.getLogger(__name__)

# The rolling sweep's place in the queue, kept in Redis (a wipe restarts it).
SWEEP_CURSOR = "sweep:queue"


@dataclass
class QueueSlice:
    """PostgreSQL's unassigned ids in one id range beside the queue members scored in it."""

    unassigned: list[int]  # unassigned in PostgreSQL, ascending
    unqueued: list[int]  # of those, not queued (maybe reserved: in flight)
    extra: list[int]  # queued with score == id, but not unassigned in PostgreSQL's read
    disordered: list[int]  # queued with a score other than the id
    garbage: list[str]  # queue members that are no ticket id


def _page(
    session: DbSession, queue: TicketQueue, after: int | None, batch: int
) -> tuple[QueueSlice, int | None]:
    """The slice of unassigned ids after ``after`` (one page) and where the next starts
    (None: this was the last page, and it took in the queue's whole tail)."""
    query = select(Ticket.id).where(Ticket.status == "unassigned")
    if after is not None:
        query = query.where(Ticket.id > after)
    # Core, not ORM, rows: plain ids, without the ORM's per-row work.
    ids = list(session.connection().execute(query.order_by(Ticket.id).limit(batch)).scalars())
    # End the read transaction between pages: a long scan must not hold one
    # snapshot open (vacuum) nor leave a connection idle in transaction.
    session.rollback()
    upto = ids[-1] if len(ids) == batch else None
    queued, odd = queue.queued_between(after, upto)
    return _slice(ids, queued, odd), upto


def compare_queue(
    session: DbSession, queue: TicketQueue, batch: int = BATCH
) -> Iterator[QueueSlice]:
    """Every slice, from the first unassigned id to the queue's tail. Each is a
    snapshot: callers re-check before acting on it."""
    after: int | None = None
    while True:
        part, after = _page(session, queue, after, batch)
        yield part
        if after is None:
            return


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


@dataclass
class QueueRepair:
    """What a pass over (part of) the queue found, and, unless a dry run, put right."""

    unassigned: int = 0  # unassigned tickets PostgreSQL had during the pass
    missing: int = 0  # unassigned, neither queued nor reserved: queued
    extra: int = 0  # queued, but assigned, sold, deleted or no id at all: taken out
    out_of_order: int = 0  # queued with a score other than the id: score reset

    def add(self, other: QueueRepair) -> None:
        self.unassigned += other.unassigned
        self.missing += other.missing
        self.extra += other.extra
        self.out_of_order += other.out_of_order


def _repair(
    session: DbSession,
    queue: TicketQueue,
    part: QueueSlice,
    *,
    dry_run: bool,
    quiet: bool,
) -> QueueRepair:
    """Put one slice right: queue the missing, reset wrong scores, take out strays."""
    fixes = QueueRepair(unassigned=len(part.unassigned))
    level = logging.DEBUG if quiet else logging.INFO
    added = push_missing(session, queue, part.unqueued, dry_run=dry_run)
    fixes.missing = len(added)
    if added and not dry_run:
        log.log(level, "queue: queued %d missing ticket(s): %s", len(added), shorten(added))
    if part.disordered:
        fixes.out_of_order = len(part.disordered) if dry_run else queue.fix_order(part.disordered)
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
    return fixes


def repair_queue(
    session: DbSession,
    queue: TicketQueue,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
    batch: int = BATCH,
    quiet: bool = False,
) -> QueueRepair:
    """Make the whole queue hold exactly PostgreSQL's unassigned tickets, scored by id."""
    fixes = QueueRepair()
    total = 0
    if progress:
        total = session.scalar(select(func.count()).where(Ticket.status == "unassigned")) or 0
        session.rollback()
        progress("queue", 0, total)
    for part in compare_queue(session, queue, batch):
        fixes.add(_repair(session, queue, part, dry_run=dry_run, quiet=quiet))
        if progress:
            progress("queue", fixes.unassigned, max(total, fixes.unassigned))
    return fixes


def sweep_queue(session: DbSession, queue: TicketQueue, *, batch: int = BATCH) -> QueueRepair:
    """Repair the next page of the queue after where the last sweep stopped.

    The safety net behind the outbox (service/domain/relay.py): whatever the
    outbox cannot see (a member Redis lost, a stray left by a race) is found
    within one round of sweeps, one bounded page per pass.
    """
    after = queue.cursor(SWEEP_CURSOR)
    part, upto = _page(session, queue, after, batch)
    fixes = _repair(session, queue, part, dry_run=False, quiet=False)
    queue.set_cursor(SWEEP_CURSOR, upto)  # None: the sweep starts over
    return fixes


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
