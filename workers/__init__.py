"""Background workers: ``python -m workers`` (in embedded mode, inside the server).

One process runs the loops, each calling the domain code in ``service.domain``:

* relay (``RELAY_INTERVAL_SECONDS``, default 2): drain the queue outbox, queueing
  every ticket that became unassigned (a push lost to a crash or an outage);
* reaper (``REAPER_INTERVAL_SECONDS``, default 1): return reservations whose
  lease ended to their queues, or drop them if the ticket was taken or deleted;
* reconcile (``RECONCILE_INTERVAL_SECONDS``, default 30): resync the held sets of
  agents whose tickets changed, and a rolling sweep of agents and of the queues;
* presence (``PRESENCE_INTERVAL_SECONDS``, default 5): write last-seen times,
  and apply the opt-in idle and offline rules;
* rebuild (checked at the reaper's interval): if the epoch key is missing,
  Redis lost its data, so rebuild it from PostgreSQL;
* webhooks (``WEBHOOK_INTERVAL_SECONDS``, default 1): fan new events out to the
  webhooks and hand due deliveries to sender threads (``workers/webhooks.py``);
  its claims are rows in PostgreSQL, so it takes no Redis lock.

Running several worker processes at once is safe because every step is
idempotent: each locks the PostgreSQL rows it acts on and changes Redis with a
Lua script that re-checks what it relies on, so two processes doing the same
step change nothing one of them alone would not. On top of that each step
takes a short Redis lock (``SET NX PX`` with a random token, released by a
compare-and-delete script) only so that several processes do not all scan the
same tables at once; when a lock expires mid-step, a second process may run
the step concurrently, which costs work but never correctness.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from .runner import Runner

log = logging.getLogger("workers")


def build_runner(app: Flask) -> Runner:
    """The loops, ready to run inside an app context of ``app``."""
    from service.extensions import db

    from .config import WorkerConfig
    from .jobs import build_jobs
    from .runner import Runner

    config = WorkerConfig.from_env()
    queue = app.extensions["ticket_queue"]

    def end_session() -> None:
        # Return the connection after every step; one the server closed is
        # replaced on its next checkout, so an outage never wedges the loop.
        try:
            db.session.remove()
        except Exception as exc:  # noqa: BLE001
            log.debug("could not close the session cleanly: %s", exc)

    runner = Runner(queue, [], max_backoff=config.max_backoff, after_step=end_session)
    runner.jobs = build_jobs(db.session, queue, config, runner.check_stop)
    log.info(
        "workers started: relay every %ss, reaper every %ss, reconcile every %ss,"
        " presence every %ss",
        config.relay_interval,
        config.reaper_interval,
        config.reconcile_interval,
        config.presence_interval,
    )
    return runner


def run_in_background(app: Flask) -> Runner:
    """Embedded mode: the same loops inside the server process, beside its in-process
    Redis (a greenlet under gevent, a thread otherwise)."""

    runner: list[Runner] = []
    started = threading.Event()

    def loop() -> None:
        with app.app_context():
            runner.append(build_runner(app))
            started.set()
            runner[0].run()

    threading.Thread(target=loop, name="workers", daemon=True).start()
    started.wait(10)
    return runner[0]
