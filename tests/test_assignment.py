"""Assignment behaviour end to end: order (I3), one holder (I1), capacity (I2), and
Redis as a cache that can be wiped or go stale without PostgreSQL being wrong (I5)."""

from __future__ import annotations

from datetime import datetime

import pytest
import sqlalchemy as sa
from flask import Flask
from helpers import caller, fetch, in_general, queued_in, reserved_ids

from service import errors
from service.domain import assignment
from service.extensions import db
from service.models import GENERAL, Ticket, TicketEvent, User
from service.state import ticket_queue

# -- helpers -------------------------------------------------------------------


def held_now(client, factory, agent) -> list[int]:
    response = client.get("/api/agent/tickets/", headers=factory.headers(agent))
    assert response.status_code == 200
    return [t["id"] for t in response.get_json()["tickets"]]


def sell(client, factory, agent, ticket_id: int) -> None:
    response = client.post(f"/api/agent/tickets/sell/{ticket_id}/", headers=factory.headers(agent))
    assert response.status_code == 200, response.get_data(as_text=True)


def held_set(app: Flask, agent_id: int) -> set[int]:
    with app.app_context():
        return ticket_queue().held(agent_id)


def in_flight(app: Flask) -> list[int]:
    """Reserved ids PostgreSQL does not have as assigned: fetches still in flight.

    (A confirmed ticket's reservation is left for its agent's next fetch to clear.)
    """
    with app.app_context():
        queue = ticket_queue()
        ids = sorted(reserved_ids(queue))
        assigned = set(
            db.session.scalars(
                sa.select(Ticket.id).where(Ticket.id.in_(ids), Ticket.status == "assigned")
            )
        )
        db.session.rollback()
    return [i for i in ids if i not in assigned]


def holdings(app: Flask) -> dict[int, list[int]]:
    """PostgreSQL's truth: each agent's unsold tickets in creation order."""
    with app.app_context():
        rows = db.session.execute(
            sa.select(Ticket.agent_id, Ticket.id)
            .where(Ticket.status == "assigned")
            .order_by(Ticket.id)
        ).all()
    result: dict[int, list[int]] = {}
    for agent_id, ticket_id in rows:
        result.setdefault(agent_id, []).append(ticket_id)
    return result


def assert_invariants(app: Flask, redis_held_sets: bool = True) -> None:
    """I2 in PostgreSQL, and (unless Redis was wiped since) Redis's held sets agree with it.

    A full agent's fetch is answered by PostgreSQL alone, so after a wipe its held
    set stays empty until it has a free slot again.
    """
    with app.app_context():
        capacities = dict(db.session.execute(sa.select(User.id, User.capacity)).tuples().all())
    for agent_id, ids in holdings(app).items():
        assert len(ids) <= capacities[agent_id], f"agent {agent_id} over capacity"
        if redis_held_sets:
            assert held_set(app, agent_id) == set(ids)


def events_of(app: Flask, kind: str) -> list[tuple[int, int | None, int | None]]:
    with app.app_context():
        return [
            tuple(row)
            for row in db.session.execute(
                sa.select(TicketEvent.ticket_id, TicketEvent.actor_id, TicketEvent.agent_id)
                .where(TicketEvent.kind == kind)
                .order_by(TicketEvent.id)
            )
        ]


# -- order and capacity ----------------------------------------------------------
def test_agents_get_the_oldest_tickets_in_creation_order(client, factory, app):
    a, b, c, d = (factory.user(name) for name in ("a", "b", "c", "d"))
    ids = factory.tickets(40)
    assert fetch(client, factory, a) == ids[:15]
    assert fetch(client, factory, b, method="POST") == ids[15:30]
    # The pool runs dry: what is left, then nothing.
    assert fetch(client, factory, c) == ids[30:40]
    assert fetch(client, factory, d) == []
    assert holdings(app) == {a.id: ids[:15], b.id: ids[15:30], c.id: ids[30:40]}
    assert queued_in(app) == []
    assert in_flight(app) == []  # every reservation was confirmed
    assert_invariants(app)


def test_a_repeat_fetch_returns_the_same_list_and_assigns_nothing(client, factory, app):
    agent = factory.user("alice")
    factory.tickets(20)
    first = client.get("/api/agent/tickets/assign/", headers=factory.headers(agent)).get_json()
    assigned_events = len(events_of(app, "assigned"))
    queue = queued_in(app)
    second = client.get("/api/agent/tickets/assign/", headers=factory.headers(agent)).get_json()
    assert second == first
    assert len(second["tickets"]) == 15
    assert len(events_of(app, "assigned")) == assigned_events == 15
    assert queued_in(app) == queue


