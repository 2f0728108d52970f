"""Tickets, admin side: create, list, show, edit, delete, history, queue numbers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import assert_error, fetch, queued_in

from service.extensions import db
from service.models import GENERAL, Ticket, TicketEvent
from service.state import ticket_queue

TICKET_KEYS = {
    "id",
    "title",
    "description",
    "queue",
    "priority",
    "status",
    "agent_id",
    "created_at",
    "updated_at",
    "assigned_at",
    "sold_at",
}


def state(app) -> dict[str, Any]:
    """Tickets, their history and the Redis queue: what a failed request must not touch."""
    with app.app_context():
        return {
            "tickets": [
                tuple(row)
                for row in db.session.execute(
                    sa.select(
                        Ticket.id,
                        Ticket.title,
                        Ticket.description,
                        Ticket.status,
                        Ticket.agent_id,
                        Ticket.updated_at,
                    ).order_by(Ticket.id)
                )
            ],
            "events": db.session.scalar(sa.select(sa.func.count()).select_from(TicketEvent)),
            "queue": ticket_queue().client.zrange(ticket_queue().queue_key(GENERAL), 0, -1),
        }


def create(client, headers, title: str = "printer on fire", **extra: Any) -> dict[str, Any]:
    response = client.post("/api/admin/tickets/", json={"title": title, **extra}, headers=headers)
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()


# -- create --------------------------------------------------------------------
def test_create_ticket(client, admin_headers, app):
    response = client.post(
        "/api/admin/tickets/",
        json={"title": "printer on fire", "description": "third floor"},
        headers=admin_headers,
    )
    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == TICKET_KEYS
    assert body["title"] == "printer on fire"
    assert body["description"] == "third floor"
    assert body["status"] == "unassigned"
    assert body["agent_id"] is None
    assert body["assigned_at"] is None and body["sold_at"] is None
    created = datetime.fromisoformat(body["created_at"])
    assert created.utcoffset() is not None and created.utcoffset().total_seconds() == 0
    assert queued_in(app) == [body["id"]]
    shown = client.get(f"/api/admin/tickets/{body['id']}/", headers=admin_headers).get_json()
    assert shown == body


def test_create_defaults_and_limits(client, admin_headers, app):
    plain = create(client, admin_headers, "no description")
    assert plain["description"] == ""
    longest = create(client, admin_headers, "t" * 200, description="d" * 10_000)
    assert len(longest["title"]) == 200 and len(longest["description"]) == 10_000
    unicode = create(client, admin_headers, "Drucker brennt 🔥", description="Straße")
    assert unicode["title"] == "Drucker brennt 🔥"
    # Without the trailing slash too; each joins the queue behind the older ones.
    other = client.post("/api/admin/tickets", json={"title": "x"}, headers=admin_headers)
    assert other.status_code == 201
    assert queued_in(app) == [plain["id"], longest["id"], unicode["id"], other.get_json()["id"]]


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "title"),
        ({"description": "only"}, "title"),
        ({"title": ""}, "title"),
        ({"title": "t" * 201}, "title"),
        ({"title": 42}, "title"),
        ({"title": True}, "title"),
        ({"title": None}, "title"),
        ({"title": ["a"]}, "title"),
        ({"title": "ok", "description": "d" * 10_001}, "description"),
        ({"title": "ok", "description": 7}, "description"),
        ({"title": "ok", "description": None}, "description"),
        ({"title": "ok", "status": "sold"}, "status"),
        ({"title": "ok", "agent_id": 1}, "agent_id"),
    ],
)
def test_create_validation(client, admin_headers, app, body, field):
    before = state(app)
    response = client.post("/api/admin/tickets/", json=body, headers=admin_headers)
    error = assert_error(response, 400, "validation_error")
    assert field in error["fields"]
    assert field in error["message"]
    assert state(app) == before


@pytest.mark.parametrize(
    "data, content_type, status, code",
    [
        ('{"title": "x"', "application/json", 400, "malformed_json"),
        ("[1, 2]", "application/json", 400, "validation_error"),
        ("42", "application/json", 400, "validation_error"),
        ("title=x", "text/plain", 415, "unsupported_media_type"),
        ("", None, 415, "unsupported_media_type"),
    ],
    ids=["malformed", "array", "number", "text", "no-body"],
)
def test_create_with_a_bad_body(client, admin_headers, app, data, content_type, status, code):
    before = state(app)
    response = client.post(
        "/api/admin/tickets/", data=data, content_type=content_type, headers=admin_headers
    )
    error = assert_error(response, status, code)
    if status == 400:
        assert error["fields"] == {"body": error["fields"]["body"]}
    assert state(app) == before


def test_create_over_64_kib_is_413(client, admin_headers, app):
    before = state(app)
    response = client.post(
        "/api/admin/tickets/",
        json={"title": "big", "description": "d" * (64 * 1024)},
        headers=admin_headers,
    )
    assert_error(response, 413, "payload_too_large")
    assert state(app) == before


# -- list and show -------------------------------------------------------------
def test_list_in_creation_order_a_page_at_a_time(client, admin_headers, factory):
    ids = factory.tickets(5)
    page = client.get("/api/admin/tickets/?limit=2", headers=admin_headers).get_json()
    assert [t["id"] for t in page["items"]] == ids[:2]
    assert set(page["items"][0]) == TICKET_KEYS
    seen = [t["id"] for t in page["items"]]
    while page["next_cursor"] is not None:
        page = client.get(
            "/api/admin/tickets",
            query_string={"limit": 2, "cursor": page["next_cursor"]},
            headers=admin_headers,
        ).get_json()
        seen += [t["id"] for t in page["items"]]
    assert seen == ids
    everything = client.get("/api/admin/tickets/", headers=admin_headers).get_json()
    assert [t["id"] for t in everything["items"]] == ids
    assert everything["next_cursor"] is None


def test_list_default_limit_is_50(client, admin_headers, factory):
    ids = factory.bulk_tickets(51)
    page = client.get("/api/admin/tickets/", headers=admin_headers).get_json()
    assert [t["id"] for t in page["items"]] == ids[:50]
    assert page["next_cursor"] is not None
    rest = client.get(
        "/api/admin/tickets/", query_string={"cursor": page["next_cursor"]}, headers=admin_headers
    ).get_json()
    assert [t["id"] for t in rest["items"]] == ids[50:]


def test_list_filters_by_status_and_agent(client, admin_headers, factory):
    alice, bob = factory.user("alice", capacity=2), factory.user("bob", capacity=2)
    ids = factory.tickets(6)
    assert fetch(client, factory, alice) == ids[:2]
    assert fetch(client, factory, bob) == ids[2:4]
    sold = client.post(f"/api/agent/tickets/sell/{ids[0]}/", headers=factory.headers(alice))
    assert sold.status_code == 200

    def listed(**query: Any) -> list[int]:
        response = client.get("/api/admin/tickets/", query_string=query, headers=admin_headers)
        assert response.status_code == 200
        return [t["id"] for t in response.get_json()["items"]]

    assert listed(status="unassigned") == ids[4:]
    assert listed(status="assigned") == ids[1:4]
    assert listed(status="sold") == [ids[0]]
    assert listed(agent_id=alice.id) == ids[:2]
    assert listed(agent_id=bob.id) == ids[2:4]
    assert listed(agent_id=alice.id, status="assigned") == [ids[1]]
    assert listed(agent_id=9999) == []


@pytest.mark.parametrize(
    "query, field",
    [
        ("status=closed", "status"),
        ("agent_id=abc", "agent_id"),
        ("agent_id=0", "agent_id"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=ten", "limit"),
        ("cursor=%%%", "cursor"),
        ("cursor=aWQ6MQ", "cursor"),
        ("agent_id=2147483648", "agent_id"),
        ("agent_id=2899933502080377946112", "agent_id"),
    ],
)
def test_list_bad_query_is_400(client, admin_headers, query, field):
    response = client.get(f"/api/admin/tickets/?{query}", headers=admin_headers)
    error = assert_error(response, 400, "validation_error")
    assert field in error["fields"]


def test_a_cursor_past_every_id_gives_an_empty_page(client, admin_headers, factory):
    factory.tickets(2)
    for cursor in ("9223372036854775807", "99999999999999999999"):
        page = client.get(f"/api/admin/tickets/?cursor={cursor}", headers=admin_headers)
        assert page.status_code == 200
        assert page.get_json() == {"items": [], "next_cursor": None}


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize("ticket_id", ["9223372036854775808", "2899933502080377946112", "0"])
def test_an_id_beyond_the_column_is_404_not_500(client, admin_headers, app, method, ticket_id):
    before = state(app)
    body = {"title": "t"} if method in ("PUT", "PATCH") else None
    response = client.open(
        f"/api/admin/tickets/{ticket_id}/", method=method, json=body, headers=admin_headers
    )
    assert_error(response, 404, "not_found")
    events = client.get(f"/api/admin/tickets/{ticket_id}/events/", headers=admin_headers)
    assert_error(events, 404, "not_found")
    assert state(app) == before


# A title is trimmed; a blank one (whitespace or invisible characters only) or one
# with a control character is refused.
@pytest.mark.parametrize(
    "title, message",
    [
        (" ", "blank"),
        ("\u00a0", "blank"),
        ("\u200b\u200b", "blank"),
        ("\ufeff \u2060", "blank"),
        (" \t\n ", "control"),
        ("a\u001b[31mred", "control"),
        ("line\nbreak", "control"),
        ("bell\u0007", "control"),
        ("c1\u0085", "control"),
    ],
)
@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
def test_blank_and_control_titles_are_refused(client, admin_headers, app, method, title, message):
    existing = create(client, admin_headers)
    before = state(app)
    url = "/api/admin/tickets/" + ("" if method == "POST" else f"{existing['id']}/")
    response = client.open(url, method=method, json={"title": title}, headers=admin_headers)
    error = assert_error(response, 400, "validation_error")
    assert message in error["fields"]["title"]
    assert state(app) == before


def test_titles_are_trimmed(client, admin_headers):
    created = create(client, admin_headers, title="  \u00a0printer on fire  ")
    assert created["title"] == "printer on fire"
    edited = client.patch(
        f"/api/admin/tickets/{created['id']}/", json={"title": "  ok  "}, headers=admin_headers
    )
    assert edited.get_json()["title"] == "ok"
    # Emoji joined by zero-width joiners are visible text, and kept as sent.
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    assert create(client, admin_headers, title=family)["title"] == family


def test_show_unknown_ticket_is_404(client, admin_headers):
    assert_error(client.get("/api/admin/tickets/12345/", headers=admin_headers), 404, "not_found")
    assert_error(client.get("/api/admin/tickets/12345", headers=admin_headers), 404, "not_found")


def test_unsupported_methods_are_405(client, admin_headers, app):
    ticket = create(client, admin_headers)
    before = state(app)
    for method, path in (
        ("POST", f"/api/admin/tickets/{ticket['id']}/"),
        ("DELETE", "/api/admin/tickets/"),
        ("POST", "/api/admin/queue/"),
        ("DELETE", f"/api/admin/tickets/{ticket['id']}/events/"),
        # Every route answers with and without its trailing slash: so does its 405.
        ("POST", f"/api/admin/tickets/{ticket['id']}"),
        ("DELETE", "/api/admin/tickets"),
        ("GET", "/api/auth/token"),
        ("POST", "/healthz/"),
    ):
        response = client.open(path, method=method, json={}, headers=admin_headers)
        assert_error(response, 405, "method_not_allowed")
        assert response.headers["Allow"]
    assert state(app) == before


# -- edit ----------------------------------------------------------------------
def test_put_replaces_title_and_description(client, admin_headers, app):
    ticket = create(client, admin_headers, "old", description="old text")
    response = client.put(
        f"/api/admin/tickets/{ticket['id']}/",
        json={"title": "new", "description": "new text"},
        headers=admin_headers,
    )
    assert response.status_code == 200
    body = response.get_json()
    assert (body["title"], body["description"]) == ("new", "new text")
    assert body["created_at"] == ticket["created_at"]
    assert datetime.fromisoformat(body["updated_at"]) > datetime.fromisoformat(ticket["updated_at"])
    assert body["status"] == "unassigned"
    # A replacement without a description clears it, as a create would default it.
    cleared = client.put(
        f"/api/admin/tickets/{ticket['id']}", json={"title": "newer"}, headers=admin_headers
    )
    assert cleared.status_code == 200
    assert cleared.get_json()["description"] == ""
    assert queued_in(app) == [ticket["id"]]


def test_patch_changes_only_what_it_names(client, admin_headers):
    ticket = create(client, admin_headers, "title", description="text")
    path = f"/api/admin/tickets/{ticket['id']}/"
    only_title = client.patch(path, json={"title": "renamed"}, headers=admin_headers).get_json()
    assert (only_title["title"], only_title["description"]) == ("renamed", "text")
    only_text = client.patch(path, json={"description": ""}, headers=admin_headers).get_json()
    assert (only_text["title"], only_text["description"]) == ("renamed", "")
    stored = client.get(path, headers=admin_headers).get_json()
    assert (stored["title"], stored["description"]) == ("renamed", "")


@pytest.mark.parametrize(
    "method, body, field",
    [
        ("PUT", {}, "title"),
        ("PUT", {"description": "x"}, "title"),
        ("PUT", {"title": ""}, "title"),
        ("PUT", {"title": "t" * 201}, "title"),
        ("PUT", {"title": 1}, "title"),
        ("PUT", {"title": "ok", "description": False}, "description"),
        ("PUT", {"title": "ok", "status": "sold"}, "status"),
        ("PATCH", {}, "body"),
        ("PATCH", {"title": ""}, "title"),
        ("PATCH", {"title": None}, "title"),
        ("PATCH", {"description": "d" * 10_001}, "description"),
        ("PATCH", {"agent_id": 3}, "agent_id"),
    ],
)
def test_edit_validation(client, admin_headers, app, method, body, field):
    ticket = create(client, admin_headers)
    before = state(app)
    response = client.open(
        f"/api/admin/tickets/{ticket['id']}/", method=method, json=body, headers=admin_headers
    )
    error = assert_error(response, 400, "validation_error")
    assert field in error["fields"]
    assert state(app) == before


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
@pytest.mark.parametrize(
    "data, content_type, status",
    [
        ('{"title": ', "application/json", 400),
        ('["title"]', "application/json", 400),
        ("title=x", "text/plain", 415),
    ],
    ids=["malformed", "array", "text"],
)
def test_edit_with_a_bad_body(client, admin_headers, app, method, data, content_type, status):
    ticket = create(client, admin_headers)
    before = state(app)
    response = client.open(
        f"/api/admin/tickets/{ticket['id']}/",
        method=method,
        data=data,
        content_type=content_type,
        headers=admin_headers,
    )
    error = assert_error(response, status)
    if status == 400:
        assert "body" in error["fields"]
    assert state(app) == before


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_edit_over_64_kib_is_413(client, admin_headers, app, method):
    ticket = create(client, admin_headers)
    before = state(app)
    response = client.open(
        f"/api/admin/tickets/{ticket['id']}/",
        method=method,
        json={"title": "t", "description": "d" * (64 * 1024)},
        headers=admin_headers,
    )
    assert_error(response, 413, "payload_too_large")
    assert state(app) == before


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_edit_unknown_ticket_is_404(client, admin_headers, app, method):
    before = state(app)
    response = client.open(
        "/api/admin/tickets/777/", method=method, json={"title": "x"}, headers=admin_headers
    )
    assert_error(response, 404, "not_found")
    assert state(app) == before


# -- delete --------------------------------------------------------------------
def test_delete_ticket(client, admin_headers, app):
    keep = create(client, admin_headers, "keep")
    gone = create(client, admin_headers, "gone")
    response = client.delete(f"/api/admin/tickets/{gone['id']}/", headers=admin_headers)
    assert response.status_code == 204
    assert response.get_data() == b""
    assert_error(client.get(f"/api/admin/tickets/{gone['id']}/", headers=admin_headers), 404)
    assert queued_in(app) == [keep["id"]]
    listed = client.get("/api/admin/tickets/", headers=admin_headers).get_json()
    assert [t["id"] for t in listed["items"]] == [keep["id"]]
    # Deleting again, or without the slash, finds nothing.
    before = state(app)
    assert_error(
        client.delete(f"/api/admin/tickets/{gone['id']}", headers=admin_headers), 404, "not_found"
    )
    assert state(app) == before


def test_delete_unknown_ticket_is_404(client, admin_headers, app):
    create(client, admin_headers)
    before = state(app)
    assert_error(client.delete("/api/admin/tickets/999/", headers=admin_headers), 404)
    assert state(app) == before


# -- history -------------------------------------------------------------------
def test_history_of_a_new_ticket(client, admin_headers, admin):
    ticket = create(client, admin_headers)
    response = client.get(f"/api/admin/tickets/{ticket['id']}/events/", headers=admin_headers)
    assert response.status_code == 200
    (event,) = response.get_json()["items"]
    assert set(event) == {"id", "ticket_id", "kind", "actor_id", "agent_id", "at"}
    assert (event["ticket_id"], event["kind"], event["actor_id"], event["agent_id"]) == (
        ticket["id"],
        "created",
        admin.id,
        None,
    )
    assert client.get(f"/api/admin/tickets/{ticket['id']}/events", headers=admin_headers).json == (
        response.get_json()
    )


def test_history_of_an_unknown_ticket_is_404(client, admin_headers):
    assert_error(client.get("/api/admin/tickets/55/events/", headers=admin_headers), 404)


# -- queue numbers -------------------------------------------------------------
def test_queue_stats_of_an_empty_service(client, admin_headers):
    for path in ("/api/admin/queue/", "/api/admin/queue"):
        response = client.get(path, headers=admin_headers)
        assert response.status_code == 200
        assert response.get_json() == {
            "queued": 0,
            "unassigned": 0,
            "assigned": 0,
            "sold": 0,
            "reserved": 0,
        }


def test_queue_stats_show_drift_between_redis_and_postgres(client, admin_headers, factory):
    factory.tickets(3)
    with factory.app.app_context():
        ticket_queue().client.delete(ticket_queue().queue_key(GENERAL))
    stats = client.get("/api/admin/queue/", headers=admin_headers).get_json()
    assert (stats["queued"], stats["unassigned"]) == (0, 3)


def test_ticket_routes_answer_without_the_trailing_slash(client, admin_headers):
    ticket = create(client, admin_headers)
    path = f"/api/admin/tickets/{ticket['id']}"
    assert client.get(path, headers=admin_headers).get_json()["id"] == ticket["id"]
    patched = client.patch(path, json={"title": "no slash"}, headers=admin_headers)
    assert patched.status_code == 200
    assert patched.get_json()["title"] == "no slash"
    replaced = client.put(path, json={"title": "still none"}, headers=admin_headers)
    assert replaced.get_json()["title"] == "still none"
    events = client.get(f"{path}/events", headers=admin_headers)
    assert [e["kind"] for e in events.get_json()["items"]] == ["created", "updated", "updated"]
    assert client.delete(path, headers=admin_headers).status_code == 204
    assert client.get(f"{path}/", headers=admin_headers).status_code == 404


def test_an_event_message_keeps_the_ticket_as_the_change_left_it(app, client, factory):
    """What streams and webhooks send: the ticket of each event as that change left it,
    in the API's shape, whatever happened to the ticket later."""
    from service.domain.events import history, message
    from service.schemas import EventMessageSchema

    admin = factory.user("boss", role="admin")
    headers = factory.headers(admin)
    made = client.post("/api/admin/tickets/", json={"title": "first"}, headers=headers).get_json()
    client.patch(
        f"/api/admin/tickets/{made['id']}/",
        json={"title": "second", "priority": "urgent"},
        headers=headers,
    )
    client.delete(f"/api/admin/tickets/{made['id']}/", headers=headers)
    with app.app_context():
        from service.extensions import db

        sent = [EventMessageSchema().dump(message(e)) for e in history(db.session, made["id"])]
    assert [m["type"] for m in sent] == ["ticket.created", "ticket.updated", "ticket.deleted"]
    assert sent[0]["ticket"] == made
    assert (sent[1]["ticket"]["title"], sent[1]["ticket"]["priority"]) == ("second", "urgent")
    assert sent[2]["ticket"]["title"] == "second"  # as it was when deleted
    assert all(m["actor_id"] == admin.id and m["agent_id"] is None for m in sent)
    assert sent[0]["at"] <= sent[1]["at"] <= sent[2]["at"]
