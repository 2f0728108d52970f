"""Crashes: a gunicorn worker killed at each fault point, Redis wiped or restarted under load,
and graceful shutdown (I1, I4, I5).

Every test runs the real thing: gunicorn with fault injection armed for one
kill (TQ_FAULT_ONCE_FILE), ``python -m workers`` with short intervals (and no
fault injection), a private redis-server and the test PostgreSQL database.
After each crash the system must hand every ticket out again within the
reservation lease plus a worker interval, to exactly one agent.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
import sqlalchemy as sa
from conftest import TEST_DATABASE_URL, Factory, fresh_app, service_env
from flask import Flask
from helpers import EPOCH_KEY, GENERAL_KEY, pending
from live import ROOT, Server, gunicorn, stop
from proxy import tcp_proxy
from redis_server import RedisServer

from service.domain.audit import audit
from service.extensions import db
from service.state import ticket_queue

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

# RESERVATION_LEASE_SECONDS for every server here. Leases end on whole seconds of
# Redis's clock, so one lasts between LEASE - 1 and LEASE seconds.
LEASE = 3
INTERVAL = 0.3  # the workers' relay, reaper and reconcile intervals
# What a recovery may take beyond lease + interval: polling, a worker's
# Redis TIME rounding, a busy shared machine.
SLACK = 3.0
WORKER_ENV = {
    "RELAY_INTERVAL_SECONDS": str(INTERVAL),
    "REAPER_INTERVAL_SECONDS": str(INTERVAL),
    "RECONCILE_INTERVAL_SECONDS": str(INTERVAL),
    "WORKER_MAX_BACKOFF_SECONDS": "1",
}
ASSIGN = "/api/agent/tickets/assign/"

T = TypeVar("T")


@dataclass
class Stack:
    """The test's view of the system: an in-process app for setup and inspection."""

    app: Flask
    factory: Factory
    redis: RedisServer
    tmp: Path
    url: str = ""
    admin: int = 0
    agents: list[int] = field(default_factory=list)
    # Where the servers and the workers reach PostgreSQL (a proxy), if not directly.
    database_url: str = TEST_DATABASE_URL

    def env(self, **extra: str) -> dict[str, str]:
        return service_env(
            **{
                "DATABASE_URL": self.database_url,
                "REDIS_URL": self.redis.url,
                "RESERVATION_LEASE_SECONDS": str(LEASE),
                **extra,
            }
        )

    def session(self, user: int, role: str = "agent") -> requests.Session:
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {self.factory.token(user, role)}"
        return http

    def assign(self, agent: int) -> list[int]:
        with self.session(agent) as http:
            response = http.get(f"{self.url}{ASSIGN}", timeout=10)
        assert response.status_code == 200, response.text
        body = response.json()
        assert all(t["agent_id"] == agent for t in body["tickets"])
        return [t["id"] for t in body["tickets"]]

    def tickets(self) -> dict[int, tuple[str, int | None]]:
        with self.app.app_context():
            rows = db.session.execute(sa.text("SELECT id, status, agent_id FROM tickets")).all()
            db.session.rollback()
        return {row.id: (row.status, row.agent_id) for row in rows}

    def reservations(self) -> list[int]:
        with self.redis.client() as r:
            return sorted(int(i) for i in r.zrange("{tq}:reserved", 0, -1))

    def reserved(self) -> list[int]:
        """Reservations of tickets not assigned: fetches in flight, or dead ones.

        (A confirmed ticket keeps its reservation until its agent's next fetch.)
        """
        return pending(self.reservations(), self.tickets())

    def problems(self, recheck_after: float = 0.0) -> list[str]:
        """Broken invariants (the audit) and any drift of Redis from PostgreSQL.

        With no request in flight Redis must agree with PostgreSQL exactly:
        the queue is every unassigned ticket, nothing is reserved but assigned
        tickets (until their agent's next fetch), every held set is the agent's
        unsold tickets.
        """
        with self.app.app_context():
            found = [str(v) for v in audit(db.session, ticket_queue(), recheck_after=recheck_after)]
        tickets = self.tickets()
        unassigned = sorted(i for i, (status, _) in tickets.items() if status == "unassigned")
        holdings: dict[int, set[int]] = defaultdict(set)
        for ticket_id, (status, agent) in tickets.items():
            if status == "assigned" and agent is not None:
                holdings[agent].add(ticket_id)
        with self.redis.client() as r:
            queued = [int(i) for i in r.zrange(GENERAL_KEY, 0, -1)]
            if queued != unassigned:
                found.append(f"queue {queued} is not the unassigned tickets {unassigned}")
            reserved = [int(i) for i in r.zrange("{tq}:reserved", 0, -1)]
            if left := pending(reserved, tickets):
                found.append(f"reservations of tickets not assigned left: {left}")
            agents = set(holdings) | {int(k.rsplit(":", 1)[1]) for k in r.keys("{tq}:held:*")}
            for agent in sorted(agents):
                held = {int(i) for i in r.smembers(f"{{tq}}:held:{agent}")}
                if held != holdings.get(agent, set()):
                    found.append(
                        f"held set of {agent} is {held}, PostgreSQL says {holdings[agent]}"
                    )
            if not r.exists(EPOCH_KEY):
                found.append("Redis is not marked as built")
        return found

    def wait_settled(self, timeout: float) -> None:
        """Wait until Redis agrees with PostgreSQL; fail after ``timeout`` seconds."""
        poll(lambda: not self.problems(), timeout, lambda: self.problems())
        assert self.problems(recheck_after=0.5) == []