def test_selling_one_then_fetching_tops_up_by_exactly_the_next_oldest(client, factory, app):
    alice, bob = factory.user("alice"), factory.user("bob")
    ids = factory.tickets(20)
    assert fetch(client, factory, alice) == ids[:15]
    sell(client, factory, alice, ids[3])
    assert held_now(client, factory, alice) == ids[:3] + ids[4:15]
    assert fetch(client, factory, alice) == ids[:3] + ids[4:16]
    assert fetch(client, factory, bob) == ids[16:20]
    with app.app_context():
        sold = db.session.get(Ticket, ids[3])
        assert (sold.status, sold.agent_id) == ("sold", alice.id)
    assert_invariants(app)


def test_each_agent_gets_its_own_capacity(client, factory, admin_headers):
    created = client.post(
        "/api/admin/users/",
        json={"username": "small", "password": "small-password", "role": "agent", "capacity": 3},
        headers=admin_headers,
    )
    assert created.status_code == 201
    token = client.post(
        "/api/auth/token/", json={"username": "small", "password": "small-password"}
    ).get_json()["access_token"]
    ids = factory.tickets(25)
    small = client.get("/api/agent/tickets/assign/", headers={"Authorization": f"Bearer {token}"})
    assert small.get_json()["capacity"] == 3
    assert [t["id"] for t in small.get_json()["tickets"]] == ids[:3]
    default = factory.user("default")
    assert fetch(client, factory, default) == ids[3:18]
    big = factory.user("big", capacity=40)
    assert fetch(client, factory, big) == ids[18:25]


def test_a_dry_pool_refills_when_tickets_are_created(client, factory, admin_headers, app):
    alice, bob = factory.user("alice"), factory.user("bob")
    ids = factory.tickets(2)
    assert fetch(client, factory, alice) == ids
    assert fetch(client, factory, alice) == ids
    assert fetch(client, factory, bob) == []
    new = []
    for i in range(20):
        response = client.post(
            "/api/admin/tickets/", json={"title": f"new {i}"}, headers=admin_headers
        )
        new.append(response.get_json()["id"])
    assert fetch(client, factory, alice) == ids + new[:13]
    assert fetch(client, factory, bob) == new[13:]
    assert_invariants(app)


def test_raising_capacity_tops_up_on_the_next_fetch(client, factory, admin_headers):
    alice = factory.user("alice", capacity=2)
    ids = factory.tickets(6)
    assert fetch(client, factory, alice) == ids[:2]
    response = client.patch(
        f"/api/admin/users/{alice.id}/", json={"capacity": 5}, headers=admin_headers
    )
    assert response.status_code == 200
    assert fetch(client, factory, alice) == ids[:5]


def test_listing_held_tickets_assigns_nothing(client, factory, admin_headers, app):
    alice = factory.user("alice")
    ids = factory.tickets(5)
    stats = client.get("/api/admin/queue/", headers=admin_headers).get_json()
    for _ in range(3):
        assert held_now(client, factory, alice) == []
    assert holdings(app) == {}
    assert queued_in(app) == ids
    assert client.get("/api/admin/queue/", headers=admin_headers).get_json() == stats
    assert events_of(app, "assigned") == []


# -- deletes and edits -----------------------------------------------------------
def test_a_deleted_queued_ticket_is_never_handed_out(client, factory, admin_headers, app):
    alice = factory.user("alice")
    ids = factory.tickets(6)
    for ticket_id in (ids[0], ids[2]):
        assert (
            client.delete(f"/api/admin/tickets/{ticket_id}/", headers=admin_headers).status_code
            == 204
        )
    assert queued_in(app) == [ids[1]] + ids[3:]
    assert fetch(client, factory, alice) == [ids[1]] + ids[3:]


