"""The workers' jobs: thin wrappers that call the domain code and log the outcome."""

from __future__ import annotations

import logging
from collections.abc import Callable

from service.domain import DbSession
from service.domain.reaper import reap
from service.domain.rebuild import rebuild
from service.domain.reconcile import reconcile
from service.domain.relay import relay
from service.queue import TicketQueue

from .config import WorkerConfig
from .runner import Job

log = logging.getLogger("workers")

# Reservations handled per reaper step; more wait for the next step.
REAP_LIMIT = 1000


def build_jobs(
    session: DbSession,
    queue: TicketQueue,
    config: WorkerConfig,
    check_stop: Callable[[], None],
) -> list[Job]:
    """The four loops, in the order they run when due at once."""

    def rebuild_if_lost() -> None:
        if queue.is_built():
            return
        log.warning("rebuild: Redis has no epoch (it lost its data); rebuilding from PostgreSQL")

        def progress(phase: str, done: int, total: int) -> None:
            check_stop()  # a stop request abandons the rebuild; it merges, so that is safe

        rebuild(session, queue, progress=progress)  # logs what it did

    def relay_step() -> None:
        relay(session, queue)

    def reap_step() -> None:
        reap(session, queue, limit=REAP_LIMIT)

    def reconcile_step() -> None:
        reconcile(session, queue)

    return [
        # The rebuild first: while Redis is empty, the others would only redo
        # parts of its work.
        Job("rebuild", config.reaper_interval, rebuild_if_lost, lock_ttl=30.0),
        Job("reaper", config.reaper_interval, reap_step),
        Job("relay", config.relay_interval, relay_step, lock_ttl=30.0),
        Job("reconcile", config.reconcile_interval, reconcile_step, lock_ttl=30.0),
    ]