def poll(check: Callable[[], T], timeout: float, explain: Callable[[], Any] = lambda: None) -> T:
    """Call ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:.1f}s: {explain()}")
        time.sleep(0.1)


@pytest.fixture
def stack(_schema: None, redis_server: RedisServer, tmp_path: Path) -> Iterator[Stack]:
    redis_server.start()
    # An empty database and an empty (unbuilt) Redis.
    with fresh_app(REDIS_URL=redis_server.url) as app:
        factory = Factory(app)
        s = Stack(app=app, factory=factory, redis=redis_server, tmp=tmp_path)
        s.admin = factory.user("admin", role="admin").id
        s.agents = factory.agents(2, capacity=3)
        yield s
        redis_server.start()


@contextmanager
def workers(stack: Stack, *, wait: bool = True) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m workers`` with short intervals; ready once it has built Redis."""
    env = {**os.environ, **stack.env(**WORKER_ENV), "PYTHONUNBUFFERED": "1"}
    for name in ("TQ_FAULT_INJECTION", "TQ_FAULT_KILL_AT", "TQ_FAULT_ONCE_FILE"):
        env.pop(name, None)
    proc = subprocess.Popen([sys.executable, "-m", "workers"], cwd=ROOT, env=env)
    try:
        if wait:
            wait_built(stack, proc)
        yield proc
    finally:
        stop(proc, timeout=10)


def wait_built(stack: Stack, proc: subprocess.Popen[bytes]) -> None:
    with stack.redis.client() as r:
        poll(lambda: r.exists(EPOCH_KEY) or proc.poll() is not None, 20)
    assert proc.poll() is None, f"the workers exited with {proc.returncode}"


@contextmanager
def serving(stack: Stack, env: dict[str, str], processes: int = 2) -> Iterator[Server]:
    """gunicorn and the workers, started side by side; the workers have built Redis."""
    with workers(stack, wait=False) as proc, gunicorn(env, workers=processes) as server:
        wait_built(stack, proc)
        stack.url = server.url
        yield server


@contextmanager
def armed_server(stack: Stack, point: str) -> Iterator[Path]:
    """gunicorn that SIGKILLs the worker reaching ``point``, once; the workers running."""
    once = stack.tmp / f"kill-at-{point}"
    once.touch()
    env = stack.env(TQ_FAULT_INJECTION="1", TQ_FAULT_KILL_AT=point, TQ_FAULT_ONCE_FILE=str(once))
    with serving(stack, env):
        yield once


def killed(once: Path, http: requests.Session, method: str, url: str, **kwargs: Any) -> float:
    """Make the request; assert its worker died at the armed point; return when."""
    with pytest.raises(requests.ConnectionError):
        http.request(method, url, timeout=20, **kwargs)
    assert not once.exists(), "the fault point was not reached"
    return time.monotonic()


# -- one kill per fault point -------------------------------------------------


