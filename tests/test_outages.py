"""Outages: Redis down, Redis back empty, PostgreSQL down and back (I4, I6).

Redis is a private redis-server this module starts, stops and wipes; PostgreSQL
is "taken down" for the app by cutting a TCP proxy in front of the shared
server. The app is never rebuilt between the outage and the recovery: it must
come back by itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import (
    METRICS_AUTH,
    PASSWORD,
    TEST_DATABASE_URL,
    Factory,
    close_app,
    fresh_app,
    service_env,
)
from flask import Flask
from flask.testing import FlaskClient
from helpers import assert_error, queued_ids, reserved_ids
from live import wait_for
from proxy import TcpProxy
from redis_server import RedisServer

from service import create_app
from service.domain import assignment, reconcile
from service.domain.rebuild import rebuild
from service.extensions import db
from service.models import Ticket, User
from service.state import ticket_queue

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

ASSIGN = "/api/agent/tickets/assign/"
HELD = "/api/agent/tickets/"


@pytest.fixture(scope="module")
def pg_proxy() -> Iterator[TcpProxy]:
    url = sa.engine.make_url(TEST_DATABASE_URL)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    yield proxy
    proxy.close()


@dataclass
class World:
    """An app on the private Redis and behind the PostgreSQL proxy, with its users."""

    app: Flask
    client: FlaskClient
    factory: Factory
    redis: RedisServer
    proxy: TcpProxy
    admin: dict[str, str]
    alice: User
    bob: User

    def headers(self, user: User) -> dict[str, str]:
        return self.factory.headers(user)

    def rebuild(self) -> None:
        with self.app.app_context():
            rebuild(db.session, ticket_queue())

    def redis_state(self) -> dict[str, Any]:
        """The queues, held sets and reservations. Not the agents' last-seen notes:
        an agent's request that arrived is a sign of life even when it is refused."""
        with self.redis.client() as r:
            return {
                key: r.zrange(key, 0, -1, withscores=True)
                if r.type(key) == "zset"
                else sorted(r.smembers(key))
                for key in sorted(r.keys("{tq}:*"))
                if r.type(key) in ("zset", "set") and key != "{tq}:seen"
            }

    def db_state(self) -> tuple[list[Any], int, list[Any]]:
        """Every ticket, the event count and every user, read past the proxy."""
        engine = sa.create_engine(TEST_DATABASE_URL)
        try:
            with engine.connect() as conn:
                tickets = conn.execute(
                    sa.text(
                        "SELECT id, status, agent_id, title, updated_at FROM tickets ORDER BY id"
                    )
                ).all()
                events = conn.scalar(sa.text("SELECT count(*) FROM ticket_events"))
                users = conn.execute(
                    sa.text("SELECT id, is_active, capacity, password_hash FROM users ORDER BY id")
                ).all()
                return list(tickets), int(events or 0), list(users)
        finally:
            engine.dispose()


@pytest.fixture
def world(_schema: None, redis_server: RedisServer, pg_proxy: TcpProxy) -> Iterator[World]:
    redis_server.start()
    pg_proxy.restore()
    proxied = sa.engine.make_url(TEST_DATABASE_URL).set(host="127.0.0.1", port=pg_proxy.port)
    with fresh_app(
        DATABASE_URL=proxied.render_as_string(hide_password=False), REDIS_URL=redis_server.url
    ) as app:
        factory = Factory(app)
        admin = factory.user("admin", role="admin")
        w = World(
            app=app,
            client=app.test_client(),
            factory=factory,
            redis=redis_server,
            proxy=pg_proxy,
            admin=factory.headers(admin),
            alice=factory.user("alice", capacity=3),
            bob=factory.user("bob", capacity=3),
        )
        w.rebuild()  # what the workers do first: mark Redis as built from PostgreSQL
        yield w
        pg_proxy.restore()
        redis_server.start()


def ids(response: Any) -> list[int]:
    assert response.status_code == 200, response.get_data(as_text=True)
    return [t["id"] for t in response.json["tickets"]]


# -- Redis down ----------------------------------------------------------------


