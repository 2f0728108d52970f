"""The ceiling: the least a Flask app under the same gunicorn can do per request.

Not the product. It checks the JWT the same way (the product's one decode and
claim checks, same secret, the agent role) and answers the agent routes with 15
fixed tickets,
touching neither PostgreSQL nor Redis. What the product reaches of this app's
throughput is what its own work leaves of Flask's.

    gunicorn scripts.bench.ceiling_app:app   (with JWT_SECRET_KEY set)
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from flask import Flask, jsonify, request

from service.auth import decode

from . import TICKET_DESCRIPTION, TICKET_TITLE

CAPACITY = 15
_STAMP = datetime(2024, 1, 1, tzinfo=UTC).isoformat()

app = Flask(__name__)
app.config["JWT_SECRET_KEY"] = os.environ["JWT_SECRET_KEY"]
app.url_map.strict_slashes = False
app.json.sort_keys = False  # type: ignore[attr-defined]


def _ticket(ticket_id: int, agent_id: int, status: str = "assigned") -> dict[str, Any]:
    return {
        "id": ticket_id,
        "title": f"{TICKET_TITLE} {ticket_id}",
        "description": TICKET_DESCRIPTION,
        "status": status,
        "agent_id": agent_id,
        "created_at": _STAMP,
        "updated_at": _STAMP,
        "assigned_at": _STAMP,
        "sold_at": _STAMP if status == "sold" else None,
    }


def _agent() -> int | None:
    """The agent the bearer token names, checked as the product checks it (one decode)."""
    claims = decode(request.headers.get("Authorization", "").removeprefix("Bearer "))
    return claims.user_id if claims.role == "agent" else None


@app.route("/api/agent/tickets/assign/", methods=["GET", "POST"])
def assign() -> Any:
    agent = _agent()
    if agent is None:
        return jsonify(error={"code": "forbidden", "message": "agents only"}), 403
    return jsonify(tickets=[_ticket(i, agent) for i in range(1, CAPACITY + 1)], capacity=CAPACITY)


@app.route("/api/agent/tickets/sell/<int:ticket_id>/", methods=["POST"])
def sell(ticket_id: int) -> Any:
    agent = _agent()
    if agent is None:
        return jsonify(error={"code": "forbidden", "message": "agents only"}), 403
    return jsonify(_ticket(ticket_id, agent, "sold"))


@app.route("/healthz")
def healthz() -> Any:
    return jsonify(status="ok")
