"""Prometheus metrics: request counts and latency, assignment counters, backlog gauges.

Counters and histograms live in this module, one place each; the domain layer,
the workers and the request hooks call the small functions below.

Under gunicorn every worker is its own process, so the counters use
prometheus_client's multiprocess mode: with ``PROMETHEUS_MULTIPROC_DIR`` set
(gunicorn.conf.py sets it) each process writes its values to files there and
``/metrics`` sums them; ``gunicorn.conf.py``'s ``child_exit`` hook marks a dead
worker's files. The backlog gauges (queue depth, unassigned tickets, drift) are
not counted by anyone: they are computed with two cheap queries at scrape time.
"""

from __future__ import annotations

import fcntl
import hmac
import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Flask, Response, current_app, g, request
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.registry import Collector

from .config import ConfigError
from .errors import NotFound, Unauthorized
from .logging import route_label
from .models import utcnow

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# The `_created` timestamp series double the output and no alert needs them.
disable_created_metrics()

# Latency buckets for an API whose fast paths take a few milliseconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

HTTP_REQUESTS = Counter(
    "tq_http_requests_total",
    "HTTP requests answered, by route (the URL rule, not the raw path), method and status.",
    ["route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "tq_http_request_duration_seconds",
    "Time to answer an HTTP request, by route, method and status.",
    ["route", "method", "status"],
    buckets=LATENCY_BUCKETS,
)
ASSIGNMENTS = Counter("tq_assignments_total", "Tickets assigned to agents (committed).")
SELLS = Counter("tq_sells_total", "Tickets sold by agents (committed).")
# Long-lived connections open now, summed over the worker processes alive.
OPEN_STREAMS = Gauge("tq_open_streams", "Event streams open now.", multiprocess_mode="livesum")
WAITING_FETCHES = Gauge(
    "tq_waiting_fetches",
    "Fetches (?wait=) waiting for a ticket now.",
    multiprocess_mode="livesum",
)
RESERVATIONS_RETURNED = Counter(
    "tq_reservations_returned_total",
    "Expired reservations the reaper returned to the queue head.",
)
WEBHOOK_DELIVERIES = Counter(
    "tq_webhook_deliveries_total",
    "Webhook delivery attempts by outcome: delivered (a 2xx answer), retried (another"
    " attempt is scheduled), failed (the last attempt failed).",
    ["outcome"],
)
WEBHOOK_OUTCOMES = ("delivered", "retried", "failed")

# The method label: anything else (a client may send any token as its method)
# is counted as OTHER, so no request can add a series.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


# -- the calls the rest of the service makes ---------------------------------
def tickets_assigned(count: int) -> None:
    """Count tickets whose assignment PostgreSQL committed."""
    if count > 0:
        ASSIGNMENTS.inc(count)


def ticket_sold() -> None:
    """Count a sale PostgreSQL committed."""
    SELLS.inc()


def reservations_returned(count: int) -> None:
    """Count expired reservations the reaper gave back to the queue."""
    if count > 0:
        RESERVATIONS_RETURNED.inc(count)


def start_webhook_counters() -> None:
    """In a process that sends webhooks: every outcome's series from the start, at 0."""
    for outcome in WEBHOOK_OUTCOMES:
        WEBHOOK_DELIVERIES.labels(outcome)


def webhook_delivery(outcome: str) -> None:
    """Count one webhook attempt's outcome (``WEBHOOK_OUTCOMES``)."""
    WEBHOOK_DELIVERIES.labels(outcome).inc()


# -- per-request hooks --------------------------------------------------------
def _start_timer() -> None:
    g.metrics_started = time.perf_counter()


def method_label() -> str:
    return request.method if request.method in KNOWN_METHODS else "OTHER"


def _observe(response: Response) -> Response:
    started = g.pop("metrics_started", None)
    if started is not None:
        # Every label is bounded: the URL rules, seven methods and OTHER, and
        # the statuses werkzeug knows.
        labels = (route_label(), method_label(), str(response.status_code))
        HTTP_REQUESTS.labels(*labels).inc()
        # A fetch's wait for a ticket (?wait=) is the client's choice, not latency.
        waited = g.get("waited_seconds", 0.0)
        HTTP_LATENCY.labels(*labels).observe(max(time.perf_counter() - started - waited, 0.0))
    return response


# -- scrape-time gauges -------------------------------------------------------
class BacklogCollector(Collector):
    """Per queue: tickets waiting in Redis and unassigned in PostgreSQL, agents online
    and the oldest waiting ticket's age; reservations and drift. Read at scrape time.

    Queue names are made by admins, so these labels are bounded. A dependency
    that does not answer leaves its gauges out and sets ``tq_scrape_error``, so
    a scrape never fails because the thing it watches is down.
    """

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[Any]:
        from .domain.queues import list_queues
        from .extensions import db
        from .state import ticket_queue

        errors = GaugeMetricFamily(
            "tq_scrape_error",
            "1 when the dependency could not be read during this scrape.",
            labels=["dependency"],
        )
        views = depths = reserved = None
        with self.app.app_context():
            try:
                views = list_queues(db.session)
            except Exception as exc:  # noqa: BLE001 - any failure: report it, do not fail
                log.warning("metrics: database unreadable: %s", exc)
            finally:
                db.session.remove()
            try:
                queues = ticket_queue()
                names = [v.name for v in views] if views else sorted(queues.queue_names())
                depths, reserved = queues.depth(names)
            except Exception as exc:  # noqa: BLE001
                log.warning("metrics: redis unreadable: %s", exc)
        errors.add_metric(["redis"], 1.0 if depths is None else 0.0)
        errors.add_metric(["database"], 1.0 if views is None else 0.0)
        yield errors
        if depths is not None and reserved is not None:
            yield _per_queue("tq_queue_depth", "Tickets waiting in the queue in Redis.", depths)
            yield GaugeMetricFamily(
                "tq_reserved",
                "Reservations not yet cleared: fetches in flight, and confirmed tickets"
                " until their agent's next fetch or the end of their lease.",
                value=reserved,
            )
        if views is not None:
            yield _per_queue(
                "tq_unassigned_tickets",
                "Unassigned tickets of the queue in PostgreSQL.",
                {v.name: v.unassigned for v in views},
            )
            yield _per_queue(
                "tq_agents_online",
                "Active agents of the queue whose status is online.",
                {v.name: v.agents_online for v in views},
            )
            now = utcnow()
            yield _per_queue(
                "tq_oldest_unassigned_seconds",
                "Age of the queue's oldest unassigned ticket (0 when none waits).",
                {
                    v.name: (now - _aware(v.oldest_unassigned_at)).total_seconds()
                    if v.oldest_unassigned_at
                    else 0.0
                    for v in views
                },
            )
        if depths is not None and reserved is not None and views is not None:
            # Every unassigned ticket should be queued or reserved. Reservations
            # also cover confirmed tickets until their agent's next fetch, so the
            # value is normally at or below 0; above 0 for long means at least
            # that many tickets are missing from Redis and the relay is not
            # repairing it.
            unassigned = sum(v.unassigned for v in views)
            yield GaugeMetricFamily(
                "tq_queue_drift",
                "Unassigned tickets in PostgreSQL minus ids queued or reserved in Redis:"
                " above 0, tickets missing from Redis.",
                value=unassigned - sum(depths.values()) - reserved,
            )


class WebhookCollector(Collector):
    """Per active webhook: how old its oldest pending event is (0 when nothing is
    pending), read at scrape time. Webhooks are made by admins, so the labels are
    bounded. A database that does not answer leaves the gauge out (BacklogCollector
    reports it in ``tq_scrape_error``)."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[Any]:
        from .domain.webhooks import oldest_pending
        from .extensions import db

        with self.app.app_context():
            try:
                oldest = oldest_pending(db.session)
            except Exception as exc:  # noqa: BLE001 - any failure: leave it out, do not fail
                log.warning("metrics: webhooks unreadable: %s", exc)
                return
            finally:
                db.session.remove()
        family = GaugeMetricFamily(
            "tq_webhook_oldest_pending_seconds",
            "Age of the oldest event still pending delivery to the webhook (0 when none).",
            labels=["webhook"],
        )
        now = utcnow()
        for webhook_id, at in sorted(oldest.items()):
            family.add_metric([str(webhook_id)], (now - _aware(at)).total_seconds() if at else 0.0)
        yield family


def _per_queue(name: str, documentation: str, values: Mapping[str, float]) -> Any:
    family = GaugeMetricFamily(name, documentation, labels=["queue"])
    for queue, value in sorted(values.items()):
        family.add_metric([queue], value)
    return family


def _aware(at: datetime) -> datetime:
    """SQLite (embedded mode) hands back naive datetimes; they are UTC."""
    return at if at.tzinfo else at.replace(tzinfo=UTC)


# -- the multiprocess directory ------------------------------------------------
# A dead worker's counters must stay in the sums, but one file per dead worker
# would grow the directory, and the time of every scrape, with each recycle.
# gunicorn's child_exit folds them into one archive file per type instead.
ARCHIVE_ID = "archive"
_FOLDED_TYPES = ("counter", "histogram")


@contextmanager
def _directory_lock(directory: Path, exclusive: bool) -> Iterator[None]:
    """Scrapes read the directory under a shared lock; a fold writes under an
    exclusive one, so no scrape sees a dead worker's counts twice or not at all."""
    with open(directory / ".fold.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def fold_dead_process(pid: int, directory: Path | None = None) -> None:
    """Add a dead worker's counters and histograms to the archive files and remove
    its own; its live gauges stop counting."""
    directory = Path(directory or os.environ[MULTIPROC_ENV])
    with _directory_lock(directory, exclusive=True):
        for kind in _FOLDED_TYPES:
            dead = directory / f"{kind}_{pid}.db"
            if not dead.exists():
                continue
            archive = MmapedDict(str(directory / f"{kind}_{ARCHIVE_ID}.db"))
            try:
                for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(str(dead)):
                    total, _ = archive.read_value(key)
                    archive.write_value(key, total + value, timestamp)
            finally:
                archive.close()
            dead.unlink()
        multiprocess.mark_process_dead(pid, str(directory))


def render() -> Response:
    """The Prometheus exposition the scraper asked for, summed over every worker process.

    Only for operators: the scraper presents ``METRICS_TOKEN`` as a bearer token,
    and with no token configured the route is off.
    """
    expected = current_app.config["METRICS_TOKEN"]
    if expected is None:
        raise NotFound("metrics are off: set METRICS_TOKEN and scrape with it as a bearer token")
    presented = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(presented.encode(), expected.encode()):
        raise Unauthorized("scrape /metrics with the METRICS_TOKEN as a bearer token")
    registry = current_app.extensions["metrics_registry"]
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        with _directory_lock(Path(directory), exclusive=False):
            body = encoder(registry)
    else:
        body = encoder(registry)
    return Response(body, headers={"Content-Type": content_type})


def _registry(app: Flask) -> CollectorRegistry:
    if os.environ.get(MULTIPROC_ENV):
        # Sum the counters every process wrote, read fresh at each scrape.
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY

        registry = CollectorRegistry()
        registry.register(_Forward(REGISTRY))
    registry.register(BacklogCollector(app))
    registry.register(WebhookCollector(app))
    return registry


class _Forward(Collector):
    """The process's own metrics (single-process mode), beside the per-app collector."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        return iter(self.source.collect())


WORKER_METRICS_PORT_ENV = "WORKER_METRICS_PORT"


def start_worker_exporter(env: Mapping[str, str] | None = None) -> int | None:
    """Serve this process's metrics (the reaper's counter among them) on
    ``WORKER_METRICS_PORT``, for ``python -m workers``; nothing when it is unset."""
    env = os.environ if env is None else env
    raw = env.get(WORKER_METRICS_PORT_ENV) or ""
    if not raw:
        return None
    try:
        port = int(raw)
    except ValueError:
        raise ConfigError(f"{WORKER_METRICS_PORT_ENV} must be a port number, got {raw!r}") from None
    start_http_server(port)
    log.info("worker metrics on :%d/metrics", port)
    return port


def init_app(app: Flask) -> None:
    app.extensions["metrics_registry"] = _registry(app)
    app.before_request(_start_timer)
    app.after_request(_observe)
