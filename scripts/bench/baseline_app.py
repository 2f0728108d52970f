"""The PostgreSQL-only baseline: the classic ``FOR UPDATE SKIP LOCKED`` top-up.

Not the product. The same routes and JSON as the agent side of the product,
with no Redis: a fetch is one short transaction,

1. ``SELECT ... FROM users WHERE id = agent FOR UPDATE``: lock the agent's row
   (its concurrent fetches queue up; I2 holds) and check it is active and the
   token is not revoked (the product asks Redis for that);
2. one statement: count what the agent holds, take that many of the oldest
   unassigned tickets with ``FOR UPDATE SKIP LOCKED``, assign them, log the
   events, and return everything the agent holds;
3. ``COMMIT``.

A sale is one statement (guarded UPDATE, event, account check) and a commit.
Step 2 needs its own statement: under READ COMMITTED a statement's snapshot is
taken before it waits for the agent's lock, so a count in step 1 could miss a
ticket a concurrent fetch of the same agent just committed.

    gunicorn scripts.bench.baseline_app:app   (JWT_SECRET_KEY, BENCH_DATABASE_URL)
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg2
import psycopg2.extras
import psycopg2.pool
from flask import Flask, jsonify
from flask_jwt_extended import JWTManager, get_jwt, jwt_required
from sqlalchemy.engine import make_url

COLUMNS = "id, title, description, status, agent_id, created_at, updated_at, assigned_at, sold_at"

LOCK_AGENT = """
SELECT capacity, is_active,
       EXISTS (SELECT 1 FROM revoked_sessions WHERE sid = %(sid)s) AS revoked
FROM users WHERE id = %(agent)s AND role = 'agent'
FOR UPDATE
"""

TOP_UP = f"""
WITH picked AS (
    SELECT id FROM tickets
    WHERE status = 'unassigned'
    ORDER BY id
    LIMIT GREATEST(%(capacity)s - (
        SELECT count(*) FROM tickets WHERE agent_id = %(agent)s AND status = 'assigned'
    ), 0)
    FOR UPDATE SKIP LOCKED
), taken AS (
    UPDATE tickets t
    SET status = 'assigned', agent_id = %(agent)s, assigned_at = now(), updated_at = now()
    FROM picked WHERE t.id = picked.id
    RETURNING t.*
), logged AS (
    INSERT INTO ticket_events (ticket_id, kind, actor_id, agent_id, at)
    SELECT id, 'assigned', %(agent)s, %(agent)s, now() FROM taken
)
SELECT {COLUMNS} FROM tickets WHERE agent_id = %(agent)s AND status = 'assigned'
UNION ALL
SELECT {COLUMNS} FROM taken
ORDER BY id
"""

SELL = f"""
WITH sold AS (
    UPDATE tickets SET status = 'sold', sold_at = now(), updated_at = now()
    WHERE id = %(ticket)s AND agent_id = %(agent)s AND status = 'assigned'
      AND EXISTS (SELECT 1 FROM users WHERE id = %(agent)s AND is_active)
      AND NOT EXISTS (SELECT 1 FROM revoked_sessions WHERE sid = %(sid)s)
    RETURNING {COLUMNS}
), logged AS (
    INSERT INTO ticket_events (ticket_id, kind, actor_id, agent_id, at)
    SELECT id, 'sold', %(agent)s, %(agent)s, now() FROM sold
)
SELECT {COLUMNS} FROM sold
"""

app = Flask(__name__)
app.config["JWT_SECRET_KEY"] = os.environ["JWT_SECRET_KEY"]
app.url_map.strict_slashes = False
app.json.sort_keys = False  # type: ignore[attr-defined]
JWTManager(app)

_DSN = make_url(os.environ["BENCH_DATABASE_URL"]).set(drivername="postgresql")
_pool: psycopg2.pool.ThreadedConnectionPool | None = None
_pool_lock = threading.Lock()


@contextmanager
def transaction() -> Iterator[Any]:
    """A cursor in one transaction on this process's pool (made after the fork)."""
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = psycopg2.pool.ThreadedConnectionPool(
                    1,
                    16,
                    _DSN.render_as_string(hide_password=False),
                    options="-c statement_timeout=5000",
                )
    conn = _pool.getconn()
    try:
        with conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            yield cur
    finally:
        _pool.putconn(conn)


def _json(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


def _error(status: int, code: str, message: str) -> Any:
    return jsonify(error={"code": code, "message": message}), status


@app.route("/api/agent/tickets/assign/", methods=["GET", "POST"])
@jwt_required()
def assign() -> Any:
    claims = get_jwt()
    if claims.get("role") != "agent":
        return _error(403, "forbidden", "this route needs the agent role")
    params = {"agent": int(claims["sub"]), "sid": claims["sid"]}
    with transaction() as cur:
        cur.execute(LOCK_AGENT, params)
        agent = cur.fetchone()
        if agent is None or not agent["is_active"] or agent["revoked"]:
            return _error(401, "unauthorized", "the account is inactive or no longer exists")
        cur.execute(TOP_UP, {**params, "capacity": agent["capacity"]})
        tickets = [_json(row) for row in cur.fetchall()]
    return jsonify(tickets=tickets, capacity=agent["capacity"])


@app.route("/api/agent/tickets/sell/<int:ticket_id>/", methods=["POST"])
@jwt_required()
def sell(ticket_id: int) -> Any:
    claims = get_jwt()
    if claims.get("role") != "agent":
        return _error(403, "forbidden", "this route needs the agent role")
    with transaction() as cur:
        cur.execute(SELL, {"agent": int(claims["sub"]), "sid": claims["sid"], "ticket": ticket_id})
        row = cur.fetchone()
    if row is None:
        return _error(404, "not_found", f"you hold no ticket {ticket_id}")
    return jsonify(_json(row))


@app.route("/healthz")
def healthz() -> Any:
    return jsonify(status="ok")