def test_crash_after_the_insert_commits(stack: Stack) -> None:
    """The ticket is in PostgreSQL but was never pushed: the relay queues it."""
    alice, bob = stack.agents
    with armed_server(stack, "ticket.after_insert") as once:
        with stack.session(stack.admin, "admin") as admin:
            at = killed(once, admin, "POST", f"{stack.url}/api/admin/tickets/", json={"title": "t"})
        [(ticket, state)] = stack.tickets().items()
        assert state == ("unassigned", None)  # committed, no answer sent

        got = poll(lambda: stack.assign(alice), INTERVAL + SLACK, lambda: stack.problems())
        assert got == [ticket]
        assert time.monotonic() - at <= INTERVAL + SLACK
        assert stack.assign(bob) == []
        stack.wait_settled(SLACK)


@pytest.mark.parametrize("point", ["assign.after_reserve", "assign.before_commit"])
def test_crash_before_the_confirm_commits(stack: Stack, point: str) -> None:
    """Popped but never confirmed: the reaper returns the ids to the head after the lease."""
    alice, bob = stack.agents
    tickets = stack.factory.tickets(6)
    with armed_server(stack, point) as once:
        with stack.session(alice) as http:
            at = killed(once, http, "GET", f"{stack.url}{ASSIGN}")
        assert stack.reserved() == tickets[:3]  # the dead fetch's reservation
        assert all(state == ("unassigned", None) for state in stack.tickets().values())

        # Others are served at once; the reserved tickets wait for their lease.
        assert stack.assign(bob) == tickets[3:]
        got = poll(lambda: stack.assign(alice), LEASE + INTERVAL + SLACK)
        assert got == tickets[:3]  # back at the head, oldest first, to one agent
        assert time.monotonic() - at <= LEASE + INTERVAL + SLACK
        assert stack.assign(bob) == tickets[3:]
        stack.wait_settled(SLACK)


def test_postgres_outage_with_a_reservation_orphaned(stack: Stack) -> None:
    """A fetch dies after its pop, then PostgreSQL goes away past the lease: the reaper cannot
    tell what to do and changes nothing; once PostgreSQL is back the same server and workers
    hand the tickets out again."""
    alice, bob = stack.agents
    tickets = stack.factory.tickets(6)
    target = sa.engine.make_url(TEST_DATABASE_URL)
    with tcp_proxy(target.host or "127.0.0.1", target.port or 5432) as proxy:
        stack.database_url = target.set(host="127.0.0.1", port=proxy.port).render_as_string(
            hide_password=False
        )
        with armed_server(stack, "assign.after_reserve") as once:
            with stack.session(alice) as http:
                killed(once, http, "GET", f"{stack.url}{ASSIGN}")
            proxy.cut()
            with stack.session(bob) as http:
                response = http.get(f"{stack.url}{ASSIGN}", timeout=10)
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "database_unavailable"
            time.sleep(LEASE + 3 * INTERVAL)  # the lease ends during the outage
            assert stack.reserved() == tickets[:3]
            with stack.redis.client() as r:
                assert r.zrange(GENERAL_KEY, 0, -1) == [str(t) for t in tickets[3:]]

            proxy.restore()
            at = time.monotonic()
            # The workers back off up to WORKER_MAX_BACKOFF_SECONDS between attempts.
            assert poll(lambda: stack.assign(alice), 1 + INTERVAL + SLACK) == tickets[:3]
            assert time.monotonic() - at <= 1 + INTERVAL + SLACK
            assert stack.assign(bob) == tickets[3:]
            stack.wait_settled(SLACK)


def test_crash_after_the_confirm_commits(stack: Stack) -> None:
    """Assigned in PostgreSQL, still reserved in Redis: the agent has them; the reaper cleans up."""
    alice, bob = stack.agents
    tickets = stack.factory.tickets(6)
    with armed_server(stack, "assign.after_confirm") as once:
        with stack.session(alice) as http:
            killed(once, http, "GET", f"{stack.url}{ASSIGN}")
        assert stack.reservations() == tickets[:3]
        assert {stack.tickets()[t] for t in tickets[:3]} == {("assigned", alice)}

        assert stack.assign(alice) == tickets[:3]  # the lost answer, asked again
        assert stack.assign(bob) == tickets[3:]  # never the dead fetch's tickets
        stack.wait_settled(LEASE + INTERVAL + SLACK)  # the reaper dropped the reservation
        assert stack.assign(alice) == tickets[:3]


