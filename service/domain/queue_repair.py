"""Comparing the Redis queues with PostgreSQL's unassigned tickets, and putting them right.

Each queue is a sorted set scored by priority, then id (``service.queue.score``).
A queue and PostgreSQL's unassigned tickets of that queue are walked side by
side in that order, one score range at a time: a keyset page of PostgreSQL's
tickets (by the ``(queue, priority, id)`` index), then the queue's members
scored in the same range. Neither side is ever held in memory whole. The
rebuild and the audit walk everything; the reconcile worker walks one page per
pass and remembers where it stopped (a rolling sweep), so its cost per pass does
not grow with the backlog.

Before Redis is changed on PostgreSQL's word the ticket rows concerned are
locked (``FOR UPDATE``), the lock a confirm, a delete or a release takes too,
and each Redis change is a Lua script that re-checks what it relies on: running
a repair twice, or in two processes at once, changes nothing the first did not.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from sqlalchemy import func, literal, select, tuple_

from ..models import Queue, Ticket
from ..queue import PRIORITY_SHIFT, Placement, TicketQueue
from . import DbSession
from .ticket_state import BATCH, Progress, shorten, unassigned_among

log = logging.getLogger(__name__)

# The rolling sweep's place: "<queue>|<score>" of the last ticket it covered.
SWEEP_CURSOR = "sweep:queue"


@dataclass
class QueueSlice:
    """PostgreSQL's unassigned tickets of one queue in one score range, beside the
    queue's members scored in it."""

    queue: str
    expected: dict[int, int]  # unassigned here in PostgreSQL's read: id -> score
    queued: dict[int, int]  # ticket ids in the queue in that range: id -> score
    garbage: list[str] = field(default_factory=list)  # members that are no ticket id

    @property
    def unqueued(self) -> list[int]:
        """Expected here but not in the range: missing, in flight, or at a wrong score."""
        return sorted(set(self.expected) - set(self.queued))

    @property
    def extra(self) -> list[int]:
        """In the range but not expected here: taken, moved, deleted, or a wrong score."""
        return sorted(set(self.queued) - set(self.expected))

    @property
    def misscored(self) -> dict[int, int]:
        """In both, at another score than PostgreSQL's: id -> the right score."""
        return {i: s for i, s in self.expected.items() if i in self.queued and self.queued[i] != s}


def _page(
    session: DbSession, queue: TicketQueue, name: str, after: int | None, batch: int
) -> tuple[QueueSlice, int | None]:
    """The slice of ``name`` after score ``after`` (one page) and the score the next
    starts after (None: this was the last page, and it took in the queue's tail)."""
    query = select(Ticket.id, Ticket.priority).where(
        Ticket.queue == name, Ticket.status == "unassigned"
    )
    if after is not None:
        rank, last_id = divmod(after, PRIORITY_SHIFT)
        query = query.where(
            tuple_(Ticket.priority, Ticket.id) > tuple_(literal(rank), literal(last_id))
        )
    query = query.order_by(Ticket.priority, Ticket.id).limit(batch)
    # Core, not ORM, rows: plain tuples, without the ORM's per-row work.
    expected = {row.id: row.priority * PRIORITY_SHIFT + row.id for row in session.execute(query)}
    # End the read transaction between pages: a long scan must not hold one
    # snapshot open (vacuum) nor leave a connection idle in transaction.
    session.rollback()
    upto = max(expected.values()) if len(expected) == batch else None
    members, odd = queue.queued_between(name, after, upto)
    garbage = [member for member, _score in odd]
    return QueueSlice(name, expected, dict(members), garbage), upto


def queue_names(session: DbSession) -> list[str]:
    names = sorted(session.scalars(select(Queue.name)))
    session.rollback()
    return names


def compare_queue(
    session: DbSession, queue: TicketQueue, name: str, batch: int = BATCH
) -> Iterator[QueueSlice]:
    """Every slice of queue ``name``, from its best ticket to its tail. Each is a
    snapshot: callers re-check before acting on it."""
    after: int | None = None
    while True:
        part, after = _page(session, queue, name, after, batch)
        yield part
        if after is None:
            return


def compare_queues(
    session: DbSession, queue: TicketQueue, batch: int = BATCH
) -> Iterator[QueueSlice]:
    """Every slice of every queue PostgreSQL has."""
    for name in queue_names(session):
        yield from compare_queue(session, queue, name, batch)


def unknown_queues(session: DbSession, queue: TicketQueue) -> list[str]:
    """Queues Redis has a key for and PostgreSQL has not (deleted, or junk). Redis is
    listed first: a queue created meanwhile is then in PostgreSQL's list."""
    in_redis = queue.queue_names()
    return sorted(in_redis - set(queue_names(session)))


def push_missing(
    session: DbSession, queue: TicketQueue, ids: Sequence[int], *, dry_run: bool = False
) -> list[int]:
    """Queue those of ``ids`` that are still unassigned and not reserved, each in its
    queue at its score (fixing a wrong score on the way).

    Returns the ids queued that were not queued before (or, on a dry run, that
    would be).
    """
    if not ids:
        return []
    try:
        if dry_run:
            return queue.absent(list(unassigned_among(session, ids).values()))
        # Locked while Redis is written: no ticket is queued after a fetch took it.
        return queue.enqueue(unassigned_among(session, ids, lock=True).values())
    finally:
        session.rollback()  # nothing was written in PostgreSQL; this frees the locks


