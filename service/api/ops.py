"""Liveness and readiness probes."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from sqlalchemy import text

from ..errors import error_response
from ..extensions import db
from ..state import ticket_queue

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """200 while the process serves."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> Response:
    """200 when PostgreSQL and Redis both answer, else 503 naming what failed."""
    failed = []
    try:
        db.session.execute(text("SELECT 1"))
    except Exception:  # noqa: BLE001 - any failure means not ready
        failed.append("database")
    finally:
        db.session.rollback()
    try:
        ticket_queue().ping()
    except Exception:  # noqa: BLE001
        failed.append("redis")
    if failed:
        return error_response(503, "not_ready", f"unavailable: {', '.join(failed)}")
    return jsonify(status="ready")