def test_crash_after_a_sale_commits(stack: Stack) -> None:
    """The sale stands; the held set still lists the sold ticket until it resyncs."""
    alice, bob = stack.agents
    tickets = stack.factory.tickets(6)
    with armed_server(stack, "sell.after_commit") as once:
        assert stack.assign(alice) == tickets[:3]
        with stack.session(alice) as http:
            killed(once, http, "POST", f"{stack.url}/api/agent/tickets/sell/{tickets[0]}/")
            assert stack.tickets()[tickets[0]] == ("sold", alice)
            again = http.post(f"{stack.url}/api/agent/tickets/sell/{tickets[0]}/", timeout=10)
        assert again.status_code == 409 and again.json()["error"]["code"] == "already_sold"

        # The agent's next fetch tops up by exactly the sold one.
        assert stack.assign(alice) == [*tickets[1:3], tickets[3]]
        assert stack.assign(bob) == tickets[4:]
        stack.wait_settled(INTERVAL + SLACK)


def test_crash_after_a_queue_move_commits(stack: Stack) -> None:
    """Moved to billing in PostgreSQL, still in general in Redis: the relay moves it;
    meanwhile no general agent gets it."""
    alice, _ = stack.agents
    stack.factory.queue("billing")
    carol = stack.factory.user("carol", capacity=3, queues=("billing",)).id
    [ticket] = stack.factory.tickets(1)
    with armed_server(stack, "ticket.after_move") as once:
        with stack.session(stack.admin, "admin") as admin:
            url = f"{stack.url}/api/admin/tickets/{ticket}/"
            at = killed(once, admin, "PATCH", url, json={"queue": "billing"})
        assert poll(lambda: stack.assign(carol), INTERVAL + SLACK) == [ticket]
        assert time.monotonic() - at <= INTERVAL + SLACK
        assert stack.assign(alice) == []
        stack.wait_settled(SLACK)


def test_crash_after_a_release_commits(stack: Stack) -> None:
    """Released in PostgreSQL, not yet back in Redis: the relay puts it back at its
    place, ahead of newer tickets, and no agent holds it twice."""
    alice, bob = stack.agents
    tickets = stack.factory.tickets(6)
    with armed_server(stack, "release.after_commit") as once:
        assert stack.assign(alice) == tickets[:3]
        assert stack.assign(bob) == tickets[3:]
        with stack.session(stack.admin, "admin") as admin:
            url = f"{stack.url}/api/admin/tickets/{tickets[0]}/release/"
            at = killed(once, admin, "POST", url)
        assert stack.tickets()[tickets[0]] == ("unassigned", None)
        assert poll(lambda: tickets[0] in stack.assign(alice), INTERVAL + SLACK)
        assert time.monotonic() - at <= INTERVAL + SLACK
        assert stack.assign(alice) == tickets[:3]
        assert stack.assign(bob) == tickets[3:]
        stack.wait_settled(SLACK)


def test_crash_after_an_admin_assign_commits(stack: Stack) -> None:
    """Given to bob in PostgreSQL, still queued in Redis: no one else gets it, bob has it."""
    alice, bob = stack.agents
    tickets = stack.factory.tickets(5)
    with armed_server(stack, "assign_ticket.after_commit") as once:
        with stack.session(stack.admin, "admin") as admin:
            url = f"{stack.url}/api/admin/tickets/{tickets[0]}/assign/"
            killed(once, admin, "POST", url, json={"agent_id": bob})
        assert stack.tickets()[tickets[0]] == ("assigned", bob)
        assert stack.assign(alice) == tickets[1:4]
        assert stack.assign(bob) == [tickets[0], tickets[4]]
        stack.wait_settled(INTERVAL + SLACK)


# -- Redis wiped or restarted under load ---------------------------------------