@dataclass
class QueueRepair:
    """What a pass over (part of) the queues found, and, unless a dry run, put right."""

    unassigned: int = 0  # unassigned tickets PostgreSQL had during the pass
    missing: int = 0  # unassigned, neither queued nor reserved: queued
    extra: int = 0  # queued, but assigned, sold, deleted, elsewhere or no id at all: taken out
    out_of_order: int = 0  # queued at a wrong score (its priority changed): score reset

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
    fixes = QueueRepair(unassigned=len(part.expected))
    level = logging.DEBUG if quiet else logging.INFO
    # Not in this range: missing (queue it), in flight (leave it), or queued at a
    # wrong score elsewhere in the queue (reset it).
    candidates = [Placement(i, part.queue, part.expected[i]) for i in part.unqueued]
    scores, leases = queue.lookup(candidates)
    misplaced = {
        p.ticket_id: p.score
        for p, found in zip(candidates, scores, strict=True)
        if found is not None
    }
    missing = [
        p.ticket_id
        for p, found, lease in zip(candidates, scores, leases, strict=True)
        if found is None and lease is None
    ]
    added = push_missing(session, queue, missing, dry_run=dry_run)
    fixes.missing = len(added)
    if added and not dry_run:
        log.log(
            level,
            "queue %s: queued %d missing ticket(s): %s",
            part.queue,
            len(added),
            shorten(added),
        )
    rescore = {**part.misscored, **misplaced}
    if rescore:
        fixes.out_of_order = len(rescore) if dry_run else queue.fix_scores(part.queue, rescore)
        if not dry_run:
            log.info("queue %s: reset the score of %s", part.queue, shorten(sorted(rescore)))
    if part.garbage:
        fixes.extra += len(part.garbage) if dry_run else queue.dequeue(part.queue, part.garbage)
        if not dry_run:
            log.info(
                "queue %s: took out members that are no ticket id: %s",
                part.queue,
                part.garbage[:20],
            )
    if part.extra:
        fixes.extra += len(_dequeue_taken(session, queue, part.queue, part.extra, dry_run))
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
    """Make every queue hold exactly PostgreSQL's unassigned tickets of that queue, at
    their scores; drop the keys of queues PostgreSQL does not have."""
    fixes = QueueRepair()
    total = 0
    if progress:
        total = session.scalar(select(func.count()).where(Ticket.status == "unassigned")) or 0
        session.rollback()
        progress("queue", 0, total)
    for part in compare_queues(session, queue, batch):
        fixes.add(_repair(session, queue, part, dry_run=dry_run, quiet=quiet))
        if progress:
            progress("queue", fixes.unassigned, max(total, fixes.unassigned))
    for name in unknown_queues(session, queue):
        fixes.extra += 1
        if not dry_run:
            queue.drop_queue(name)
            log.info("queue %s: PostgreSQL has no such queue; dropped its Redis key", name)
    return fixes


def sweep_queue(session: DbSession, queue: TicketQueue, *, batch: int = BATCH) -> QueueRepair:
    """Repair the next page of the queues after where the last sweep stopped.

    The safety net behind the outbox (service/domain/relay.py): whatever the
    outbox cannot see (a member Redis lost, a stray left by a race) is found
    within one round of sweeps, one bounded page per pass.
    """
    names = queue_names(session)
    if not names:
        return QueueRepair()
    name, after = _read_cursor(queue.cursor_text(SWEEP_CURSOR))
    if name not in names:
        later = [n for n in names if name is None or n > name]
        name, after = (later[0] if later else names[0]), None
    part, upto = _page(session, queue, name, after, batch)
    fixes = _repair(session, queue, part, dry_run=False, quiet=False)
    if upto is None:  # this queue is done: the next one (or, after the last, the first)
        later = [n for n in names if n > name]
        queue.set_cursor_text(SWEEP_CURSOR, f"{later[0]}|" if later else None)
    else:
        queue.set_cursor_text(SWEEP_CURSOR, f"{name}|{upto}")
    return fixes


def _read_cursor(raw: str | None) -> tuple[str | None, int | None]:
    if not raw:
        return None, None
    name, _, after = raw.partition("|")
    return name, int(after) if after else None


def _dequeue_taken(
    session: DbSession, queue: TicketQueue, name: str, ids: list[int], dry_run: bool
) -> list[int]:
    """Take out of queue ``name`` those of ``ids`` that do not belong there now
    (assigned, sold, deleted, or in another queue)."""
    try:
        # Re-check under the row locks: a release that makes one of them
        # unassigned again waits, then queues it itself after we are done.
        still = unassigned_among(session, ids, lock=not dry_run)
        taken = sorted(i for i in set(ids) if i not in still or still[i].queue != name)
        if taken and not dry_run:
            queue.dequeue(name, taken)
            log.info("queue %s: took out %d stray id(s): %s", name, len(taken), shorten(taken))
        return taken
    finally:
        session.rollback()
