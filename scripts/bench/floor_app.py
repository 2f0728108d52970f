"""The floor: the assignment path's required work and nothing else.

Not the product. It does what the issue's work budget asks of a fetch, with
no framework around the drivers, on the product's own state (its tables, its
Redis keys, its statements):

* every request: the ceiling's JWT check (the product's one decode) and the
  revocation script through redis-py (``TicketQueue.revocation``), which also
  notes the agent as seen;
* a fetch: the product's SELECT of the agent's row, queues, presence and
  unsold tickets through a bare psycopg2 connection in autocommit. A full (or
  not online) agent is answered from it (the fast-path floor). An online agent
  short of its capacity is topped up (the top-up floor): ONE call of the
  product's ``reserve.lua`` over its queues
  (``TicketQueue.reserve``), then ONE short transaction with the product's
  statements: BEGIN, lock the agent's row (FOR NO KEY UPDATE), list its unsold
  tickets, the guarded UPDATE ... RETURNING of the reserved ids with its event
  INSERT in the same statement, COMMIT. One round, where the product may retry;
* a sale: the product's one statement (the guarded UPDATE with its event) in
  autocommit. The product also takes the sold id out of Redis at once; that is
  not required, since the agent's next ``reserve.lua`` call drops it from its
  held set, so the floor leaves it out;
* the answer: the product's serialisers (``holding_json``, ``ticket_json``),
  written by orjson.

No SQLAlchemy engine or pool, no request log, no metrics, no error handling
beyond the checks. What it reaches of the ceiling is about the most the
product can reach on the same machine, path by path.

    gunicorn scripts.bench.floor_app:app   (with JWT_SECRET_KEY, DATABASE_URL, REDIS_URL set)
"""

from __future__ import annotations

import os
import queue
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import orjson
import psycopg2
import psycopg2.extras
import redis
from flask import Flask, Response, request
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url
from sqlalchemy.sql import ClauseElement

from service.auth import Claims, decode
from service.domain.assignment import (
    _ASSIGN_LOGGED,
    _HOLDING,
    _LOCK_AGENT,
    _SELL_LOGGED,
    _STILL_UNASSIGNED,
    _UNSOLD,
)
from service.errors import ServiceError
from service.models import utcnow
from service.queue import Placement, TicketQueue, score
from service.schemas import holding_json, ticket_json

# The expanding parameters of the product's statements (lists of ids, of queue
# names): psycopg2 writes a tuple as "(1, 2, 3)", so each becomes one plain parameter.
_EXPANDING = re.compile(r"\(__\[POSTCOMPILE_(\w+)\]\)")


def _compiled(statement: ClauseElement) -> tuple[str, dict[str, Any]]:
    """A product statement as psycopg2 SQL and its fixed parameters, compiled once."""
    compiled = statement.compile(dialect=postgresql.psycopg2.dialect())  # type: ignore[attr-defined]
    return _EXPANDING.sub(r"%(\1)s", str(compiled)), dict(compiled.params)


HOLDING = _compiled(_HOLDING)
LOCK_AGENT = _compiled(_LOCK_AGENT)
UNSOLD = _compiled(_UNSOLD)
ASSIGN = _compiled(_ASSIGN_LOGGED.one_statement)
STILL_UNASSIGNED = _compiled(_STILL_UNASSIGNED)
SELL = _compiled(_SELL_LOGGED.one_statement)

app = Flask(__name__)
app.config["JWT_SECRET_KEY"] = os.environ["JWT_SECRET_KEY"]
app.url_map.strict_slashes = False

_DSN = make_url(os.environ["DATABASE_URL"]).set(drivername="postgresql")
_LEASE_SECONDS = int(os.environ.get("RESERVATION_LEASE_SECONDS") or 30)
_queue = TicketQueue(redis.Redis.from_url(os.environ["REDIS_URL"]))
# Connections of this worker process, opened on first use (after the fork), in
# autocommit: a lone statement is one round trip; a transaction says BEGIN. A
# gevent worker serves many requests at once, each on a connection of its own:
# at most as many as the product's pool holds (5 plus 5 overflow), the others
# wait for one (a queue, cooperative under gevent).
_POOL_SIZE = 10
_idle: queue.LifoQueue[Any] = queue.LifoQueue()
_opened: list[Any] = []


def _new_connection() -> Any:
    conn = psycopg2.connect(_DSN.render_as_string(hide_password=False), options="-c timezone=UTC")
    conn.autocommit = True
    return conn


@contextmanager
def _cursor() -> Iterator[Any]:
    """A cursor on a connection of this request's own, given back after."""
    try:
        conn = _idle.get_nowait()
    except queue.Empty:
        if len(_opened) < _POOL_SIZE:
            conn = _new_connection()
            _opened.append(conn)
        else:
            conn = _idle.get()
    try:
        with conn.cursor(cursor_factory=psycopg2.extras.NamedTupleCursor) as cur:
            yield cur
    finally:
        _idle.put(conn)


def close_connections() -> None:
    for conn in _opened:
        conn.close()
    _opened.clear()