def test_redis_down_assign_503_while_postgres_writes_go_on(world: World) -> None:
    c, alice, bob = world.client, world.headers(world.alice), world.headers(world.bob)
    first = world.factory.tickets(4)
    assert ids(c.get(ASSIGN, headers=alice)) == first[:3]
    revoked = world.headers(world.bob)
    assert c.post("/api/auth/logout/", headers=revoked).status_code == 204

    world.redis.stop()
    before = world.db_state()
    for method in (c.get, c.post):
        assert_error(method(ASSIGN, headers=bob), 503, "redis_unavailable")
        assert_error(method(ASSIGN, headers=alice), 503, "redis_unavailable")
    assert world.db_state() == before, "a refused fetch changed PostgreSQL"

    # Reads, sales and admin writes go on from PostgreSQL alone.
    assert ids(c.get(HELD, headers=alice)) == first[:3]
    sold = c.post(f"/api/agent/tickets/sell/{first[0]}/", headers=alice)
    assert sold.status_code == 200 and sold.json["status"] == "sold"
    created = c.post("/api/admin/tickets/", json={"title": "during"}, headers=world.admin)
    assert created.status_code == 201, created.get_data(as_text=True)
    during = created.json["id"]
    edited = c.patch(f"/api/admin/tickets/{during}/", json={"title": "x"}, headers=world.admin)
    assert edited.status_code == 200 and edited.json["title"] == "x"
    put = c.put(f"/api/admin/tickets/{during}/", json={"title": "y"}, headers=world.admin)
    assert put.status_code == 200 and put.json["title"] == "y"
    assert c.delete(f"/api/admin/tickets/{first[1]}/", headers=world.admin).status_code == 204
    patched = c.patch(
        f"/api/admin/users/{world.bob.id}/", json={"capacity": 2}, headers=world.admin
    )
    assert patched.status_code == 200 and patched.json["capacity"] == 2
    carol = {"username": "carol", "password": PASSWORD, "role": "agent"}
    assert c.post("/api/admin/users/", json=carol, headers=world.admin).status_code == 201
    login = c.post("/api/auth/token/", json={"username": "bob", "password": PASSWORD})
    assert login.status_code == 200, login.get_data(as_text=True)
    refresh = {"Authorization": f"Bearer {login.json['refresh_token']}"}
    assert c.post("/api/auth/refresh/", headers=refresh).status_code == 200
    # Revocation holds, from PostgreSQL's copy.
    assert_error(c.get(HELD, headers=revoked), 401, "token_revoked")
    # Logout needs Redis (every process checks it first): refused, nothing revoked.
    fresh = {"Authorization": f"Bearer {login.json['access_token']}"}
    assert_error(c.post("/api/auth/logout/", headers=fresh), 503, "redis_unavailable")
    assert c.get(HELD, headers=fresh).status_code == 200
    assert_error(c.get("/readyz"), 503, "not_ready")
    assert_error(c.get("/api/admin/queue/", headers=world.admin), 503, "redis_unavailable")

    # Redis comes back empty; the same app serves again at once.
    world.redis.start()
    assert c.get("/readyz").status_code == 200
    assert_error(c.get(HELD, headers=revoked), 401, "token_revoked")
    assert ids(c.get(ASSIGN, headers=alice)) == [first[2]]  # what PostgreSQL says she holds
    world.rebuild()
    # The ticket created during the outage is handed out, oldest first.
    assert ids(c.get(ASSIGN, headers=bob)) == [first[3], during]
    assert ids(c.get(ASSIGN, headers=alice)) == [first[2]]
    assert_error(c.get(HELD, headers=revoked), 401, "token_revoked")
    stats = c.get("/api/admin/queue/", headers=world.admin).json
    # Reserved: the two bob's fetch confirmed, until his next fetch clears them.
    assert stats == {"queued": 0, "unassigned": 0, "assigned": 3, "sold": 1, "reserved": 2}


def test_a_redis_that_refuses_writes_is_a_503_that_changes_nothing(world: World) -> None:
    """Out of memory (as a replica after a failover refuses writes): Redis answers, but
    with an error reply. A fetch is a 503 naming Redis, not a 500, and changes nothing."""
    c, alice = world.client, world.headers(world.alice)
    world.factory.tickets(2)
    with world.redis.client() as r:
        r.config_set("maxmemory-policy", "noeviction")
        r.config_set("maxmemory", "1")
    try:
        before, redis_before = world.db_state(), world.redis_state()
        assert_error(c.get(ASSIGN, headers=alice), 503, "redis_unavailable")
        assert world.db_state() == before and world.redis_state() == redis_before
    finally:
        with world.redis.client() as r:
            r.config_set("maxmemory", "0")
    assert len(ids(c.get(ASSIGN, headers=alice))) == 2