@dataclass
class Load:
    """What the clients saw while the load ran."""

    holders: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    statuses: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    sold: list[tuple[int, int]] = field(default_factory=list)
    created: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def run_load(stack: Stack, duration: float, disrupt: Callable[[], None], at: float) -> Load:
    """Agents fetch and sell, an admin creates tickets; ``disrupt`` runs ``at`` s in."""
    load = Load()
    lock = threading.Lock()
    stop = threading.Event()

    def agent(agent_id: int) -> None:
        rng = random.Random(agent_id)
        with stack.session(agent_id) as http:
            while not stop.is_set():
                response = http.get(f"{stack.url}{ASSIGN}", timeout=10)
                with lock:
                    load.statuses["fetch"].append(response.status_code)
                if response.status_code != 200:
                    time.sleep(0.05)
                    continue
                held = response.json()["tickets"]
                with lock:
                    for ticket in held:
                        load.holders[ticket["id"]].add(ticket["agent_id"])
                if held and rng.random() < 0.5:
                    ticket_id = rng.choice(held)["id"]
                    sale = http.post(f"{stack.url}/api/agent/tickets/sell/{ticket_id}/", timeout=10)
                    with lock:
                        load.statuses["sell"].append(sale.status_code)
                        if sale.status_code == 200:
                            load.sold.append((agent_id, ticket_id))
                time.sleep(0.01)

    def admin() -> None:
        with stack.session(stack.admin, "admin") as http:
            while not stop.is_set():
                response = http.post(
                    f"{stack.url}/api/admin/tickets/", json={"title": "new"}, timeout=10
                )
                with lock:
                    load.statuses["create"].append(response.status_code)
                    if response.status_code == 201:
                        load.created.append(response.json()["id"])
                time.sleep(0.05)

    def guarded(target: Callable[..., None], *args: Any) -> None:
        try:
            target(*args)
        except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
            with lock:
                load.errors.append(f"{target.__name__}{args}: {exc!r}")

    threads = [threading.Thread(target=guarded, args=(agent, a)) for a in stack.agents]
    threads.append(threading.Thread(target=guarded, args=(admin,)))
    for thread in threads:
        thread.start()
    time.sleep(at)
    disrupt()
    time.sleep(duration - at)
    stop.set()
    for thread in threads:
        thread.join(timeout=15)
    return load


def check_after_load(stack: Stack, load: Load, *, fetch_may_fail: bool) -> None:
    assert load.errors == []
    assert set(load.statuses["fetch"]) <= ({200, 503} if fetch_may_fail else {200})
    assert load.statuses["fetch"].count(200) > len(stack.agents)
    assert set(load.statuses["sell"]) == {200}
    assert set(load.statuses["create"]) == {201}
    # I1, as the clients saw it: no ticket was ever handed to two agents.
    doubled = {t: agents for t, agents in load.holders.items() if len(agents) > 1}
    assert doubled == {}

    # The workers bring Redis back in line with PostgreSQL.
    stack.wait_settled(LEASE + INTERVAL + 2 * SLACK)
    tickets = stack.tickets()
    assert all(tickets[t] == ("sold", agent) for agent, t in load.sold)
    assert set(load.created) <= set(tickets)

    # The agents' next fetches hand out the oldest unassigned tickets, once each.
    pool = sorted(t for t, (status, _) in tickets.items() if status == "unassigned")
    for agent_id in stack.agents:
        before = {t for t, (status, a) in tickets.items() if status == "assigned" and a == agent_id}
        after = stack.assign(agent_id)
        new = sorted(set(after) - before)
        assert before <= set(after)
        assert new == pool[: len(new)]
        assert len(after) == 3 or not pool[len(new) :]
        pool = pool[len(new) :]
    stack.wait_settled(SLACK)


@pytest.fixture
def loaded(stack: Stack) -> Stack:
    stack.agents = stack.factory.agents(6, prefix="loader", capacity=3)
    stack.factory.bulk_tickets(400)
    return stack


def test_flushall_under_load(loaded: Stack) -> None:
    """Redis loses everything mid-load; the workers rebuild it and nothing is lost or doubled."""
    stack = loaded

    def flushall() -> None:
        with stack.redis.client() as r:
            r.flushall()

    with serving(stack, stack.env(), processes=3):
        load = run_load(stack, duration=3.0, disrupt=flushall, at=1.2)
        check_after_load(stack, load, fetch_may_fail=False)


