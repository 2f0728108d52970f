"""The webhooks loop: fan the events out, then hand due endpoints to a pool of senders.

The loop's step only talks to PostgreSQL: it fans out the new events and
claims endpoints that have due deliveries, then returns. The HTTP requests run
on a bounded thread pool (``WEBHOOK_CONCURRENCY``), at most one batch per
endpoint at a time, so a slow or dead endpoint holds one thread for at most
``WEBHOOK_TIMEOUT_SECONDS`` per attempt and never delays the loop, another
endpoint, or anything else the workers do.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from sqlalchemy.engine import Engine

from service import metrics
from service.domain.webhook_delivery import Sent, Settings, claim, due_webhooks, fan_out, send_batch

log = logging.getLogger("workers")


class Dispatcher:
    """Fans out, and keeps up to ``concurrency`` endpoints' batches in flight."""

    def __init__(self, engine: Engine, settings: Settings, concurrency: int) -> None:
        self.engine = engine
        self.settings = settings
        self.concurrency = concurrency
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="webhook")
        self.in_flight: dict[int, Future[Sent]] = {}
        self.stopping = threading.Event()
        metrics.start_webhook_counters()

    def step(self) -> None:
        """Fan out the new events, then start a batch for each endpoint with due
        deliveries, as far as the pool has room. Never waits on an endpoint."""
        fan_out(self.engine)
        self._collect()
        room = self.concurrency - len(self.in_flight)
        if room <= 0:
            return
        for webhook_id in due_webhooks(self.engine, exclude=list(self.in_flight), limit=room):
            token = claim(self.engine, webhook_id, self.settings)
            if token is None:
                continue  # another process took it, or it was paused or deleted meanwhile
            self.in_flight[webhook_id] = self.pool.submit(
                send_batch,
                self.engine,
                webhook_id,
                token,
                self.settings,
                should_stop=self.stopping.is_set,
            )

    def _collect(self) -> None:
        for webhook_id, future in list(self.in_flight.items()):
            if not future.done():
                continue
            del self.in_flight[webhook_id]
            error = future.exception()
            if error is not None:
                # A database outage mid-batch: the claim lapses and the batch is retried.
                log.warning(
                    "webhooks: sending to webhook %d failed (%s: %s); retrying",
                    webhook_id,
                    type(error).__name__,
                    str(error).splitlines()[0] if str(error) else "",
                )
                continue
            sent = future.result()
            failed = sent.outcomes.get("retried", 0) + sent.outcomes.get("failed", 0)
            if failed:
                log.info(
                    "webhooks: webhook %d: %d delivered, %d to retry, %d failed for good;"
                    " last error: %s",
                    webhook_id,
                    sent.outcomes.get("delivered", 0),
                    sent.outcomes.get("retried", 0),
                    sent.outcomes.get("failed", 0),
                    sent.last_error,
                )
            elif sent.outcomes:
                log.debug("webhooks: webhook %d: %s", webhook_id, sent.outcomes)

    def close(self) -> None:
        """Stop starting attempts; wait for those in progress (each bounded by the
        timeout), so their outcomes are recorded."""
        self.stopping.set()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self._collect()
