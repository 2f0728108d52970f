"""A dependency that hangs (answers nothing, refuses nothing): bounded answers, then recovery.

Redis is a private redis-server frozen with SIGSTOP; PostgreSQL sits behind a
TCP proxy told to stop forwarding. The service runs as it does in production (a
gunicorn with gevent workers, and ``python -m workers``). Every request answers
within a bounded time (REDIS_TIMEOUT_SECONDS; the statement and connect
timeouts for PostgreSQL): a 503 naming the dependency with nothing changed, or
its usual answer when it does not need the hung one. The workers back off,
and everything recovers by itself when the dependency answers again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from conftest import PASSWORD, TEST_DATABASE_URL, Factory, fresh_app, service_env
from helpers import GENERAL_KEY
from live import Server, Workers, gunicorn, wait_for
from proxy import TcpProxy
from redis_server import RedisServer

from service.domain.rebuild import rebuild
from service.extensions import db
from service.state import ticket_queue

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

REDIS_TIMEOUT = 0.5
STATEMENT_TIMEOUT_MS = 1000
CONNECT_TIMEOUT = 1
# What a request may take at most while a dependency hangs: Redis's timeout, or
# PostgreSQL's statement timeout plus the second the service gives PostgreSQL to
# enforce it itself, and some slack for a busy machine.
REDIS_BOUND = REDIS_TIMEOUT + 1.0
POSTGRES_BOUND = STATEMENT_TIMEOUT_MS / 1000 + 1 + 1.5


@dataclass
class Stack:
    server: Server
    workers: Workers
    factory: Factory
    redis: RedisServer
    proxy: TcpProxy
    agent: Any
    admin: dict[str, str]

    def call(self, method: str, path: str, **kwargs: Any) -> tuple[requests.Response, float]:
        started = time.monotonic()
        response = requests.request(method, f"{self.server.url}{path}", timeout=30, **kwargs)
        return response, time.monotonic() - started

    def agent_headers(self) -> dict[str, str]:
        return self.factory.headers(self.agent)


def tickets_in_postgres() -> list[Any]:
    engine = sa.create_engine(TEST_DATABASE_URL)
    try:
        with engine.connect() as conn:
            return list(
                conn.execute(sa.text("SELECT id, status, agent_id FROM tickets ORDER BY id")).all()
            )
    finally:
        engine.dispose()


@pytest.fixture
def stack(_schema: None, redis_server: RedisServer, tmp_path: Path) -> Iterator[Stack]:
    redis_server.start()
    url = sa.engine.make_url(TEST_DATABASE_URL)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    env = service_env(
        DATABASE_URL=proxied,
        REDIS_URL=redis_server.url,
        REDIS_TIMEOUT_SECONDS=str(REDIS_TIMEOUT),
        DB_STATEMENT_TIMEOUT_MS=str(STATEMENT_TIMEOUT_MS),
        DB_CONNECT_TIMEOUT=str(CONNECT_TIMEOUT),
        RELAY_INTERVAL_SECONDS="0.2",
        REAPER_INTERVAL_SECONDS="0.2",
        RECONCILE_INTERVAL_SECONDS="0.5",
        WORKER_MAX_BACKOFF_SECONDS="1",
        LOG_FORMAT="text",
    )
    with ExitStack() as stack, fresh_app(DATABASE_URL=proxied, REDIS_URL=redis_server.url) as app:
        factory = Factory(app)
        admin = factory.user("admin", role="admin")
        agent = factory.user("alice", capacity=3)
        factory.tickets(6)
        with app.app_context():
            rebuild(db.session, ticket_queue())
        server = stack.enter_context(gunicorn(env, workers=2))
        workers = Workers(tmp_path / "workers.log", env)
        stack.callback(workers.stop)
        wait_for(lambda: "workers started" in workers.log, "the workers to start")
        yield Stack(server, workers, factory, redis_server, proxy, agent, factory.headers(admin))
        proxy.resume()
        proxy.close()


def test_a_hung_redis_costs_a_request_at_most_its_timeout(stack: Stack) -> None:
    held_before, _ = stack.call("GET", "/api/agent/tickets/assign/", headers=stack.agent_headers())
    assert held_before.status_code == 200
    held = [t["id"] for t in held_before.json()["tickets"]]
    before = tickets_in_postgres()
    with stack.redis.paused():
        # Ten fetches at once: each a 503 naming Redis, none waiting long, nothing changed.
        with ThreadPoolExecutor(max_workers=10) as pool:
            fetches = list(
                pool.map(
                    lambda _: stack.call(
                        "GET", "/api/agent/tickets/assign/", headers=stack.agent_headers()
                    ),
                    range(10),
                )
            )
        for response, took in fetches:
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "redis_unavailable"
            assert took < REDIS_BOUND, took
        assert tickets_in_postgres() == before
        # What PostgreSQL alone can do goes on, within the same bound: a sale.
        sale, took = stack.call(
            "POST", f"/api/agent/tickets/sell/{held[0]}/", headers=stack.agent_headers()
        )
        assert sale.status_code == 200, sale.text
        assert took < REDIS_BOUND, took
        # A login's attempt limit is counted in Redis: it waits at most the timeout,
        # then lets the attempt through (logging in needs only PostgreSQL).
        login, took = stack.call(
            "POST", "/api/auth/token/", json={"username": "alice", "password": PASSWORD}
        )
        assert login.status_code == 200, login.text
        assert took < REDIS_BOUND + 1, took
        health, took = stack.call("GET", "/healthz")
        assert health.status_code == 200 and took < 0.5
        ready, took = stack.call("GET", "/readyz")
        assert ready.status_code == 503 and took < REDIS_BOUND + 1
        wait_for(lambda: "failed (TimeoutError" in stack.workers.log, "the workers to back off")
    # Redis answers again: fetches work with no restart, and the workers go on.
    wait_for(
        lambda: (
            stack.call("GET", "/api/agent/tickets/assign/", headers=stack.agent_headers())[
                0
            ].status_code
            == 200
        ),
        "fetches to work again",
        15,
    )
    # Each API process that saw a timeout fails fast for one more timeout (its breaker),
    # so a fetch can still meet a 503 that long; after it, every fetch works.
    time.sleep(2 * REDIS_TIMEOUT)
    for _ in range(4):
        after, _ = stack.call("GET", "/api/agent/tickets/assign/", headers=stack.agent_headers())
        assert after.status_code == 200, after.text
        assert len(after.json()["tickets"]) == 3 and held[0] not in [
            t["id"] for t in after.json()["tickets"]
        ]
    wait_for(lambda: "working again" in stack.workers.log, "the workers to recover", 15)
    assert stack.workers.proc.poll() is None


def test_a_hung_postgresql_costs_a_request_at_most_its_timeouts(stack: Stack) -> None:
    stack.call("GET", "/api/agent/tickets/assign/", headers=stack.agent_headers())
    with stack.redis.client() as r:
        redis_before = r.zrange(GENERAL_KEY, 0, -1, withscores=True)
    assert len(redis_before) == 3  # the six tickets less the three just assigned
    stack.proxy.hang()
    try:
        calls = [
            ("GET", "/api/agent/tickets/assign/", stack.agent_headers(), None),
            ("GET", "/api/agent/tickets/", stack.agent_headers(), None),
            ("POST", "/api/admin/tickets/", stack.admin, {"title": "during the hang"}),
            ("GET", "/api/admin/tickets/", stack.admin, None),
            ("POST", "/api/auth/token/", {}, {"username": "alice", "password": "x" * 8}),
        ]
        with ThreadPoolExecutor(max_workers=len(calls)) as pool:
            answers = list(
                pool.map(
                    lambda c: stack.call(c[0], c[1], headers=c[2], json=c[3]),
                    calls,
                )
            )
        for (method, path, _, _), (response, took) in zip(calls, answers, strict=True):
            assert response.status_code == 503, (method, path, response.text)
            assert response.json()["error"]["code"] == "database_unavailable", response.text
            assert took < POSTGRES_BOUND, (method, path, took)
        health, took = stack.call("GET", "/healthz")
        assert health.status_code == 200 and took < 0.5
        with stack.redis.client() as r:
            assert r.zrange(GENERAL_KEY, 0, -1, withscores=True) == redis_before  # unchanged
        wait_for(lambda: "OperationalError" in stack.workers.log, "the workers to back off", 20)
    finally:
        stack.proxy.resume()
    assert tickets_in_postgres()[-1][0] == 6  # the create during the hang did not happen
    wait_for(
        lambda: (
            stack.call("GET", "/api/agent/tickets/", headers=stack.agent_headers())[0].status_code
            == 200
        ),
        "requests to work again",
        20,
    )
    created, _ = stack.call("POST", "/api/admin/tickets/", headers=stack.admin, json={"title": "x"})
    assert created.status_code == 201
    wait_for(lambda: "working again" in stack.workers.log, "the workers to recover", 20)
    assert stack.workers.proc.poll() is None