def test_redis_restart_under_load(loaded: Stack) -> None:
    """Redis goes away and comes back empty mid-load: fetches answer 503 meanwhile, sales and
    creations go on, and once the workers rebuilt it every ticket is accounted for."""
    stack = loaded

    def restart() -> None:
        stack.redis.stop()
        time.sleep(0.7)
        stack.redis.start()

    with serving(stack, stack.env(), processes=3):
        load = run_load(stack, duration=3.5, disrupt=restart, at=1.0)
        assert 503 in load.statuses["fetch"]
        check_after_load(stack, load, fetch_may_fail=True)


# -- graceful shutdown -----------------------------------------------------------


@contextmanager
def agent_row_locked(agent_id: int) -> Iterator[Callable[[], bool]]:
    """Hold the agent's row lock, so its fetch stops inside the confirm.

    Yields a check: is some request of this database waiting for a lock?
    """
    engine = sa.create_engine(TEST_DATABASE_URL)
    try:
        with engine.connect() as holder, engine.connect() as probe:
            holder.execute(
                sa.text("SELECT id FROM users WHERE id = :id FOR UPDATE"), {"id": agent_id}
            )

            def waiting() -> bool:
                count = probe.scalar(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                )
                probe.rollback()
                return bool(count)

            yield waiting
            holder.rollback()
    finally:
        engine.dispose()


def fetch_in_background(stack: Stack, agent: int) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def fetch() -> None:
        with stack.session(agent) as http:
            try:
                out.append(http.get(f"{stack.url}{ASSIGN}", timeout=20))
            except requests.RequestException as exc:
                out.append(exc)

    thread = threading.Thread(target=fetch)
    thread.start()
    return thread, out


def test_sigterm_lets_a_fetch_in_flight_finish(stack: Stack) -> None:
    """gunicorn.conf.py's graceful timeout lets a fetch stuck for most of a statement
    timeout (5 s) finish after SIGTERM."""
    alice, _ = stack.agents
    tickets = stack.factory.tickets(3)
    with (
        gunicorn(stack.env(), workers=1, graceful_timeout=None) as server,
        agent_row_locked(alice) as waiting,
    ):
        stack.url = server.url
        thread, out = fetch_in_background(stack, alice)
        poll(waiting, 10)  # popped and reserved, now waiting inside the confirm
        assert stack.reserved() == tickets
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(3.0)
        assert server.proc.poll() is None, "gunicorn did not wait for the request in flight"
    # The lock is released: the fetch completes during the graceful shutdown.
    thread.join(timeout=15)
    [response] = out
    assert isinstance(response, requests.Response), response
    assert response.status_code == 200
    assert [t["id"] for t in response.json()["tickets"]] == tickets
    assert server.proc.wait(timeout=10) == 0
    assert {stack.tickets()[t] for t in tickets} == {("assigned", alice)}
    assert stack.reserved() == []


def test_sigterm_past_the_graceful_timeout_loses_no_reservation(stack: Stack) -> None:
    alice, bob = stack.agents
    tickets = stack.factory.tickets(3)
    with (
        gunicorn(stack.env(), workers=1, graceful_timeout=1) as server,
        agent_row_locked(alice) as waiting,
    ):
        stack.url = server.url
        thread, out = fetch_in_background(stack, alice)
        poll(waiting, 10)
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=10)  # the worker was killed in the middle of the fetch
        thread.join(timeout=15)
        assert isinstance(out[0], requests.ConnectionError), out
    assert stack.reserved() == tickets
    assert all(state == ("unassigned", None) for state in stack.tickets().values())

    # The reaper returns the orphaned reservation; a new server hands the tickets out.
    with serving(stack, stack.env()):
        assert poll(lambda: stack.assign(bob), LEASE + INTERVAL + SLACK) == tickets
        assert stack.assign(alice) == []
        stack.wait_settled(SLACK)


def test_sigterm_stops_the_workers_with_status_0(stack: Stack) -> None:
    for outage in (False, True):
        with workers(stack) as proc:
            time.sleep(3 * INTERVAL)
            if outage:  # stopping must not wait for a dependency to come back
                stack.redis.stop()
                time.sleep(3 * INTERVAL)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
            assert time.monotonic() - started < 5
        stack.redis.start()
