"""Tickets, agent side: fetch a batch, list what you hold, sell (I7: only your own)."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from helpers import assert_error, caller

from service.extensions import db
from service.models import Ticket, TicketEvent
from service.state import ticket_queue


def state(app) -> dict[str, Any]:
    with app.app_context():
        client = ticket_queue().client
        return {
            "tickets": [
                tuple(row)
                for row in db.session.execute(
                    sa.select(
                        Ticket.id, Ticket.status, Ticket.agent_id, Ticket.sold_at, Ticket.updated_at
                    ).order_by(Ticket.id)
                )
            ],
            "events": db.session.scalar(sa.select(sa.func.count()).select_from(TicketEvent)),
            "redis": {
                key: sorted(client.zrange(key, 0, -1))
                if client.type(key) == "zset"
                else sorted(client.smembers(key))
                for key in client.keys("{tq}:*")
                if client.type(key) in ("zset", "set")
            },
        }


@pytest.fixture
def alice(factory):
    return factory.user("alice", capacity=3)


@pytest.fixture
def bob(factory):
    return factory.user("bob", capacity=3)


def test_assign_tops_up_and_answers_with_the_tickets(client, factory, alice, app):
    ids = factory.tickets(5)
    response = client.get("/api/agent/tickets/assign/", headers=factory.headers(alice))
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"tickets", "capacity"}
    assert body["capacity"] == 3
    assert [t["id"] for t in body["tickets"]] == ids[:3]
    for ticket in body["tickets"]:
        assert ticket["status"] == "assigned"
        assert ticket["agent_id"] == alice.id
        assert ticket["assigned_at"] is not None
        assert ticket["sold_at"] is None
    with app.app_context():
        assigned = db.session.scalars(
            sa.select(Ticket.id).where(Ticket.agent_id == alice.id).order_by(Ticket.id)
        ).all()
    assert assigned == ids[:3]


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/api/agent/tickets/assign/"),
        ("GET", "/api/agent/tickets/assign"),
        ("POST", "/api/agent/tickets/assign/"),
        ("POST", "/api/agent/tickets/assign"),
    ],
)
def test_assign_by_get_or_post_with_or_without_slash(client, factory, alice, method, path):
    ids = factory.tickets(4)
    response = client.open(path, method=method, headers=factory.headers(alice))
    assert response.status_code == 200
    assert [t["id"] for t in response.get_json()["tickets"]] == ids[:3]


def test_assign_with_an_empty_pool_returns_an_empty_list(client, factory, alice):
    response = client.post("/api/agent/tickets/assign/", headers=factory.headers(alice))
    assert response.status_code == 200
    assert response.get_json() == {"tickets": [], "capacity": 3}


def test_list_held_tickets(client, factory, alice, app):
    ids = factory.tickets(5)
    headers = factory.headers(alice)
    assert client.get("/api/agent/tickets/", headers=headers).get_json() == {
        "tickets": [],
        "capacity": 3,
    }
    client.get("/api/agent/tickets/assign/", headers=headers)
    for path in ("/api/agent/tickets/", "/api/agent/tickets"):
        held = client.get(path, headers=headers)
        assert held.status_code == 200
        assert [t["id"] for t in held.get_json()["tickets"]] == ids[:3]
        assert held.get_json()["capacity"] == 3


def test_sell_a_held_ticket(client, factory, alice, app):
    ids = factory.tickets(3)
    headers = factory.headers(alice)
    client.get("/api/agent/tickets/assign/", headers=headers)
    response = client.post(f"/api/agent/tickets/sell/{ids[1]}/", headers=headers)
    assert response.status_code == 200
    sold = response.get_json()
    assert sold["id"] == ids[1]
    assert sold["status"] == "sold"
    assert sold["agent_id"] == alice.id
    assert sold["sold_at"] is not None
    assert sold["assigned_at"] is not None
    held = client.get("/api/agent/tickets/", headers=headers).get_json()["tickets"]
    assert [t["id"] for t in held] == [ids[0], ids[2]]
    # The sale is permanent and stays with the seller in PostgreSQL.
    with app.app_context():
        row = db.session.get(Ticket, ids[1])
        assert (row.status, row.agent_id) == ("sold", alice.id)
        assert str(ids[1]) not in ticket_queue().client.smembers(ticket_queue().held_key(alice.id))
    # Without the trailing slash too.
    other = client.post(f"/api/agent/tickets/sell/{ids[2]}", headers=headers)
    assert other.status_code == 200
    assert other.get_json()["status"] == "sold"


def test_selling_twice_is_409_already_sold(client, factory, alice, app):
    ids = factory.tickets(1)
    headers = factory.headers(alice)
    client.get("/api/agent/tickets/assign/", headers=headers)
    assert client.post(f"/api/agent/tickets/sell/{ids[0]}/", headers=headers).status_code == 200
    before = state(app)
    again = client.post(f"/api/agent/tickets/sell/{ids[0]}/", headers=headers)
    assert_error(again, 409, "already_sold")
    assert state(app) == before


def test_selling_another_agents_ticket_is_404(client, factory, alice, bob, app):
    ids = factory.tickets(6)
    client.get("/api/agent/tickets/assign/", headers=factory.headers(alice))
    client.get("/api/agent/tickets/assign/", headers=factory.headers(bob))
    before = state(app)
    # Bob holds ids[3:6]; Alice cannot sell them, and cannot even learn they exist.
    response = client.post(f"/api/agent/tickets/sell/{ids[3]}/", headers=factory.headers(alice))
    error = assert_error(response, 404, "not_found")
    unknown = client.post("/api/agent/tickets/sell/99999/", headers=factory.headers(alice))
    assert error["message"].replace(str(ids[3]), "N") == (
        unknown.get_json()["error"]["message"].replace("99999", "N")
    )
    assert state(app) == before
    # A ticket Bob already sold is not Alice's to sell either: 404, not 409.
    by_bob = client.post(f"/api/agent/tickets/sell/{ids[3]}/", headers=factory.headers(bob))
    assert by_bob.status_code == 200
    before = state(app)
    sold_by_bob = client.post(f"/api/agent/tickets/sell/{ids[3]}/", headers=factory.headers(alice))
    assert_error(sold_by_bob, 404, "not_found")
    assert state(app) == before


def test_selling_a_queued_unknown_or_deleted_ticket_is_404(
    client, factory, alice, admin_headers, app
):
    ids = factory.tickets(5)
    headers = factory.headers(alice)
    client.get("/api/agent/tickets/assign/", headers=headers)
    assert client.delete(f"/api/admin/tickets/{ids[0]}/", headers=admin_headers).status_code == 204
    before = state(app)
    for ticket_id in (ids[4], 424242, ids[0]):  # queued, unknown, deleted
        response = client.post(f"/api/agent/tickets/sell/{ticket_id}/", headers=headers)
        assert_error(response, 404, "not_found")
    assert state(app) == before


@pytest.mark.parametrize("ticket_id", ["2899933502080377946112", "9223372036854775808", "0"])
def test_selling_an_id_beyond_the_column_is_404_not_500(client, factory, alice, ticket_id):
    response = client.post(f"/api/agent/tickets/sell/{ticket_id}/", headers=factory.headers(alice))
    assert_error(response, 404, "not_found")


def test_unsupported_methods_on_agent_routes_are_405(client, factory, alice):
    ids = factory.tickets(1)
    headers = factory.headers(alice)
    client.get("/api/agent/tickets/assign/", headers=headers)
    sell_by_get = client.get(f"/api/agent/tickets/sell/{ids[0]}/", headers=headers)
    assert_error(sell_by_get, 405, "method_not_allowed")
    assert "POST" in sell_by_get.headers["Allow"]
    assert_error(client.delete("/api/agent/tickets/assign/", headers=headers), 405)
    assert_error(client.post("/api/agent/tickets/", headers=headers), 405)


def test_unknown_paths_are_json_404(client, factory, alice):
    for path in ("/api/agent/nothing/", "/api/agent/tickets/sell/", "/api/agent/tickets/sell/x/"):
        assert_error(client.post(path, headers=factory.headers(alice)), 404, "not_found")
    assert_error(client.get("/no/such/page"), 404, "not_found")


def test_a_new_agent_holds_nothing_and_has_the_default_capacity(client, factory, admin_headers):
    agent = factory.user("dora")
    assert client.get("/api/agent/tickets/", headers=factory.headers(agent)).get_json() == {
        "tickets": [],
        "capacity": 15,
    }
    created = client.post("/api/admin/tickets/", json={"title": "first"}, headers=admin_headers)
    got = client.get("/api/agent/tickets/assign/", headers=factory.headers(agent)).get_json()
    assert [t["id"] for t in got["tickets"]] == [created.get_json()["id"]]
    assert got["capacity"] == 15


def test_the_hot_path_serialiser_matches_the_documented_schema(app, factory):
    """holding_json builds TicketSchema's output by hand, and the app's JSON provider
    writes its times; the documents the two give must never drift."""
    import json
    from datetime import UTC, datetime, timedelta

    from service.domain.assignment import holding
    from service.schemas import HoldingSchema, TicketSchema, holding_json, ticket_json

    def as_sent(document):
        return json.loads(app.json.dumps(document))

    agent = factory.user("alice")
    factory.tickets(3)
    with app.app_context():
        from service.domain.assignment import assign

        assign(db.session, ticket_queue(), caller(agent), lease_seconds=30)
        db.session.commit()
        current = holding(db.session, caller(agent))
        assert len(current.tickets) == 3
        expected = HoldingSchema().dump({"tickets": current.tickets, "capacity": 15})
        assert as_sent(holding_json(current.tickets, 15)) == expected
        # Key order too: clients see the same document either way.
        assert list(as_sent(ticket_json(current.tickets[0]))) == list(TicketSchema().fields)
        # PostgreSQL answers in UTC whatever the server's zone (the session sets it).
        assert current.tickets[0].created_at.utcoffset() == timedelta(0)
        assert expected["tickets"][0]["created_at"].endswith("+00:00")
        # Naive times (SQLite stores UTC without a zone) come out as UTC, and
        # microseconds as the schema writes them.
        ticket = db.session.get(Ticket, current.tickets[0].id)
        ticket.sold_at = datetime(2026, 1, 2, 3, 4, 5)
        ticket.updated_at = datetime(2026, 1, 2, 3, 4, 5, 120, tzinfo=UTC)
        assert as_sent(ticket_json(ticket)) == TicketSchema().dump(ticket)
        assert as_sent(ticket_json(ticket))["sold_at"] == "2026-01-02T03:04:05+00:00"
        assert as_sent(ticket_json(ticket))["updated_at"] == "2026-01-02T03:04:05.000120+00:00"
        db.session.rollback()
