"""The floor: the fast path's required work and nothing else.

Not the product. It does what the issue's work budget asks of a full agent's
fetch, with no framework around the drivers: the ceiling's JWT check
(flask-jwt-extended), the revocation MGET through redis-py, the product's own
SELECT of the agent's row and unsold tickets through a bare psycopg2
connection in autocommit, and the answer built by the product's serialiser
(holding_json) and written by orjson. No SQLAlchemy
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
import psycopg2.extras
import redis
from flask import Flask, Response
from flask_jwt_extended import JWTManager, get_jwt, jwt_required
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url

from service.domain.assignment import _HOLDING
from service.queue import TicketQueue
from service.schemas import holding_json

_compiled = _HOLDING.compile(dialect=postgresql.psycopg2.dialect())  # type: ignore[attr-defined]
_SQL = str(_compiled)
_PARAMS = _compiled.construct_params({"agent_id": 0})

app = Flask(__name__)
app.config["JWT_SECRET_KEY"] = os.environ["JWT_SECRET_KEY"]
app.url_map.strict_slashes = False
jwt = JWTManager(app)

_DSN = make_url(os.environ["DATABASE_URL"]).set(drivername="postgresql")
_queue = TicketQueue(redis.Redis.from_url(os.environ["REDIS_URL"]))
_conn: Any = None


def _db() -> Any:
    """One connection per worker process, opened on first use (after the fork)."""
    global _conn
    if _conn is None or _conn.closed:
        _conn = psycopg2.connect(
            _DSN.render_as_string(hide_password=False), options="-c timezone=UTC"
        )
        _conn.autocommit = True
    return _conn


@jwt.token_in_blocklist_loader
def _revoked(_header: dict[str, Any], payload: dict[str, Any]) -> bool:
    return _queue.revocation(payload["sid"])[0]


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


@app.route("/api/agent/tickets/assign/", methods=["GET", "POST"])
@jwt_required()
def assign() -> Response:
    claims = get_jwt()
    if claims.get("role") != "agent":
        return _json({"error": {"code": "forbidden", "message": "agents only"}}, 403)
    with _db().cursor(cursor_factory=psycopg2.extras.NamedTupleCursor) as cur:
        cur.execute(_SQL, {**_PARAMS, "agent_id": int(claims["sub"])})
        rows = cur.fetchall()
    if not rows or not rows[0].is_active:
        return _json({"error": {"code": "unauthorized", "message": "inactive"}}, 401)
    return _json(holding_json([r for r in rows if r.id is not None], rows[0].capacity))


@app.route("/healthz")
def healthz() -> Response:
    return _json({"status": "ok"})