def test_a_hung_redis_costs_about_one_timeout_per_request(world: World) -> None:
    """A Redis that accepts connections but never answers (SIGSTOP): a timed-out command may
    have run, so it is not retried, and the commands after it fail at once for a moment
    (service/queue.py, Breaker); the fetch fails fast and a sale still goes through."""
    c, alice = world.client, world.headers(world.alice)
    tickets = world.factory.tickets(3)
    assert ids(c.get(ASSIGN, headers=alice)) == tickets
    timeout = world.app.extensions["ticket_queue"].client.get_connection_kwargs()["socket_timeout"]
    with world.redis.paused():
        started = time.monotonic()
        assert_error(c.get(ASSIGN, headers=alice), 503, "redis_unavailable")
        assert time.monotonic() - started < 2 * timeout  # the revocation check, once
        started = time.monotonic()
        sold = c.post(f"/api/agent/tickets/sell/{tickets[0]}/", headers=alice)
        assert sold.status_code == 200
        assert time.monotonic() - started < 2 * timeout  # not a timeout per command
    # Once the breaker's moment is over, the first command finds Redis back.
    wait_for(lambda: c.get(ASSIGN, headers=alice).status_code == 200, "Redis to be used again", 5)
    assert ids(c.get(ASSIGN, headers=alice)) == tickets[1:]


