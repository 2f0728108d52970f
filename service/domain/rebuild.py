"""Rebuild Redis from PostgreSQL: the queue, every agent's held set, the blocklist.

Safe while the API takes traffic: nothing is replaced, everything is merged.
Ids PostgreSQL holds as unassigned are added if missing, queue members it no
longer holds as unassigned are removed after a re-check under their row lock,
wrong scores are reset, and each held set is resynced under its agent's lock
(see ``maintenance``). A ticket created, fetched or sold meanwhile is neither
lost nor queued twice. Redis counts as built again (the epoch) only if it was
not wiped while the rebuild ran.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import asdict, dataclass

from sqlalchemy import select

from ..models import RevokedSession, utcnow
from ..queue import TicketQueue
from . import DbSession
from .queue_repair import repair_queue
from .reaper import end_reservations
from .reconcile import fix_held
from .relay import forget_covered, outbox_high_water
from .ticket_state import BATCH, Progress, ticket_states

log = logging.getLogger(__name__)


@dataclass
class RebuildSummary:
    """What a rebuild found wrong (and, unless a dry run, put right)."""

    unassigned: int = 0  # unassigned tickets PostgreSQL had during the scan
    missing: int = 0  # unassigned, neither queued nor reserved: queued
    extra: int = 0  # queued, but not unassigned in PostgreSQL: taken out of the queue
    out_of_order: int = 0  # queued in the wrong queue or at the wrong score: put right
    held_fixed: int = 0  # agents whose held set disagreed with PostgreSQL: resynced
    reservations_cleared: int = 0  # expired, or of taken or deleted tickets: ended
    revoked: int = 0  # logged-out sessions missing from the Redis blocklist: restored
    dry_run: bool = False
    completed: bool = False  # the epoch was set (False on a dry run, or after a wipe meanwhile)
    filled: bool = False  # Redis held nothing built from PostgreSQL: a fill, not a repair
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def describe(self) -> str:
        if self.filled:
            return (
                f"filled the empty Redis from PostgreSQL: {self.missing} unassigned ticket(s)"
                f" queued, the held tickets of {self.held_fixed} agent(s),"
                f" {self.revoked} logged-out session(s) ({self.seconds:.1f}s)"
            )
        verb = "would fix" if self.dry_run else "fixed"
        return (
            f"{verb}: missing {self.missing}, extra {self.extra}, "
            f"out of order {self.out_of_order}, held sets {self.held_fixed}, "
            f"reservations {self.reservations_cleared}, revocations {self.revoked} "
            f"({self.unassigned} unassigned tickets, {self.seconds:.1f}s)"
        )


def _noop(phase: str, done: int, total: int) -> None:
    return None


def rebuild(
    session: DbSession,
    queue: TicketQueue,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
    batch: int = BATCH,
) -> RebuildSummary:
    """Merge PostgreSQL's truth into Redis; with ``dry_run``, only report what differs."""
    started = time.monotonic()
    report = progress or _noop
    summary = RebuildSummary(dry_run=dry_run)
    # An empty Redis (a restart, embedded mode's start) is filled, not repaired:
    # what it lacks is expected, and reported as such.
    if not dry_run:
        # Data of an older key layout is rebuilt into this one, and nothing reads
        # the old keys again: they go first (they would also look like data).
        queue.drop_older_layouts()
    summary.filled = not dry_run and not queue.is_built() and queue.is_empty()
    quiet = summary.filled
    # A wipe while we run deletes this marker, and then the epoch stays unset.
    token = None if dry_run else queue.begin_build()
    # The outbox rows written so far name tickets this rebuild covers.
    outbox_upto = outbox_high_water(session)
    session.rollback()

    fixes = repair_queue(session, queue, dry_run=dry_run, progress=report, batch=batch, quiet=quiet)
    summary.unassigned, summary.missing = fixes.unassigned, fixes.missing
    summary.extra, summary.out_of_order = fixes.extra, fixes.out_of_order
    _clear_reservations(session, queue, summary, dry_run)
    report("held sets", 0, 1)
    summary.held_fixed = len(fix_held(session, queue, dry_run=dry_run, quiet=quiet))
    report("held sets", 1, 1)
    summary.revoked = _restore_revocations(session, queue, dry_run)

    if token is not None:
        forget_covered(session, outbox_upto)
        session.commit()
        summary.completed = queue.finish_build(token, uuid.uuid4().hex)
        if not summary.completed:
            log.warning("rebuild: Redis lost its data while rebuilding; run the rebuild again")
    summary.seconds = time.monotonic() - started
    log.info("rebuild: %s", summary.describe())
    return summary


def _clear_reservations(
    session: DbSession, queue: TicketQueue, summary: RebuildSummary, dry_run: bool
) -> None:
    """Return expired reservations; drop live ones of tickets sold or deleted.

    A live lease on an unassigned ticket is a fetch in flight: it stays, and
    the fetch settles it. One on an assigned ticket is a confirmed ticket's,
    which its agent's next fetch clears (or the reaper, once the lease ends):
    it stays too.
    """
    now = queue.now()
    entries = queue.reservations()
    expired = [i for i, deadline in entries if deadline <= now]
    live = [i for i, deadline in entries if deadline > now]
    cleared = 0
    if expired:
        result = end_reservations(
            session, queue, expired, cutoff=now, requeue=True, dry_run=dry_run
        )
        cleared += len(result)
    if live:
        # Only reservations of sold or deleted tickets go; no row lock is
        # needed (nothing is queued), so confirms in flight never wait for us.
        states = ticket_states(session, live)
        session.rollback()
        stale = [i for i in live if i not in states or states[i].status == "sold"]
        if dry_run:
            cleared += len(stale)
        else:
            cleared += len(queue.reap([(i, None) for i in stale], cutoff=float("inf")))
    if cleared:
        log.info("rebuild: ended %d stale reservation(s)", cleared)
    summary.reservations_cleared = cleared


def _restore_revocations(session: DbSession, queue: TicketQueue, dry_run: bool) -> int:
    now = utcnow()
    entries: list[tuple[str, int]] = []
    for revoked in session.scalars(select(RevokedSession).where(RevokedSession.expires_at > now)):
        # SQLite (embedded mode) hands back naive datetimes; they are UTC.
        expires = revoked.expires_at
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=now.tzinfo)
        entries.append((revoked.sid, int((expires - now).total_seconds()) + 1))
    session.rollback()
    restored = queue.restore_revocations(entries, dry_run=dry_run)
    if restored:
        log.debug("rebuild: restored %d logged-out session(s) to the blocklist", restored)
    return restored
