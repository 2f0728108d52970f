"""Assertions and readers shared by the tests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa
from flask import Flask

from service.auth import Claims, new_session
from service.extensions import db
from service.models import GENERAL, Ticket, User
from service.queue import Placement, TicketQueue, score
from service.state import ticket_queue

# The key that says Redis holds state built from PostgreSQL (of this key layout).
EPOCH_KEY = f"{{tq}}:epoch:v{TicketQueue.LAYOUT}"
# The queue every ticket and agent is in unless told otherwise.
GENERAL_KEY = f"{{tq}}:queue:{GENERAL}"


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is the contract's error shape with ``status`` (and ``code``)."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error"}
    assert {"code", "message"} <= set(body["error"]) <= {"code", "message", "fields"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]


def queued_ids(queue: TicketQueue, name: str = GENERAL) -> list[int]:
    """A Redis queue, best first."""
    return [int(m) for m in queue.client.zrange(queue.queue_key(name), 0, -1)]


def in_general(*ids: int, priority: int = 2) -> list[Placement]:
    """Where tickets of the general queue at ``priority`` (normal) wait."""
    return [Placement(i, GENERAL, score(priority, i)) for i in ids]


def reserved_ids(queue: TicketQueue) -> set[int]:
    return {int(m) for m in queue.client.zrange(queue.reserved_key, 0, -1)}


def pending(reserved: Iterable[int], tickets: Mapping[int, tuple[Any, ...]]) -> list[int]:
    """The reservations still pending: of tickets not assigned (``tickets`` maps id ->
    (status, ...); a missing id was deleted). A confirmed ticket keeps its reservation
    until its agent's next fetch, so an assigned one's is not pending."""
    return sorted(i for i in reserved if i not in tickets or tickets[i][0] != "assigned")


def queued_in(app: Flask, name: str = GENERAL) -> list[int]:
    """A Redis queue of ``app``, best first."""
    with app.app_context():
        return queued_ids(ticket_queue(), name)


def insert_unqueued(
    count: int, status: str = "unassigned", agent_id: int | None = None
) -> list[int]:
    """Tickets in PostgreSQL only, as if every process died before pushing them
    (inside an app context)."""
    ids = list(
        db.session.scalars(
            sa.insert(Ticket).returning(Ticket.id),
            [
                {"title": f"t{i}", "description": "", "status": status, "agent_id": agent_id}
                for i in range(count)
            ],
        )
    )
    db.session.commit()
    return sorted(ids)


def fetch(client: Any, factory: Any, agent: Any, method: str = "GET") -> list[int]:
    """The agent fetches; the ids it holds, all its own and assigned."""
    response = client.open(
        "/api/agent/tickets/assign/", method=method, headers=factory.headers(agent)
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    tickets = response.get_json()["tickets"]
    assert all(t["agent_id"] == agent.id and t["status"] == "assigned" for t in tickets)
    return [t["id"] for t in tickets]


def caller(agent: Any, role: str = "agent") -> Claims:
    """The claims of a freshly logged-in ``agent`` (a User or an id), for calling the
    domain's agent functions directly (inside an app context)."""
    agent_id = agent if isinstance(agent, int) else agent.id
    with db.engine.connect() as conn:
        version = conn.scalar(sa.select(User.token_version).where(User.id == agent_id))
    return Claims(agent_id, role, version or 0, new_session(), "access", 2**31)
