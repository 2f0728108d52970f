"""Routing over HTTP: queues, priorities, the order rule, presence, admin moves,
the workload and queue views, and the presence rules the workers run."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from helpers import assert_error, queued_in

from service.domain.presence import idle_to_offline, persist_last_seen, release_offline
from service.extensions import db
from service.models import Ticket, TicketEvent, User, utcnow
from service.queue import score
from service.state import ticket_queue


def _admin(factory: Any) -> dict[str, str]:
    return factory.headers(factory.user("boss", role="admin"))


def _ticket(client: Any, admin: dict[str, str], **body: Any) -> dict[str, Any]:
    body.setdefault("title", "help")
    response = client.post("/api/admin/tickets/", json=body, headers=admin)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def _fetch(client: Any, headers: dict[str, str]) -> list[int]:
    response = client.get("/api/agent/tickets/assign/", headers=headers)
    assert response.status_code == 200, response.get_json()
    return [t["id"] for t in response.get_json()["tickets"]]


# --- queues ---------------------------------------------------------------------------


def test_queue_lifecycle(client, factory):
    admin = _admin(factory)
    made = client.post("/api/admin/queues/", json={"name": "billing"}, headers=admin)
    assert made.status_code == 201
    assert made.get_json() | {"created_at": None} == {
        "name": "billing",
        "description": "",
        "created_at": None,
        "unassigned": 0,
        "assigned": 0,
        "agents": 0,
        "agents_online": 0,
        "oldest_unassigned_at": None,
    }
    again = client.post("/api/admin/queues/", json={"name": "billing"}, headers=admin)
    assert_error(again, 409, "duplicate")
    names = [q["name"] for q in client.get("/api/admin/queues", headers=admin).get_json()["items"]]
    assert names == ["billing", "general"]
    patched = client.patch(
        "/api/admin/queues/billing/", json={"description": "money"}, headers=admin
    )
    assert patched.status_code == 200 and patched.get_json()["description"] == "money"
    assert client.delete("/api/admin/queues/billing/", headers=admin).status_code == 204
    assert_error(client.get("/api/admin/queues/billing/", headers=admin), 404)
    assert_error(client.delete("/api/admin/queues/billing/", headers=admin), 404)


def test_queue_names_are_checked(client, factory):
    admin = _admin(factory)
    for bad in ["", "Billing", "-x", "a" * 41, "a b", 7]:
        response = client.post("/api/admin/queues/", json={"name": bad}, headers=admin)
        assert_error(response, 400, "validation_error")
    assert [
        q["name"] for q in client.get("/api/admin/queues/", headers=admin).get_json()["items"]
    ] == ["general"]


def test_general_cannot_be_deleted_and_a_queue_in_use_stays(client, factory):
    admin = _admin(factory)
    assert_error(client.delete("/api/admin/queues/general/", headers=admin), 409)
    factory.queue("billing")
    factory.user("ann", queues=("billing",))
    assert_error(client.delete("/api/admin/queues/billing/", headers=admin), 409, "queue_in_use")
    factory.queue("fr")
    ticket = _ticket(client, admin, queue="fr")
    assert_error(client.delete("/api/admin/queues/fr/", headers=admin), 409, "queue_in_use")
    # Once its tickets are gone (deleted or sold) the queue can go.
    client.delete(f"/api/admin/tickets/{ticket['id']}/", headers=admin)
    assert client.delete("/api/admin/queues/fr/", headers=admin).status_code == 204


def test_routing_routes_are_admin_only(client, factory):
    agent = factory.headers(factory.user("ann"))
    for method, path in [
        ("get", "/api/admin/queues/"),
        ("post", "/api/admin/queues/"),
        ("get", "/api/admin/agents/"),
        ("post", "/api/admin/tickets/1/release/"),
        ("post", "/api/admin/tickets/1/assign/"),
    ]:
        assert_error(getattr(client, method)(path, json={}, headers=agent), 403)
    assert_error(client.get("/api/admin/queues/"), 401)


# --- tickets in queues, the order rule -------------------------------------------------


def test_ticket_defaults_and_unknown_queue(client, factory):
    admin = _admin(factory)
    ticket = _ticket(client, admin)
    assert (ticket["queue"], ticket["priority"]) == ("general", "normal")
    assert_error(
        client.post("/api/admin/tickets/", json={"title": "x", "queue": "nope"}, headers=admin),
        400,
        "validation_error",
    )
    assert_error(
        client.post("/api/admin/tickets/", json={"title": "x", "priority": "asap"}, headers=admin),
        400,
        "validation_error",
    )
    assert [
        t["id"] for t in client.get("/api/admin/tickets/", headers=admin).get_json()["items"]
    ] == [ticket["id"]]


def test_urgent_ticket_beats_older_normal_one(client, factory):
    admin = _admin(factory)
    factory.queue("billing")
    agent = factory.headers(factory.user("ann", capacity=1, queues=("general", "billing")))
    _ticket(client, admin, title="old normal")
    _ticket(client, admin, title="old low", priority="low")
    urgent = _ticket(client, admin, title="new urgent", queue="billing", priority="urgent")
    assert _fetch(client, agent) == [urgent["id"]]


def test_order_rule_across_queues(app, client, factory):
    admin = _admin(factory)
    factory.queue("billing")
    factory.queue("fr")
    made = [
        _ticket(client, admin, queue="general", priority="low"),  # 0
        _ticket(client, admin, queue="billing", priority="normal"),  # 1
        _ticket(client, admin, queue="fr", priority="urgent"),  # 2: not the agent's
        _ticket(client, admin, queue="general", priority="high"),  # 3
        _ticket(client, admin, queue="billing", priority="high"),  # 4
        _ticket(client, admin, queue="general", priority="normal"),  # 5
    ]
    ids = [t["id"] for t in made]
    ann = factory.user("ann", capacity=3, queues=("general", "billing"))
    headers = factory.headers(ann)
    # Best three among general and billing: high 3, high 4, then the older normal 1.
    assert sorted(_fetch(client, headers)) == sorted([ids[3], ids[4], ids[1]])
    # The fr ticket waits for a French speaker, however urgent.
    assert queued_in(app, "fr") == [ids[2]]


def test_agent_outside_every_queue_of_the_tickets_gets_nothing(client, factory):
    admin = _admin(factory)
    factory.queue("billing")
    _ticket(client, admin)
    agent = factory.headers(factory.user("ann", queues=("billing",)))
    assert _fetch(client, agent) == []


def test_moving_an_unassigned_ticket_moves_it_in_the_order_at_once(app, client, factory):
    admin = _admin(factory)
    factory.queue("billing")
    first = _ticket(client, admin)
    second = _ticket(client, admin)
    moved = client.patch(
        f"/api/admin/tickets/{second['id']}/", json={"priority": "urgent"}, headers=admin
    )
    assert moved.status_code == 200 and moved.get_json()["priority"] == "urgent"
    assert queued_in(app) == [second["id"], first["id"]]
    client.patch(f"/api/admin/tickets/{first['id']}/", json={"queue": "billing"}, headers=admin)
    assert queued_in(app) == [second["id"]]
    assert queued_in(app, "billing") == [first["id"]]
    assert_error(
        client.patch(f"/api/admin/tickets/{first['id']}/", json={"queue": "nope"}, headers=admin),
        400,
    )
    assert queued_in(app, "billing") == [first["id"]]
    kinds = client.get(f"/api/admin/tickets/{first['id']}/events/", headers=admin).get_json()
    updated = [e for e in kinds["items"] if e["kind"] == "updated"]
    assert len(updated) == 1 and updated[0]["actor_id"] is not None


def test_editing_a_held_ticket_keeps_its_holder(app, client, factory):
    admin = _admin(factory)
    factory.queue("billing")
    ticket = _ticket(client, admin)
    agent = factory.headers(factory.user("ann"))
    assert _fetch(client, agent) == [ticket["id"]]
    edited = client.patch(
        f"/api/admin/tickets/{ticket['id']}/", json={"queue": "billing"}, headers=admin
    ).get_json()
    assert (edited["status"], edited["queue"]) == ("assigned", "billing")
    assert queued_in(app, "billing") == []
    assert _fetch(client, agent) == [ticket["id"]]


def test_list_filters_by_queue_and_priority(client, factory):
    admin = _admin(factory)
    factory.queue("billing")
    a = _ticket(client, admin, queue="billing", priority="high")
    _ticket(client, admin, queue="billing")
    _ticket(client, admin, priority="high")

    def ids(query: str) -> list[int]:
        response = client.get(f"/api/admin/tickets/?{query}", headers=admin)
        assert response.status_code == 200
        return [t["id"] for t in response.get_json()["items"]]

    assert ids("queue=billing&priority=high") == [a["id"]]
    assert len(ids("queue=billing")) == 2 and len(ids("priority=high")) == 2
    assert_error(client.get("/api/admin/tickets/?priority=asap", headers=admin), 400)


# --- presence ---------------------------------------------------------------------------


def test_only_online_agents_are_topped_up(client, factory):
    admin = _admin(factory)
    ticket = _ticket(client, admin)
    ann = factory.user("ann")
    headers = factory.headers(ann)
    assert client.get("/api/agent/status/", headers=headers).get_json()["status"] == "online"
    for status in ["away", "offline"]:
        answer = client.put("/api/agent/status/", json={"status": status}, headers=headers)
        assert answer.status_code == 200 and answer.get_json()["status"] == status
        assert _fetch(client, headers) == []
    assert_error(client.put("/api/agent/status/", json={"status": "busy"}, headers=headers), 400)
    client.put("/api/agent/status/", json={"status": "online"}, headers=headers)
    assert _fetch(client, headers) == [ticket["id"]]
    # Going away keeps what the agent holds.
    client.put("/api/agent/status/", json={"status": "away"}, headers=headers)
    assert _fetch(client, headers) == [ticket["id"]]


def test_admin_sets_an_agents_queues_and_status(client, factory):
    admin = _admin(factory)
    factory.queue("billing")
    ann = factory.user("ann")
    answer = client.patch(
        f"/api/admin/users/{ann.id}/",
        json={"queues": ["billing", "general"], "status": "away"},
        headers=admin,
    )
    assert answer.status_code == 200
    assert (answer.get_json()["queues"], answer.get_json()["status"]) == (
        ["billing", "general"],
        "away",
    )
    for bad in [{"queues": ["nope"]}, {"queues": "general"}, {"status": "busy"}]:
        assert_error(client.patch(f"/api/admin/users/{ann.id}/", json=bad, headers=admin), 400)
    boss_id = client.get("/api/admin/users/", headers=admin).get_json()["items"][0]["id"]
    assert_error(
        client.patch(f"/api/admin/users/{boss_id}/", json={"queues": ["general"]}, headers=admin),
        400,
    )


def test_idle_agents_go_offline_and_offline_agents_release(app, client, factory):
    admin = _admin(factory)
    tickets = [_ticket(client, admin)["id"] for _ in range(2)]
    ann = factory.user("ann")
    bob = factory.user("bob")
    assert _fetch(client, factory.headers(ann)) == tickets
    with app.app_context():
        # ann went home an hour ago; bob was seen just now.
        long_ago = utcnow() - timedelta(hours=1)
        db.session.execute(sa.update(User).where(User.id == ann.id).values(status_since=long_ago))
        db.session.execute(
            sa.update(User)
            .where(User.id == bob.id)
            .values(status_since=long_ago, last_seen_at=utcnow())
        )
        db.session.commit()
        assert idle_to_offline(db.session, 600) == [ann.id]
        assert db.session.get(User, bob.id).status == "online"  # type: ignore[union-attr]
        # Not offline long enough yet: nothing released.
        assert release_offline(db.session, ticket_queue(), 600) == 0
        db.session.execute(sa.update(User).where(User.id == ann.id).values(status_since=long_ago))
        db.session.commit()
        assert release_offline(db.session, ticket_queue(), 600) == 2
        assert queued_in(app) == tickets
        released = db.session.scalars(
            sa.select(TicketEvent).where(TicketEvent.kind == "released")
        ).all()
        assert [(e.ticket_id, e.actor_id, e.agent_id) for e in released] == [
            (t, None, ann.id) for t in tickets
        ]
        states = db.session.execute(sa.select(Ticket.status, Ticket.agent_id)).all()
        assert set(states) == {("unassigned", None)}


def test_last_seen_is_noted_in_redis_and_persisted_later(app, client, factory):
    admin = _admin(factory)
    ann = factory.user("ann")
    _fetch(client, factory.headers(ann))
    workload = client.get("/api/admin/agents/", headers=admin).get_json()["items"]
    # Shown at once (from Redis), before the workers persist it.
    assert workload[0]["last_seen_at"] is not None
    with app.app_context():
        assert db.session.get(User, ann.id).last_seen_at is None  # type: ignore[union-attr]
        assert persist_last_seen(db.session, ticket_queue()) == 1
        assert db.session.get(User, ann.id).last_seen_at is not None  # type: ignore[union-attr]
        assert persist_last_seen(db.session, ticket_queue()) == 0  # nothing new


# --- admin moves --------------------------------------------------------------------------


def test_release_puts_a_held_ticket_back_at_its_place(app, client, factory):
    admin = _admin(factory)
    first, second = (_ticket(client, admin)["id"] for _ in range(2))
    ann = factory.headers(factory.user("ann", capacity=1))
    assert _fetch(client, ann) == [first]
    released = client.post(f"/api/admin/tickets/{first}/release/", headers=admin)
    assert released.status_code == 200
    assert (released.get_json()["status"], released.get_json()["agent_id"]) == ("unassigned", None)
    assert queued_in(app) == [first, second]
    assert_error(
        client.post(f"/api/admin/tickets/{first}/release/", headers=admin), 409, "not_assigned"
    )
    assert_error(client.post("/api/admin/tickets/999/release/", headers=admin), 404)
    events = client.get(f"/api/admin/tickets/{first}/events/", headers=admin).get_json()["items"]
    assert events[-1]["kind"] == "released" and events[-1]["actor_id"] is not None


def test_assign_moves_and_respects_capacity(app, client, factory):
    admin = _admin(factory)
    first, second = (_ticket(client, admin)["id"] for _ in range(2))
    ann = factory.user("ann", capacity=1)
    bob = factory.user("bob", capacity=1)
    given = client.post(
        f"/api/admin/tickets/{first}/assign/", json={"agent_id": ann.id}, headers=admin
    )
    assert given.status_code == 200 and given.get_json()["agent_id"] == ann.id
    assert queued_in(app) == [second]
    # ann is full now.
    assert_error(
        client.post(
            f"/api/admin/tickets/{second}/assign/", json={"agent_id": ann.id}, headers=admin
        ),
        409,
        "agent_full",
    )
    assert queued_in(app) == [second]
    moved = client.post(
        f"/api/admin/tickets/{first}/assign/", json={"agent_id": bob.id}, headers=admin
    )
    assert moved.get_json()["agent_id"] == bob.id
    assert _fetch(client, factory.headers(ann)) == [second]
    assert _fetch(client, factory.headers(bob)) == [first]
    sold = client.post(f"/api/agent/tickets/sell/{first}/", headers=factory.headers(bob))
    assert sold.status_code == 200
    assert_error(
        client.post(
            f"/api/admin/tickets/{first}/assign/", json={"agent_id": ann.id}, headers=admin
        ),
        409,
        "already_sold",
    )
    boss_id = client.get("/api/admin/users/", headers=admin).get_json()["items"][0]["id"]
    for body in [{"agent_id": boss_id}, {"agent_id": 999}, {}, {"agent_id": "x"}]:
        assert_error(
            client.post(f"/api/admin/tickets/{second}/assign/", json=body, headers=admin), 400
        )


# --- the views and metrics ----------------------------------------------------------------


def test_workload_and_queue_views(client, factory):
    admin = _admin(factory)
    factory.queue("billing")
    ids = [_ticket(client, admin)["id"] for _ in range(3)]
    waiting = _ticket(client, admin, queue="billing")
    ann = factory.user("ann", capacity=2)
    factory.user("bob", queues=("billing",), status="away")
    ann_headers = factory.headers(ann)
    assert _fetch(client, ann_headers) == ids[:2]
    client.post(f"/api/agent/tickets/sell/{ids[0]}/", headers=ann_headers)
    items = client.get("/api/admin/agents/", headers=admin).get_json()["items"]
    by_name = {w["username"]: w for w in items}
    assert set(by_name) == {"ann", "bob"}
    assert {k: by_name["ann"][k] for k in ["status", "queues", "capacity", "held", "sold"]} == {
        "status": "online",
        "queues": ["general"],
        "capacity": 2,
        "held": 1,
        "sold": 1,
    }
    assert (by_name["bob"]["held"], by_name["bob"]["last_seen_at"]) == (0, None)
    only = client.get("/api/admin/agents/?queue=billing", headers=admin).get_json()["items"]
    assert [w["username"] for w in only] == ["bob"]
    online = client.get("/api/admin/agents/?status=online", headers=admin).get_json()["items"]
    assert [w["username"] for w in online] == ["ann"]
    general = client.get("/api/admin/queues/general/", headers=admin).get_json()
    assert {k: general[k] for k in ["unassigned", "assigned", "agents", "agents_online"]} == {
        "unassigned": 1,
        "assigned": 1,
        "agents": 1,
        "agents_online": 1,
    }
    billing = client.get("/api/admin/queues/billing/", headers=admin).get_json()
    assert (billing["agents"], billing["agents_online"]) == (1, 0)
    assert billing["oldest_unassigned_at"] == waiting["created_at"]


def test_per_queue_metrics(client, factory):
    from conftest import METRICS_AUTH

    admin = _admin(factory)
    factory.queue("billing")
    _ticket(client, admin, queue="billing")
    _ticket(client, admin, queue="billing", priority="urgent")
    factory.user("ann", queues=("billing",))
    text = client.get("/metrics", headers=METRICS_AUTH).get_data(as_text=True)
    assert 'tq_queue_depth{queue="billing"} 2.0' in text
    assert 'tq_queue_depth{queue="general"} 0.0' in text


def test_an_old_ticket_released_goes_back_ahead_of_newer_ones(app, client, factory):
    admin = _admin(factory)
    ids = [_ticket(client, admin)["id"] for _ in range(3)]
    ann = factory.user("ann", capacity=1)
    assert _fetch(client, factory.headers(ann)) == [ids[0]]
    client.patch(f"/api/admin/users/{ann.id}/", json={"is_active": False}, headers=admin)
    assert queued_in(app) == ids
    with app.app_context():
        zscore = ticket_queue().client.zscore("{tq}:queue:general", str(ids[0]))
    assert zscore == score(2, ids[0])