def test_redis_lost_after_the_confirm_commits_answers_what_postgres_says(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis dies right after the confirm commits: the fetch stands (it needs Redis no more)."""
    c, alice = world.client, world.headers(world.alice)
    tickets = world.factory.tickets(4)

    def redis_dies(name: str) -> None:
        if name == "assign.after_confirm":
            world.redis.stop()

    monkeypatch.setattr(assignment, "fault_point", redis_dies)
    got = c.get(ASSIGN, headers=alice)
    assert not world.redis.running, "the fetch never reached the confirm"
    assert ids(got) == tickets[:3]  # PostgreSQL committed them: not a 503
    monkeypatch.undo()

    world.redis.start()
    world.rebuild()
    assert ids(c.get(ASSIGN, headers=alice)) == tickets[:3]
    assert ids(c.get(ASSIGN, headers=world.headers(world.bob))) == [tickets[3]]


def test_redis_lost_when_a_committed_fetch_needs_it_again_answers_what_postgres_says(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A confirm that committed can still need Redis: here to drop a deleted id it
    popped. Redis is gone by then; the fetch answers what PostgreSQL committed."""
    c, alice = world.client, world.headers(world.alice)
    tickets = world.factory.tickets(5)
    with world.app.app_context():  # deleted behind the API's back: still queued
        db.session.execute(sa.text("DELETE FROM tickets WHERE id = :i"), {"i": tickets[0]})
        db.session.commit()
    calls_after: list[str] = []

    def redis_dies(name: str) -> None:
        if name == "assign.after_confirm":
            world.redis.stop()
            calls_after.append(name)

    monkeypatch.setattr(assignment, "fault_point", redis_dies)
    got = c.get(ASSIGN, headers=alice)
    monkeypatch.undo()
    assert calls_after == ["assign.after_confirm"]
    assert ids(got) == tickets[1:3]  # committed; the settle that failed changes nothing
    world.redis.start()
    world.rebuild()
    assert ids(c.get(ASSIGN, headers=alice)) == tickets[1:4]


# -- PostgreSQL down -----------------------------------------------------------


def every_db_route(world: World, agent_id: int, ticket_id: int) -> list[tuple[str, str, Any]]:
    """(method, path, json) for every route that reads or writes PostgreSQL."""
    return [
        ("POST", "/api/auth/token/", {"username": "alice", "password": PASSWORD}),
        ("POST", "/api/auth/refresh/", None),
        ("POST", "/api/auth/logout/", None),
        ("GET", "/api/admin/users/", None),
        ("POST", "/api/admin/users/", {"username": "carol", "password": PASSWORD, "role": "agent"}),
        ("GET", f"/api/admin/users/{agent_id}/", None),
        ("PATCH", f"/api/admin/users/{agent_id}/", {"is_active": False}),
        ("GET", "/api/admin/tickets/", None),
        ("POST", "/api/admin/tickets/", {"title": "new"}),
        ("GET", f"/api/admin/tickets/{ticket_id}/", None),
        ("PUT", f"/api/admin/tickets/{ticket_id}/", {"title": "t", "description": "d"}),
        ("PATCH", f"/api/admin/tickets/{ticket_id}/", {"title": "t"}),
        ("DELETE", f"/api/admin/tickets/{ticket_id}/", None),
        ("GET", f"/api/admin/tickets/{ticket_id}/events/", None),
        ("GET", "/api/admin/queue/", None),
        ("POST", f"/api/admin/tickets/{ticket_id}/release/", None),
        ("POST", f"/api/admin/tickets/{ticket_id}/assign/", {"agent_id": agent_id}),
        ("GET", "/api/admin/queues/", None),
        ("POST", "/api/admin/queues/", {"name": "billing"}),
        ("GET", "/api/admin/queues/general/", None),
        ("PATCH", "/api/admin/queues/general/", {"description": "everything"}),
        ("DELETE", "/api/admin/queues/spare/", None),
        ("GET", "/api/admin/agents/", None),
        ("GET", "/api/admin/webhooks/", None),
        ("POST", "/api/admin/webhooks/", {"url": "https://93.184.216.34/hook"}),
        ("GET", "/api/admin/webhooks/1/", None),
        ("PATCH", "/api/admin/webhooks/1/", {"active": False}),
        ("DELETE", "/api/admin/webhooks/1/", None),
        ("GET", "/api/admin/webhooks/1/deliveries/", None),
        ("GET", "/api/agent/status/", None),
        ("PUT", "/api/agent/status/", {"status": "away"}),
        ("GET", ASSIGN, None),
        ("POST", ASSIGN, None),
        ("GET", HELD, None),
        ("POST", f"/api/agent/tickets/sell/{ticket_id}/", None),
        # A stream checks the account before it opens (503 here, nothing streamed).
        ("GET", "/api/agent/events/", None),
        ("GET", "/api/admin/events/", None),
    ]


def test_postgres_down_every_route_503_then_recovers(world: World) -> None:
    c, alice = world.client, world.headers(world.alice)
    tickets = world.factory.tickets(5)
    assert ids(c.get(ASSIGN, headers=alice)) == tickets[:3]
    login = c.post("/api/auth/token/", json={"username": "alice", "password": PASSWORD}).json
    tokens = {
        "alice": alice,
        "admin": world.admin,
        "refresh": {"Authorization": f"Bearer {login['refresh_token']}"},
    }
    redis_before = world.redis_state()
    db_before = world.db_state()

    routes = every_db_route(world, world.alice.id, tickets[0])
    adapter = world.app.url_map.bind("localhost")
    covered = {(m, adapter.match(p, method=m, return_rule=True)[0].rule) for m, p, _ in routes}
    db_free = {"/healthz", "/readyz", "/metrics", "/api/openapi.json"} | {
        "/",
        "/api/docs",
        "/api/docs/assets/<name>",
        "/api/docs/swagger-initializer.js",
    }
    every = {
        (method, rule.rule)
        for rule in world.app.url_map.iter_rules()
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}
        if rule.rule not in db_free
        and rule.endpoint != "static"
        # The console's pages answer in HTML, with the same statuses: tests/test_console.py.
        and not rule.rule.startswith("/console/")
    }
    assert covered == every, "a route is missing from this test"

    world.proxy.cut()
    for method, path, body in routes:
        who = "alice" if "/agent/" in path else "admin"
        if path.startswith("/api/auth/"):
            who = "refresh" if "refresh" in path else "alice"
        response = c.open(path, method=method, json=body, headers=tokens[who])
        assert_error(response, 503, "database_unavailable")
    assert_error(c.get("/readyz"), 503, "not_ready")
    assert c.get("/healthz").status_code == 200
    metrics = c.get("/metrics", headers=METRICS_AUTH)
    assert metrics.status_code == 200
    assert 'tq_scrape_error{dependency="database"} 1.0' in metrics.get_data(as_text=True)
    assert world.redis_state() == redis_before, "a refused request changed Redis"
    assert world.db_state() == db_before

    world.proxy.restore()
    # The same app, no restart: the first request after the outage succeeds.
    assert ids(c.get(ASSIGN, headers=alice)) == tickets[:3]
    assert c.get("/readyz").status_code == 200
    assert ids(c.get(ASSIGN, headers=world.headers(world.bob))) == tickets[3:]
    created = c.post("/api/admin/tickets/", json={"title": "after"}, headers=world.admin)
    assert created.status_code == 201
    sold = c.post(f"/api/agent/tickets/sell/{tickets[0]}/", headers=alice)
    assert sold.status_code == 200
    assert ids(c.get(ASSIGN, headers=alice)) == [*tickets[1:3], created.json["id"]]


