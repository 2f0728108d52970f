"""The floor: the fast path's required work and nothing else.

Not the product. It does what the issue's work budget asks of a full agent's
fetch, with no framework around the drivers: the ceiling's JWT check
(flask-jwt-extended), the revocation MGET through redis-py, the product's own
SELECT of the agent's row and unsold tickets through a bare psycopg2
connection in autocommit, and the answer written by orjson. No SQLAlchemy
engine or pool, no request log, no metrics, no error handling beyond the
checks. What it reaches of the ceiling is about the most the product's fast
path can reach on the same machine.

    gunicorn scripts.bench.floor_app:app   (with JWT_SECRET_KEY, DATABASE_URL, REDIS_URL set)
"""

from __future__ import annotations

import os
from typing import Any

import orjson
import psycopg2
import redis
from flask import Flask, Response
from flask_jwt_extended import JWTManager, get_jwt, jwt_required
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url

from service.domain.assignment import _HOLDING
from service.queue import TicketQueue

_compiled = _HOLDING.compile(dialect=postgresql.psycopg2.dialect())  # type: ignore[attr-defined]
_SQL = str(_compiled)
_PARAMS = _compiled.construct_params({"agent_id": 0})
_COLUMNS = ("id", "title", "description", "status", "agent_id")
_TIMES = ("created_at", "updated_at", "assigned_at", "sold_at")

app = Flask(__name__)
app.config["JWT_SECRET_KEY"] = os.environ["JWT_SECRET_KEY"]
app.url_map.strict_slashes = False
jwt = JWTManager(app)

_url = make_url(os.environ["DATABASE_URL"])
_redis = redis.Redis.from_url(os.environ["REDIS_URL"])
_keys = TicketQueue(_redis)
_conn: Any = None


def _db() -> Any:
    """One connection per worker process, opened on first use (after the fork)."""
    global _conn
    if _conn is None or _conn.closed:
        _conn = psycopg2.connect(
            host=_url.host,
            port=_url.port or 5432,
            user=_url.username,
            password=_url.password,
            dbname=_url.database,
            options="-c timezone=UTC",
        )
        _conn.autocommit = True
    return _conn


@jwt.token_in_blocklist_loader
def _revoked(_header: dict[str, Any], payload: dict[str, Any]) -> bool:
    revoked, _epoch = _redis.mget(_keys.revoked_key(payload["jti"]), _keys.epoch_key)
    return revoked is not None


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


@app.route("/api/agent/tickets/assign/", methods=["GET", "POST"])
@jwt_required()
def assign() -> Response:
    claims = get_jwt()
    if claims.get("role") != "agent":
        return _json({"error": {"code": "forbidden", "message": "agents only"}}, 403)
    with _db().cursor() as cur:
        cur.execute(_SQL, {**_PARAMS, "agent_id": int(claims["sub"])})
        names = [d.name for d in cur.description]
        rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    if not rows or not rows[0]["is_active"]:
        return _json({"error": {"code": "unauthorized", "message": "inactive"}}, 401)
    tickets = [
        {**{c: r[c] for c in _COLUMNS}, **{t: r[t] for t in _TIMES}}
        for r in rows
        if r["id"] is not None
    ]
    return _json({"tickets": tickets, "capacity": rows[0]["capacity"]})


@app.route("/healthz")
def healthz() -> Response:
    return _json({"status": "ok"})