def test_a_sale_whose_redis_cleanup_was_lost_does_not_cost_the_agent_a_slot(client, factory, app):
    """The sold ticket is still held and reserved in Redis, as if the sale's process
    died after its commit: the next fetch looks the slot up and tops up in full."""
    alice = factory.user("alice", capacity=3)
    ids = factory.tickets(6)
    assert fetch(client, factory, alice) == ids[:3]
    sell(client, factory, alice, ids[0])
    with app.app_context():
        queue = ticket_queue()
        queue.client.sadd(queue.held_key(alice.id), ids[0])
        queue.client.zadd(queue.reserved_key, {str(ids[0]): queue.now() + 60})
    assert fetch(client, factory, alice) == [ids[1], ids[2], ids[3]]
    assert held_set(app, alice.id) == {ids[1], ids[2], ids[3]}
    assert in_flight(app) == []


def test_a_deleted_ticket_left_in_redis_is_still_never_handed_out(client, factory, app):
    """If the Redis cleanup after a delete is lost, PostgreSQL's confirm refuses the id."""
    alice = factory.user("alice", capacity=3)
    ids = factory.tickets(5)
    with app.app_context():
        db.session.execute(sa.delete(Ticket).where(Ticket.id == ids[0]))
        db.session.commit()
    assert ids[0] in queued_in(app)
    assert fetch(client, factory, alice) == ids[1:4]
    assert ids[0] not in queued_in(app)
    assert held_set(app, alice.id) == set(ids[1:4])
    assert in_flight(app) == []


def test_a_deleted_held_ticket_frees_a_slot(client, factory, admin_headers, app):
    alice = factory.user("alice", capacity=3)
    ids = factory.tickets(5)
    assert fetch(client, factory, alice) == ids[:3]
    assert client.delete(f"/api/admin/tickets/{ids[1]}/", headers=admin_headers).status_code == 204
    assert held_now(client, factory, alice) == [ids[0], ids[2]]
    assert held_set(app, alice.id) == {ids[0], ids[2]}
    assert fetch(client, factory, alice) == [ids[0], ids[2], ids[3]]
    assert_invariants(app)


def test_edits_keep_the_holder_and_the_queue_order(client, factory, admin_headers, app):
    alice, bob = factory.user("alice", capacity=2), factory.user("bob", capacity=2)
    ids = factory.tickets(5)
    assert fetch(client, factory, alice) == ids[:2]
    edits = [
        ("PUT", ids[0], {"title": "held, replaced", "description": "d"}),
        ("PATCH", ids[1], {"description": "held, patched"}),
        ("PUT", ids[3], {"title": "queued, replaced", "description": ""}),
        ("PATCH", ids[2], {"title": "queued, patched"}),
    ]
    for method, ticket_id, body in edits:
        response = client.open(
            f"/api/admin/tickets/{ticket_id}/", method=method, json=body, headers=admin_headers
        )
        assert response.status_code == 200
        edited = response.get_json()
        expected_holder = alice.id if ticket_id in ids[:2] else None
        assert edited["agent_id"] == expected_holder
        assert edited["status"] == ("assigned" if expected_holder else "unassigned")
    assert holdings(app) == {alice.id: ids[:2]}
    assert queued_in(app) == ids[2:]
    assert fetch(client, factory, alice) == ids[:2]
    bob_got = client.get("/api/agent/tickets/assign/", headers=factory.headers(bob)).get_json()
    assert [(t["id"], t["title"]) for t in bob_got["tickets"]] == [
        (ids[2], "queued, patched"),
        (ids[3], "queued, replaced"),
    ]


# -- releases --------------------------------------------------------------------
def test_deactivating_an_agent_returns_its_unsold_tickets_in_creation_order(
    client, factory, admin, admin_headers, app
):
    alice, bob, carol = (factory.user(n, capacity=3) for n in ("alice", "bob", "carol"))
    ids = factory.tickets(7)
    alice_headers = factory.headers(alice)
    assert fetch(client, factory, alice) == ids[:3]
    sell(client, factory, alice, ids[1])
    assert fetch(client, factory, alice) == [ids[0], ids[2], ids[3]]
    assert fetch(client, factory, bob) == ids[4:7]
    assert queued_in(app) == []

    response = client.patch(
        f"/api/admin/users/{alice.id}/", json={"is_active": False}, headers=admin_headers
    )
    assert response.status_code == 200
    # Back at the front of the queue, oldest first; the sold one stays with its seller.
    assert queued_in(app) == [ids[0], ids[2], ids[3]]
    assert held_set(app, alice.id) == set()
    assert holdings(app) == {bob.id: ids[4:7]}
    with app.app_context():
        sold = db.session.get(Ticket, ids[1])
        assert (sold.status, sold.agent_id) == ("sold", alice.id)
    assert events_of(app, "released") == [(i, admin.id, alice.id) for i in (ids[0], ids[2], ids[3])]

    # Its tokens stop working at once, on every agent route.
    for method, path in (
        ("GET", "/api/agent/tickets/assign/"),
        ("GET", "/api/agent/tickets/"),
        ("POST", f"/api/agent/tickets/sell/{ids[0]}/"),
    ):
        locked = client.open(path, method=method, headers=alice_headers)
        assert locked.status_code == 401
        assert locked.get_json()["error"]["code"] == "unauthorized"
    assert queued_in(app) == [ids[0], ids[2], ids[3]]

    # The returned tickets go out before any younger one.
    sell(client, factory, bob, ids[5])
    assert fetch(client, factory, bob) == [ids[0], ids[4], ids[6]]
    assert fetch(client, factory, carol) == [ids[2], ids[3]]
    assert_invariants(app)