def test_connections_pooled_before_the_cut_are_replaced(world: World) -> None:
    """Connections idle in the pool when PostgreSQL went away are not handed to requests."""
    c, alice = world.client, world.headers(world.alice)
    world.factory.tickets(2)
    with world.app.app_context():
        engine = db.engine
        held = [engine.connect() for _ in range(4)]
        for conn in held:
            conn.execute(sa.text("SELECT 1"))
        for conn in held:
            conn.close()
        assert engine.pool.checkedin() == 4  # type: ignore[attr-defined]

    world.proxy.cut()
    world.proxy.restore()  # nothing ran in between: every pooled connection is dead
    for _ in range(6):  # the pool hands connections out in turn: each stale one is met
        assert c.get(HELD, headers=alice).status_code == 200
    assert len(ids(c.get(ASSIGN, headers=alice))) == 2


def test_postgres_lost_between_pop_and_confirm_gives_the_tickets_back(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fetch answers 503 and the popped ids are queued again at once, not after a lease."""
    c, alice = world.client, world.headers(world.alice)
    tickets = world.factory.tickets(4)
    redis_before = world.redis_state()

    def postgres_dies(name: str) -> None:
        if name == "assign.after_reserve":
            world.proxy.cut()

    monkeypatch.setattr(assignment, "fault_point", postgres_dies)
    assert_error(c.get(ASSIGN, headers=alice), 503, "database_unavailable")
    monkeypatch.undo()
    assert world.redis_state() == redis_before, "the popped tickets were not given back"

    world.proxy.restore()
    assert ids(c.get(ASSIGN, headers=world.headers(world.bob))) == tickets[:3]
    assert ids(c.get(ASSIGN, headers=alice)) == [tickets[3]]


# -- lock order ------------------------------------------------------------------


@pytest.mark.parametrize("other", ["deactivate", "reconcile"])
def test_a_sale_and_a_lock_on_its_agent_do_not_deadlock(world: World, other: str) -> None:
    """A sale holds its ticket's row, then checks the agent's row (its event's foreign key).
    A deactivation, or the reconcile worker, holds the agent's row, then needs the agent's
    tickets. Neither may be failed by a deadlock.

    The sale is one statement, so the test stops it inside PostgreSQL: a trigger
    on its event's INSERT (after the ticket's UPDATE, before the foreign-key
    check) waits for an advisory lock the test holds until the other side waits
    on the ticket's row."""
    c, alice = world.client, world.headers(world.alice)
    tickets = world.factory.tickets(3)
    assert ids(c.get(ASSIGN, headers=alice)) == tickets
    if other == "reconcile":
        with world.redis.client() as r:  # a drifted held set: reconcile will fix it
            r.delete(f"{{tq}}:held:{world.alice.id}")
    engine = sa.create_engine(TEST_DATABASE_URL, isolation_level="AUTOCOMMIT")
    gate = engine.connect()
    gate.execute(
        sa.text(
            "CREATE FUNCTION test_sale_gate() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " PERFORM pg_advisory_lock(4711); PERFORM pg_advisory_unlock(4711);"
            " RETURN NEW; END $$"
        )
    )
    gate.execute(
        sa.text(
            "CREATE TRIGGER test_sale_gate BEFORE INSERT ON ticket_events FOR EACH ROW"
            f" WHEN (NEW.kind = 'sold' AND NEW.ticket_id = {tickets[0]})"
            " EXECUTE FUNCTION test_sale_gate()"
        )
    )
    gate.execute(sa.text("SELECT pg_advisory_lock(4711)"))

    def waiting_on(*kinds: str) -> int:
        return int(
            gate.scalar(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND wait_event = ANY(:kinds)"
                ),
                {"kinds": list(kinds)},
            )
            or 0
        )

    results: dict[str, Any] = {}

    def sell() -> None:
        with world.app.test_client() as own:
            results["sell"] = own.post(f"/api/agent/tickets/sell/{tickets[0]}/", headers=alice)

    seller = threading.Thread(target=sell)
    seller.start()
    try:
        # The sale holds its ticket's row and waits at the gate...
        wait_for(lambda: waiting_on("advisory") == 1, "the sale to wait at the gate", 10)
        if other == "deactivate":
            patcher = threading.Thread(
                target=lambda: results.update(
                    other=c.patch(
                        f"/api/admin/users/{world.alice.id}/",
                        json={"is_active": False},
                        headers=world.admin,
                    )
                )
            )
        else:

            def run_reconcile() -> None:
                with world.app.app_context():
                    results["other"] = reconcile.reconcile(db.session, ticket_queue())

            patcher = threading.Thread(target=run_reconcile)
        patcher.start()
        # ...until the other side holds the agent's row and waits for the ticket's:
        # the race really happens.
        wait_for(lambda: waiting_on("transactionid", "tuple") > 0, "the other side to wait", 10)
        gate.execute(sa.text("SELECT pg_advisory_unlock(4711)"))
        seller.join(timeout=20)
        patcher.join(timeout=20)
    finally:
        gate.execute(sa.text("SELECT pg_advisory_unlock_all()"))
        gate.execute(sa.text("DROP TRIGGER IF EXISTS test_sale_gate ON ticket_events"))
        gate.execute(sa.text("DROP FUNCTION IF EXISTS test_sale_gate()"))
        gate.close()
        engine.dispose()
    if other == "deactivate":
        assert results["other"].status_code == 200, results["other"].get_data(as_text=True)
    else:
        assert results["other"].agents_fixed == 1
    assert results["sell"].status_code == 200, results["sell"].get_data(as_text=True)
    rows = {row[0]: row[1:3] for row in world.db_state()[0]}
    assert rows[tickets[0]] == ("sold", world.alice.id)
    if other == "deactivate":
        assert [rows[t] for t in tickets[1:]] == [("unassigned", None)] * 2
    else:
        assert [rows[t] for t in tickets[1:]] == [("assigned", world.alice.id)] * 2
        with world.redis.client() as r:
            assert r.smembers(f"{{tq}}:held:{world.alice.id}") == {str(t) for t in tickets[1:]}


