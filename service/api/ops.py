"""Liveness and readiness probes, and the Prometheus metrics."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from flask import Flask, Response, current_app
from marshmallow import Schema, fields
from sqlalchemy import text

from .. import metrics
from ..errors import error_response
from ..extensions import db
from ..schemas import ErrorSchema
from ..state import ticket_queue
from . import METRICS_SCHEME, Blueprint

blp = Blueprint("ops", __name__, description="Operations", uses_backends=False)


class StatusSchema(Schema):
    status = fields.String(required=True)


@blp.route("/healthz", methods=["GET"])
@blp.response(200, StatusSchema)
def healthz() -> dict[str, str]:
    """Liveness: 200 while the process serves; touches neither PostgreSQL nor Redis."""
    return {"status": "ok"}


# A probe that hangs is worse than one that fails: each check gets a deadline
# (READINESS_TIMEOUT_SECONDS), and a check still running when it passes
# counts as down. A few threads per process, so probes during an outage
# cannot pile up unbounded work.
_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="readyz")
        return _executor


def _database_answers(app: Flask) -> None:
    with app.app_context(), db.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def _redis_answers(app: Flask) -> None:
    with app.app_context():
        ticket_queue().ping()


def _failed_checks(timeout: float) -> list[str]:
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    checks: dict[str, Callable[[Flask], None]] = {
        "database": _database_answers,
        "redis": _redis_answers,
    }
    futures: dict[str, Future[None]] = {
        name: _pool().submit(check, app) for name, check in checks.items()
    }
    deadline = time.monotonic() + timeout
    failed = []
    for name, future in futures.items():
        try:
            future.result(timeout=max(deadline - time.monotonic(), 0.0))
        except Exception:  # noqa: BLE001 - a timeout or any error means not ready
            future.cancel()
            failed.append(name)
    return failed


@blp.route("/readyz", methods=["GET"])
@blp.response(200, StatusSchema)
@blp.alt_response(503, schema=ErrorSchema, description="PostgreSQL or Redis did not answer in time")
def readyz() -> Any:
    """Readiness: 200 when PostgreSQL and Redis both answer within the timeout, else 503."""
    failed = _failed_checks(current_app.config["READINESS_TIMEOUT_SECONDS"])
    if failed:
        return error_response(503, "not_ready", f"unavailable: {', '.join(failed)}")
    return {"status": "ready"}


@blp.route("/metrics", methods=["GET"], operation_id="getMetrics")
@blp.doc(security=[{METRICS_SCHEME: []}])
@blp.response(
    200,
    {"type": "string"},
    content_type="text/plain",
    description="Prometheus text exposition format, or OpenMetrics when Accept asks for it",
)
@blp.alt_response(
    200,
    schema={"type": "string"},
    content_type="application/openmetrics-text",
    description="Prometheus text exposition format, or OpenMetrics when Accept asks for it",
    success=True,
)
@blp.alt_response(401, schema=ErrorSchema, description="No METRICS_TOKEN, or the wrong one")
@blp.alt_response(404, schema=ErrorSchema, description="Metrics are off (no METRICS_TOKEN set)")
def prometheus_metrics() -> Response:
    """Prometheus metrics: requests, latency, assignments, sells, queue depth, drift.
    For operators: the scraper presents METRICS_TOKEN as a bearer token."""
    return metrics.render()