def test_lowering_capacity_releases_the_youngest_excess(client, factory, admin_headers, app):
    alice, bob = factory.user("alice", capacity=5), factory.user("bob", capacity=5)
    ids = factory.tickets(8)
    assert fetch(client, factory, alice) == ids[:5]
    response = client.patch(
        f"/api/admin/users/{alice.id}/", json={"capacity": 2}, headers=admin_headers
    )
    assert response.status_code == 200
    assert holdings(app) == {alice.id: ids[:2]}
    assert held_set(app, alice.id) == set(ids[:2])
    assert queued_in(app) == ids[2:]
    assert fetch(client, factory, alice) == ids[:2]
    assert fetch(client, factory, bob) == ids[2:7]
    assert_invariants(app)


def test_capacity_changes_that_do_not_overflow_release_nothing(client, factory, admin_headers, app):
    alice = factory.user("alice", capacity=5)
    ids = factory.tickets(8)
    assert fetch(client, factory, alice) == ids[:5]
    for capacity in (5, 9):
        response = client.patch(
            f"/api/admin/users/{alice.id}/", json={"capacity": capacity}, headers=admin_headers
        )
        assert response.status_code == 200
        assert holdings(app) == {alice.id: ids[:5]}
    assert events_of(app, "released") == []


# -- numbers and history ---------------------------------------------------------
def test_queue_stats_numbers(client, factory, admin_headers, app):
    alice = factory.user("alice")
    ids = factory.tickets(20)
    assert fetch(client, factory, alice) == ids[:15]
    sell(client, factory, alice, ids[0])
    sell(client, factory, alice, ids[1])
    assert client.delete(f"/api/admin/tickets/{ids[19]}/", headers=admin_headers).status_code == 204
    stats = client.get("/api/admin/queue/", headers=admin_headers).get_json()
    # The 13 tickets alice holds keep their reservations until her next fetch
    # clears them (the sales cleared theirs).
    assert stats == {"queued": 4, "unassigned": 4, "assigned": 13, "sold": 2, "reserved": 13}
    # A reservation in flight shows as reserved and no longer queued.
    with app.app_context():
        reservation = ticket_queue().reserve(9999, 1, 30, known=[], queues=[GENERAL])
    assert reservation.ids == [ids[15]]
    stats = client.get("/api/admin/queue/", headers=admin_headers).get_json()
    assert stats == {"queued": 3, "unassigned": 4, "assigned": 13, "sold": 2, "reserved": 14}
    # Alice's next fetch clears her 13 and reserves the 2 it confirms.
    assert fetch(client, factory, alice) == [*ids[2:15], *ids[16:18]]
    stats = client.get("/api/admin/queue/", headers=admin_headers).get_json()
    assert stats == {"queued": 1, "unassigned": 2, "assigned": 15, "sold": 2, "reserved": 3}


