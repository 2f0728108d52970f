"""The workers' jobs: thin wrappers that call the domain code and log the outcome."""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import current_app

from service.auth import forget_expired_revocations
from service.domain import DbSession
from service.domain.presence import idle_to_offline, persist_last_seen, release_offline
from service.domain.reaper import reap
from service.domain.rebuild import rebuild
from service.domain.reconcile import reconcile
from service.domain.relay import relay
from service.domain.webhook_delivery import Settings as WebhookSettings
from service.queue import TicketQueue

from .config import WorkerConfig
from .runner import Job
from .webhooks import Dispatcher

log = logging.getLogger("workers")

# Reservations handled per reaper step; more wait for the next step.
REAP_LIMIT = 1000
# Housekeeping: how often, and how many expired rows per step.
HOUSEKEEPING_INTERVAL = 60.0
HOUSEKEEPING_LIMIT = 1000


def build_jobs(
    session: DbSession,
    queue: TicketQueue,
    config: WorkerConfig,
    check_stop: Callable[[], None],
) -> list[Job]:
    """The loops, in the order they run when due at once."""

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

    def presence_step() -> None:
        persist_last_seen(session, queue)
        if config.idle_offline_after is not None:
            idle_to_offline(session, config.idle_offline_after)
        if config.offline_release_after is not None:
            release_offline(session, queue, config.offline_release_after)

    # Webhooks need PostgreSQL only: their claims are rows there, not Redis locks.
    webhooks = Dispatcher(
        session.get_bind().engine,
        WebhookSettings(
            timeout=config.webhook_timeout,
            max_attempts=config.webhook_max_attempts,
            retry_base=config.webhook_retry_base,
            retry_max=config.webhook_retry_max,
            # Read by the app's configuration, as the API checks URLs with it too.
            allow_private=current_app.config["WEBHOOK_ALLOW_PRIVATE"],
        ),
        config.webhook_concurrency,
    )

    def housekeeping_step() -> None:
        forgotten = forget_expired_revocations(session, limit=HOUSEKEEPING_LIMIT)
        if forgotten:
            log.info("housekeeping: forgot %d expired revoked session(s)", forgotten)

    return [
        # The rebuild first: while Redis is empty, the others would only redo
        # parts of its work.
        Job("rebuild", config.reaper_interval, rebuild_if_lost, lock_ttl=30.0),
        Job("reaper", config.reaper_interval, reap_step),
        Job("relay", config.relay_interval, relay_step, lock_ttl=30.0),
        Job("reconcile", config.reconcile_interval, reconcile_step, lock_ttl=30.0),
        Job("presence", config.presence_interval, presence_step, lock_ttl=30.0),
        Job("housekeeping", HOUSEKEEPING_INTERVAL, housekeeping_step, lock_ttl=30.0),
        Job(
            "webhooks",
            config.webhook_interval,
            webhooks.step,
            locked=False,
            on_stop=webhooks.close,
        ),
    ]
