"""The relay: queue every ticket that became unassigned, as PostgreSQL noted it.

A trigger on tickets writes a row to ``queue_outbox`` in the same transaction
as any insert of an unassigned ticket or any release, whoever made it (the
service, a script, SQL behind the service's back). The service pushes such a
ticket to Redis itself right after the commit; the relay is the net behind that
push (Redis was down, the process died between the commit and the push). It
drains the outbox a batch at a time: each batch's rows are deleted in the
transaction that locks the tickets and queues the still-unassigned ones, so a
batch whose Redis writes fail is rolled back and tried again.

Its cost follows the changes: an idle service with a million tickets waiting
costs it one indexed DELETE of nothing per pass.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import delete, select

from ..models import QueueOutbox
from ..queue import TicketQueue
from . import DbSession
from .ticket_state import shorten, unassigned_among

log = logging.getLogger(__name__)

# Outbox rows per transaction, and transactions per pass: a burst (a bulk
# insert) is drained over several passes rather than in one long one.
OUTBOX_BATCH = 5_000
BATCHES_PER_PASS = 20


def _take(session: DbSession, limit: int) -> dict[int, str | None]:
    """Delete up to ``limit`` outbox rows, oldest first; the tickets they named, each
    with a queue it moved out of (None: it was inserted or released).

    On PostgreSQL, rows another relay process is taking are skipped (SKIP
    LOCKED), so two processes drain the outbox side by side; the deletion
    stands only if the caller commits.
    """
    oldest = select(QueueOutbox.id).order_by(QueueOutbox.id).limit(limit)
    rows: Sequence[Any]
    if session.get_bind().dialect.name == "postgresql":
        taken = delete(QueueOutbox).where(
            QueueOutbox.id.in_(oldest.with_for_update(skip_locked=True).scalar_subquery())
        )
        rows = session.execute(taken.returning(QueueOutbox.ticket_id, QueueOutbox.left_queue)).all()
    else:
        rows = session.execute(
            select(QueueOutbox.id, QueueOutbox.ticket_id, QueueOutbox.left_queue)
            .order_by(QueueOutbox.id)
            .limit(limit)
        ).all()
        if rows:
            session.execute(delete(QueueOutbox).where(QueueOutbox.id.in_([r.id for r in rows])))
    noted: dict[int, str | None] = {}
    for row in rows:
        noted[row.ticket_id] = row.left_queue or noted.get(row.ticket_id)
    return noted


def relay(session: DbSession, queue: TicketQueue, *, batch: int = OUTBOX_BATCH) -> int:
    """Drain the outbox; queue what is still unassigned and not reserved. Returns how
    many tickets were queued that were not queued before."""
    pushed = 0
    for _ in range(BATCHES_PER_PASS):
        try:
            noted = _take(session, batch)
            if not noted:
                break
            # Locked while Redis is written: no ticket is queued after a fetch
            # took it (a fetch's confirm waits for these rows). A ticket that
            # moved queues also leaves the one it was in.
            places = unassigned_among(session, sorted(noted), lock=True)
            added = queue.enqueue(
                replace(place, left=noted[i]) if noted[i] and noted[i] != place.queue else place
                for i, place in places.items()
            )
            session.commit()
        except BaseException:
            session.rollback()  # the rows stay in the outbox for the next pass
            raise
        if added:
            log.info("relay: queued %d missing ticket(s): %s", len(added), shorten(added))
            pushed += len(added)
    return pushed


def forget_covered(session: DbSession, upto: int) -> None:
    """Drop the outbox rows up to ``upto``: a rebuild that started after they were
    written has queued their tickets (the caller commits)."""
    session.execute(delete(QueueOutbox).where(QueueOutbox.id <= upto))


def outbox_high_water(session: DbSession) -> int:
    """The newest outbox row's id (0 when empty)."""
    return int(session.scalar(select(QueueOutbox.id).order_by(QueueOutbox.id.desc()).limit(1)) or 0)