def test_ticket_history_shows_who_had_it(client, factory, admin, admin_headers):
    alice = factory.user("alice")
    ticket = client.post("/api/admin/tickets/", json={"title": "t"}, headers=admin_headers)
    ticket_id = ticket.get_json()["id"]
    assert fetch(client, factory, alice) == [ticket_id]
    sell(client, factory, alice, ticket_id)
    assert (
        client.delete(f"/api/admin/tickets/{ticket_id}/", headers=admin_headers).status_code == 204
    )
    response = client.get(f"/api/admin/tickets/{ticket_id}/events/", headers=admin_headers)
    assert response.status_code == 200
    items = response.get_json()["items"]
    assert [(e["kind"], e["actor_id"], e["agent_id"]) for e in items] == [
        ("created", admin.id, None),
        ("assigned", alice.id, alice.id),
        ("sold", alice.id, alice.id),
        ("deleted", admin.id, alice.id),
    ]
    assert all(e["ticket_id"] == ticket_id for e in items)
    times = [datetime.fromisoformat(e["at"]) for e in items]
    assert times == sorted(times)


def test_history_of_a_released_ticket(client, factory, admin, admin_headers):
    alice, bob = factory.user("alice"), factory.user("bob")
    (ticket_id,) = factory.tickets(1)
    fetch(client, factory, alice)
    client.patch(f"/api/admin/users/{alice.id}/", json={"is_active": False}, headers=admin_headers)
    assert fetch(client, factory, bob) == [ticket_id]
    items = client.get(f"/api/admin/tickets/{ticket_id}/events", headers=admin_headers).get_json()[
        "items"
    ]
    assert [(e["kind"], e["actor_id"], e["agent_id"]) for e in items] == [
        ("created", None, None),
        ("assigned", alice.id, alice.id),
        ("released", admin.id, alice.id),
        ("assigned", bob.id, bob.id),
    ]


# -- Redis loses or corrupts its state -------------------------------------------
def test_a_redis_wipe_between_fetches_loses_and_doubles_nothing(client, factory, app, redis_client):
    from service.domain.rebuild import rebuild

    alice, bob = factory.user("alice"), factory.user("bob")
    ids = factory.tickets(40)
    assert fetch(client, factory, alice) == ids[:15]
    redis_client.flushdb()
    # PostgreSQL still answers the holder; the queue is empty until it is rebuilt.
    assert fetch(client, factory, alice) == ids[:15]
    assert fetch(client, factory, bob) == []
    sell(client, factory, alice, ids[0])
    with app.app_context():
        rebuild(db.session, ticket_queue())
    assert queued_in(app) == ids[15:]
    assert fetch(client, factory, alice) == ids[1:16]
    assert fetch(client, factory, bob) == ids[16:31]
    assert_invariants(app)


def test_a_wiped_redis_refilled_with_every_id_still_never_doubles(
    client, factory, app, redis_client
):
    """The worst restore: every ticket id, held ones too, back in the queue, no held sets."""
    alice, bob, carol = factory.user("alice"), factory.user("bob"), factory.user("carol")
    ids = factory.tickets(40)
    assert fetch(client, factory, alice) == ids[:15]
    redis_client.flushdb()
    with app.app_context():
        ticket_queue().enqueue(in_general(*ids))
    # Alice is full in PostgreSQL: her fetch answers from it and pops nothing.
    assert fetch(client, factory, alice) == ids[:15]
    assert queued_in(app) == ids
    # Once she sells, her fetch pops her own sold and held ids back from the queue
    # head: PostgreSQL refuses them, they are dropped, and she gets the next oldest.
    sell(client, factory, alice, ids[0])
    assert fetch(client, factory, alice) == ids[1:16]
    assert held_set(app, alice.id) == set(ids[1:16])
    assert fetch(client, factory, bob) == ids[16:31]
    assert fetch(client, factory, carol) == ids[31:40]
    assert queued_in(app) == []
    assert in_flight(app) == []
    assert holdings(app) == {alice.id: ids[1:16], bob.id: ids[16:31], carol.id: ids[31:40]}
    assert_invariants(app)


def test_a_wipe_then_a_second_agent_first(client, factory, app, redis_client):
    """After a wipe another agent may pop the first agent's ids: PostgreSQL refuses them."""
    alice, bob = factory.user("alice", capacity=3), factory.user("bob", capacity=3)
    ids = factory.tickets(8)
    assert fetch(client, factory, alice) == ids[:3]
    redis_client.flushdb()
    with app.app_context():
        ticket_queue().enqueue(in_general(*ids))
    assert fetch(client, factory, bob) == ids[3:6]
    assert holdings(app) == {alice.id: ids[:3], bob.id: ids[3:6]}
    # Alice's ids were not queued again: they are hers.
    assert queued_in(app) == ids[6:]
    assert fetch(client, factory, alice) == ids[:3]
    assert_invariants(app, redis_held_sets=False)
    # Alice's held set was lost with the wipe; her next fetch with a free slot resyncs it.
    sell(client, factory, alice, ids[0])
    assert fetch(client, factory, alice) == [ids[1], ids[2], ids[6]]
    assert_invariants(app)


