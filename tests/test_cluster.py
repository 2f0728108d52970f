"""The service on a real three-node Redis Cluster (REDIS_CLUSTER=true).

Every key carries the ``{tq}`` hash tag, so every Lua script and pipeline
touches one slot; these tests run the assignment path, selling, returning
tickets, token revocation, the login limit, the probes and concurrent fetches
from several gunicorn processes against the cluster client.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
import requests
import sqlalchemy as sa
from conftest import METRICS_AUTH, PASSWORD, Factory, fresh_app, service_env
from flask import Flask
from flask.testing import FlaskClient
from helpers import GENERAL_KEY, fetch, queued_in, reserved_ids
from live import live_server
from sse import EventStream

from service.extensions import db
from service.models import GENERAL, Ticket
from service.state import ticket_queue


def cluster_env(cluster: Any, **extra: str) -> dict[str, str]:
    return service_env(REDIS_URL=cluster.url, REDIS_CLUSTER="true", **extra)


@pytest.fixture
def app(_schema: None, redis_cluster: Any) -> Iterator[Flask]:
    """The conftest ``app``, on the cluster: every fixture built on it follows."""
    # (Its FLUSHDB reaches every primary of the cluster.)
    with fresh_app(REDIS_URL=redis_cluster.url, REDIS_CLUSTER="true") as app:
        yield app


def holding(app: Flask, agent_id: int) -> list[int]:
    with app.app_context():
        return list(
            db.session.scalars(
                sa.select(Ticket.id)
                .where(Ticket.agent_id == agent_id, Ticket.status == "assigned")
                .order_by(Ticket.id)
            )
        )


def test_the_app_runs_on_the_cluster_client_and_keeps_every_key_in_one_slot(
    app: Flask, client: FlaskClient, factory: Factory
) -> None:
    agent = factory.user("alice", capacity=2)
    factory.tickets(4)
    fetch(client, factory, agent)
    with app.app_context():
        cluster = ticket_queue().client
        assert isinstance(cluster, redis.RedisCluster)
        keys = list(cluster.scan_iter(match="*", count=1000))
        assert {GENERAL_KEY, f"{{tq}}:held:{agent.id}"} <= set(keys)
        assert {cluster.keyslot(key) for key in keys} == {cluster.keyslot("{tq}")}


def test_fetch_hands_out_the_oldest_tickets_up_to_capacity(
    app: Flask, client: FlaskClient, factory: Factory
) -> None:
    alice = factory.user("alice", capacity=5)
    bob = factory.user("bob", capacity=5)
    ids = factory.tickets(12)
    assert fetch(client, factory, alice) == ids[:5]
    assert fetch(client, factory, alice) == ids[:5]  # full: the same list again
    assert fetch(client, factory, bob) == ids[5:10]
    assert queued_in(app) == ids[10:]
    assert holding(app, alice.id) == ids[:5]


def test_sell_then_fetch_tops_up_with_the_next_oldest(
    app: Flask, client: FlaskClient, factory: Factory
) -> None:
    agent = factory.user("alice", capacity=3)
    ids = factory.tickets(6)
    headers = factory.headers(agent)
    assert fetch(client, factory, agent) == ids[:3]
    for ticket_id in ids[:2]:
        sold = client.post(f"/api/agent/tickets/sell/{ticket_id}/", headers=headers)
        assert sold.status_code == 200 and sold.json["status"] == "sold"
    again = client.post(f"/api/agent/tickets/sell/{ids[0]}/", headers=headers)
    assert again.status_code == 409
    assert fetch(client, factory, agent) == [ids[2], ids[3], ids[4]]
    with app.app_context():
        assert ticket_queue().held(agent.id) == {ids[2], ids[3], ids[4]}


def test_a_deactivated_agents_tickets_go_back_ahead_of_younger_ones(
    app: Flask, client: FlaskClient, factory: Factory, admin_headers: dict[str, str]
) -> None:
    alice = factory.user("alice", capacity=3)
    bob = factory.user("bob", capacity=4)
    ids = factory.tickets(6)
    assert fetch(client, factory, alice) == ids[:3]
    response = client.patch(
        f"/api/admin/users/{alice.id}/", json={"is_active": False}, headers=admin_headers
    )
    assert response.status_code == 200
    assert fetch(client, factory, bob) == ids[:4]


def test_logout_revokes_the_token_at_once(client: FlaskClient, factory: Factory) -> None:
    factory.user("alice")
    login = client.post("/api/auth/token/", json={"username": "alice", "password": PASSWORD})
    token = login.json["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/agent/tickets/", headers=headers).status_code == 200
    assert client.post("/api/auth/logout/", headers=headers).status_code == 204
    revoked = client.get("/api/agent/tickets/", headers=headers)
    assert revoked.status_code == 401
    assert revoked.json["error"]["code"] == "token_revoked"


def test_probes_and_gauges_read_the_cluster(client: FlaskClient, factory: Factory) -> None:
    factory.tickets(3)
    assert client.get("/readyz").json == {"status": "ready"}
    metrics = client.get("/metrics", headers=METRICS_AUTH).text
    assert 'tq_queue_depth{queue="general"} 3.0' in metrics
    assert 'tq_scrape_error{dependency="redis"} 0.0' in metrics


def test_concurrent_fetches_by_one_agent_from_several_processes(
    app: Flask, factory: Factory, redis_cluster: Any
) -> None:
    agent = factory.user("alice", capacity=5)
    other = factory.user("bob")
    ids = factory.tickets(40)
    headers = factory.headers(agent)
    env = cluster_env(redis_cluster, LOGIN_RATE_LIMIT="2 per minute")
    with live_server(env, workers=3) as url:

        def one_fetch(_: int) -> requests.Response:
            return requests.post(f"{url}/api/agent/tickets/assign/", headers=headers, timeout=10)

        with ThreadPoolExecutor(max_workers=12) as pool:
            answers = list(pool.map(one_fetch, range(36)))

        logins = [
            requests.post(
                f"{url}/api/auth/token/",
                json={"username": "bob", "password": "wrong-password"},
                headers={"Connection": "close"},
                timeout=10,
            ).status_code
            for _ in range(3)
        ]
        assert requests.get(f"{url}/readyz", timeout=10).status_code == 200

    assert all(a.status_code == 200 for a in answers), [
        a.text for a in answers if a.status_code != 200
    ][:3]
    assert all(len(a.json()["tickets"]) <= 5 for a in answers)
    assert all(len(a.json()["tickets"]) == 5 for a in answers[-3:])
    # PostgreSQL and the cluster agree: the agent holds exactly its capacity,
    # nothing is reserved but its own confirmed tickets (until its next fetch),
    # and every other ticket is still queued.
    held = holding(app, agent.id)
    assert len(held) == 5
    assert held == ids[:5]
    with app.app_context():
        queue = ticket_queue()
        assert queue.held(agent.id) == set(held)
        assert queue.depth([GENERAL])[0] == {GENERAL: 35}
        assert reserved_ids(queue) <= set(held)
    assert queued_in(app) == ids[5:]
    assert holding(app, other.id) == []
    # The login limit is kept in the cluster too, shared by the three workers.
    assert logins == [401, 401, 429]


def test_waits_and_streams_on_the_cluster(redis_cluster: Any, factory: Factory) -> None:
    """The scripts publish on a cluster node, the hub listens on the node of
    REDIS_URL: a waiting fetch is woken and a stream gets the events."""
    admin = factory.headers(factory.user("admin", role="admin"))
    agent = factory.headers(factory.user("alice", capacity=2))
    with (
        live_server(cluster_env(redis_cluster), workers=2) as url,
        EventStream(url, "/api/admin/events/", admin) as stream,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        assert stream.status == 200
        waiting = pool.submit(
            requests.get, f"{url}/api/agent/tickets/assign/?wait=10", headers=agent
        )
        time.sleep(0.5)
        created_at = time.monotonic()
        ticket = requests.post(
            f"{url}/api/admin/tickets/", json={"title": "c"}, headers=admin, timeout=10
        ).json()["id"]
        answer = waiting.result(timeout=10)
        answered_at = time.monotonic()
        assert [t["id"] for t in answer.json()["tickets"]] == [ticket]
        assert answered_at - created_at < 1.0
        kinds = [stream.next(timeout=3).event for _ in range(2)]
        assert kinds == ["ticket.created", "ticket.assigned"]