def test_a_fetch_stuck_past_the_statement_timeout_answers_503_and_changes_nothing(
    _schema: None,
) -> None:
    """A confirm that waits on a lock past ``DB_STATEMENT_TIMEOUT_MS`` is cancelled by
    PostgreSQL: the fetch answers 503 saying so, and its reserved ids go back."""
    with fresh_app(DB_STATEMENT_TIMEOUT_MS="300") as app:
        factory = Factory(app)
        alice = factory.user("alice", capacity=3)
        tickets = factory.tickets(3)
        engine = sa.create_engine(TEST_DATABASE_URL)
        try:
            with engine.connect() as blocker:  # holds the agent's row, as a stuck session would
                blocker.execute(
                    sa.text("SELECT 1 FROM users WHERE id = :id FOR UPDATE"), {"id": alice.id}
                )
                started = time.monotonic()
                reply = app.test_client().get(ASSIGN, headers=factory.headers(alice))
                waited = time.monotonic() - started
                blocker.rollback()
        finally:
            engine.dispose()
        body = assert_error(reply, 503, "database_unavailable")
        assert "gave up" in body["message"] and "nothing was changed" in body["message"]
        assert waited < 5  # the timeout ended the wait, not the test's lock
        with app.app_context():
            queue = ticket_queue()
            assert (queued_ids(queue), reserved_ids(queue)) == (tickets, set())
            assert queue.held(alice.id) == set()
            rows = db.session.execute(sa.select(Ticket.status, Ticket.agent_id)).all()
        assert rows == [("unassigned", None)] * 3
        # Once the lock is gone, the same fetch goes through.
        assert ids(app.test_client().get(ASSIGN, headers=factory.headers(alice))) == tickets


def test_an_app_built_during_an_outage_serves_once_it_ends(world: World) -> None:
    """gunicorn boots a worker (a deploy, a respawn) while both dependencies are down: it
    starts, answers 503, and serves once they are back."""
    tickets = world.factory.tickets(2)
    world.redis.stop()
    world.proxy.cut()
    proxied = sa.engine.make_url(TEST_DATABASE_URL).set(host="127.0.0.1", port=world.proxy.port)
    app = create_app(
        env=service_env(
            DATABASE_URL=proxied.render_as_string(hide_password=False),
            REDIS_URL=world.redis.url,
        )
    )
    try:
        c = app.test_client()
        assert c.get("/healthz").status_code == 200
        assert_error(c.get("/readyz"), 503, "not_ready")
        assert_error(c.get(ASSIGN, headers=world.headers(world.alice)), 503, "database_unavailable")
        world.proxy.restore()
        world.redis.start()
        world.rebuild()
        assert c.get("/readyz").status_code == 200
        assert ids(c.get(ASSIGN, headers=world.headers(world.alice))) == tickets
    finally:
        close_app(app)