@pytest.mark.parametrize("bogus_count", [15, 4])
def test_stale_held_ids_are_resynced_and_the_agent_reaches_capacity(
    client, factory, app, redis_client, bogus_count
):
    alice = factory.user("alice")
    ids = factory.tickets(20)
    with app.app_context():
        held_key = ticket_queue().held_key(alice.id)
    redis_client.sadd(held_key, *range(90_001, 90_001 + bogus_count))
    assert fetch(client, factory, alice) == ids[:15]
    assert held_set(app, alice.id) == set(ids[:15])
    assert_invariants(app)


def test_stale_held_ids_after_sales_are_resynced(client, factory, app, redis_client):
    alice = factory.user("alice", capacity=5)
    ids = factory.tickets(10)
    assert fetch(client, factory, alice) == ids[:5]
    sell(client, factory, alice, ids[0])
    sell(client, factory, alice, ids[1])
    # A lost cleanup: the sold ids linger, so Redis believes the agent is full.
    with app.app_context():
        held_key = ticket_queue().held_key(alice.id)
    redis_client.sadd(held_key, ids[0], ids[1])
    assert redis_client.scard(held_key) == 5
    assert fetch(client, factory, alice) == ids[2:7]
    assert held_set(app, alice.id) == set(ids[2:7])


# -- the domain, called directly -------------------------------------------------
def test_domain_assign_and_holding(app, factory):
    alice = factory.user("alice", capacity=4)
    ids = factory.tickets(6)
    with app.app_context():
        result = assignment.assign(db.session, ticket_queue(), caller(alice), lease_seconds=30)
        assert result.capacity == 4
        assert [t.id for t in result.tickets] == ids[:4]
        again = assignment.holding(db.session, caller(alice))
        assert [t.id for t in again.tickets] == ids[:4]


def test_domain_assign_refuses_an_inactive_agent_and_takes_nothing(app, factory):
    alice = factory.user("alice", active=False)
    ids = factory.tickets(3)
    with app.app_context():
        with pytest.raises(errors.Unauthorized):
            assignment.assign(db.session, ticket_queue(), caller(alice), lease_seconds=30)
        db.session.rollback()
    assert queued_in(app) == ids
    assert holdings(app) == {}


def test_domain_confirm_never_exceeds_capacity(app, factory):
    """Even if Redis hands out too many ids, PostgreSQL confirms only the free slots."""
    alice = factory.user("alice", capacity=2)
    ids = factory.tickets(5)
    with app.app_context():
        result = assignment.confirm(db.session, alice.id, ids, [GENERAL])
    assert result.confirmed == ids[:2]
    assert result.returned == in_general(*ids[2:])
    assert result.vanished == []
    assert holdings(app) == {alice.id: ids[:2]}


def test_domain_confirm_never_takes_another_agents_ticket(app, factory):
    alice, bob = factory.user("alice"), factory.user("bob")
    ids = factory.tickets(3)
    with app.app_context():
        assert assignment.confirm(db.session, alice.id, ids[:2], [GENERAL]).confirmed == ids[:2]
        result = assignment.confirm(db.session, bob.id, ids, [GENERAL])
    assert result.confirmed == [ids[2]]
    assert result.vanished == ids[:2]
    assert holdings(app) == {alice.id: ids[:2], bob.id: [ids[2]]}


def test_domain_sell_rules(app, factory):
    alice, bob = factory.user("alice"), factory.user("bob")
    ids = factory.tickets(2)
    with app.app_context():
        queue = ticket_queue()
        assignment.assign(db.session, queue, caller(alice), lease_seconds=30)
        sold = assignment.sell(db.session, queue, caller(alice), ids[0])
        assert (sold.status, sold.agent_id) == ("sold", alice.id)
        with pytest.raises(errors.Conflict) as conflict:
            assignment.sell(db.session, queue, caller(alice), ids[0])
        assert conflict.value.code == "already_sold"
        with pytest.raises(errors.NotFound):
            assignment.sell(db.session, queue, caller(bob), ids[1])
        assert queue.held(alice.id) == {ids[1]}