def _run(cur: Any, statement: tuple[str, dict[str, Any]], **params: Any) -> list[Any]:
    sql, fixed = statement
    cur.execute(sql, {**fixed, **params})
    return list(cur.fetchall())


@contextmanager
def _transaction() -> Iterator[Any]:
    """BEGIN ... COMMIT on the autocommit connection (ROLLBACK on an error)."""
    with _cursor() as cur:
        cur.execute("BEGIN")
        try:
            yield cur
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


def _error(status: int, code: str, message: str) -> Response:
    return _json({"error": {"code": code, "message": message}}, status)


def _caller() -> Claims | Response:
    """The token's claims, checked as the product checks them: one decode, then the
    revocation script (noting the agent as seen); or the error to answer."""
    try:
        claims = decode(request.headers.get("Authorization", "").removeprefix("Bearer "))
    except ServiceError as exc:
        return _error(exc.status, exc.code, exc.message)
    if _queue.revocation(claims.session, claims.user_id)[0]:
        return _error(401, "token_revoked", "the token was revoked")
    if claims.role != "agent":
        return _error(403, "forbidden", "agents only")
    return claims


def _top_up(
    agent_id: int, capacity: int, known: Sequence[Any], queues: list[str]
) -> list[Any] | None:
    """One reserve.lua call and one transaction: the agent's unsold tickets after
    it, or None if the account is inactive or gone."""
    reservation = _queue.reserve(agent_id, capacity, _LEASE_SECONDS, [t.id for t in known], queues)
    if not reservation.ids:
        return list(known)  # the queue is empty, or fetches in flight fill the agent
    ids = tuple(reservation.ids)
    try:
        held, assigned, rest, returned = _confirm(agent_id, ids, queues)
    except psycopg2.Error:
        _queue.settle(agent_id, [], [], reservation.popped)  # nothing was assigned
        raise
    if rest:
        mine = {t.id for t in held or []}
        back = {p.ticket_id for p in returned}
        dropped = sorted(set(rest) - back - mine)
        _queue.settle(agent_id, [], dropped, returned)
    if held is None:
        return None
    return sorted([*held, *assigned], key=lambda t: t.id)


def _confirm(
    agent_id: int, ids: tuple[int, ...], queues: list[str]
) -> tuple[list[Any] | None, list[Any], tuple[int, ...], list[Placement]]:
    """The transaction: (unsold tickets under the lock, or None for an inactive
    account; rows assigned; reserved ids not assigned; of those, still unassigned)."""
    assigned: list[Any] = []
    returned: list[Placement] = []
    with _transaction() as cur:
        agent = _run(cur, LOCK_AGENT, agent_id=agent_id)
        if not agent or not agent[0].is_active or agent[0].capacity is None:
            held = None
        else:
            held = _run(cur, UNSOLD, agent_id=agent_id)
            room = max(agent[0].capacity - len(held), 0)
            if room:
                now = utcnow()
                assigned = _run(
                    cur,
                    ASSIGN,
                    ids=ids,
                    queues=tuple(queues),
                    room=room,
                    agent_id=agent_id,
                    now=now,
                )
        rest = tuple(sorted(set(ids) - {t.id for t in assigned}))
        if rest:  # not in a normal top-up: the product's answer to refused ids
            returned = [
                Placement(r.id, r.queue, score(r.priority, r.id))
                for r in _run(cur, STILL_UNASSIGNED, ids=rest)
            ]
    return held, assigned, rest, returned


@app.route("/api/agent/tickets/assign/", methods=["GET", "POST"])
def assign() -> Response:
    caller = _caller()
    if isinstance(caller, Response):
        return caller
    agent_id = caller.user_id
    with _cursor() as cur:
        rows = _run(cur, HOLDING, agent_id=agent_id)
    if not rows or not rows[0].is_active:
        return _error(401, "unauthorized", "inactive")
    capacity = rows[0].capacity
    queues = sorted(rows[0].queue_names.split(",")) if rows[0].queue_names else []
    online = rows[0].agent_status == "online"
    tickets: list[Any] | None = [r for r in rows if r.id is not None]
    if tickets is not None and online and queues and len(tickets) < capacity:
        tickets = _top_up(agent_id, capacity, tickets, queues)
    if tickets is None:
        return _error(401, "unauthorized", "inactive")
    return _json(holding_json(tickets, capacity))


@app.route("/api/agent/tickets/sell/<int:ticket_id>/", methods=["POST"])
def sell(ticket_id: int) -> Response:
    caller = _caller()
    if isinstance(caller, Response):
        return caller
    with _cursor() as cur:
        sold = _run(
            cur,
            SELL,
            sale_ticket=ticket_id,
            seller=caller.user_id,
            seller_version=caller.version,
            sold_now=utcnow(),
        )
    if not sold:
        return _error(404, "not_found", f"you hold no ticket {ticket_id}")
    return _json(ticket_json(sold[0]))


@app.route("/healthz")
def healthz() -> Response:
    return _json({"status": "ok"})
