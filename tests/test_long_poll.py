"""A fetch that waits for work (``?wait=``), on real gunicorn processes.

The ticket is created through another server than the one the fetch waits on
(another process, so only Redis pub/sub can wake it), and the fetch must be
answered within a second of the ticket's creation. Of agents woken for one
ticket exactly one gets it and the others wait on. A wait answers at once when
there is nothing to wait for.

Every test here makes its own queue, so what one test leaves behind is never
handed to the next one's agents.
"""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
import requests
from conftest import Factory, fresh_app, service_env
from flask import Flask
from live import Server, gunicorn, wait_for
from sse import EventStream

from service.state import ticket_queue

pytestmark = pytest.mark.slow

ASSIGN = "/api/agent/tickets/assign/"
_names = itertools.count(1)


@dataclass
class Stack:
    app: Flask
    waiting: Server  # where the fetches wait: two workers
    other: Server  # where tickets are created: another process altogether
    factory: Factory
    admin: dict[str, str]

    def queue(self) -> str:
        return self.factory.queue(f"q{next(_names)}")

    def agent(self, queue: str, **kwargs: object) -> dict[str, str]:
        user = self.factory.user(f"agent{next(_names)}", queues=(queue,), **kwargs)  # type: ignore[arg-type]
        return self.factory.headers(user)

    def create(self, queue: str, title: str = "t") -> int:
        reply = requests.post(
            f"{self.other.url}/api/admin/tickets/",
            json={"title": title, "queue": queue},
            headers=self.admin,
            timeout=5,
        )
        assert reply.status_code == 201, reply.text
        return int(reply.json()["id"])


@pytest.fixture(scope="module")
def stack(_schema: None) -> Iterator[Stack]:
    with (
        fresh_app() as app,
        gunicorn(service_env(), workers=2) as waiting,
        gunicorn(service_env(), workers=1) as other,
    ):
        factory = Factory(app)
        admin = factory.headers(factory.user("admin", role="admin"))
        yield Stack(app, waiting, other, factory, admin)


def fetch(url: str, headers: dict[str, str], wait: int) -> tuple[requests.Response, float]:
    """A fetch with ``?wait=``: its answer and when it came (time.monotonic())."""
    reply = requests.get(f"{url}{ASSIGN}?wait={wait}", headers=headers, timeout=wait + 10)
    return reply, time.monotonic()


def held(reply: requests.Response) -> list[int]:
    assert reply.status_code == 200, reply.text
    return [ticket["id"] for ticket in reply.json()["tickets"]]


def waiting_on(pool: ThreadPoolExecutor, stack: Stack, headers: dict[str, str], wait: int):
    """Start a waiting fetch; give the server a moment to register it."""
    future = pool.submit(fetch, stack.waiting.url, headers, wait)
    time.sleep(0.3)
    assert not future.done()
    return future


def test_a_ticket_created_elsewhere_wakes_a_waiting_fetch_within_a_second(stack: Stack) -> None:
    queue = stack.queue()
    agents = [stack.agent(queue, capacity=1) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        # Four waits, spread over the two workers of the waiting server.
        futures = [waiting_on(pool, stack, headers, 20) for headers in agents]
        answered: dict[int, float] = {}
        for _ in agents:
            created_at = time.monotonic()
            ticket = stack.create(queue)
            done = next(iter(_first_done(futures, timeout=3)))
            futures.remove(done)
            reply, at = done.result()
            assert held(reply) == [ticket]
            answered[ticket] = at - created_at
            time.sleep(0.2)
    assert max(answered.values()) < 1.0, answered
    print(
        "wait answered after the ticket's creation:", sorted(round(t, 3) for t in answered.values())
    )


def _first_done(futures: list[Future], timeout: float) -> list[Future]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [f for f in futures if f.done()]
        if done:
            return done
        time.sleep(0.01)
    raise AssertionError(f"no waiting fetch answered within {timeout}s")


def test_of_two_agents_woken_for_one_ticket_one_gets_it_and_the_other_waits(
    stack: Stack,
) -> None:
    queue = stack.queue()
    alice, bob = stack.agent(queue), stack.agent(queue)
    with ThreadPoolExecutor(2) as pool:
        first = waiting_on(pool, stack, alice, 20)
        second = waiting_on(pool, stack, bob, 20)
        ticket = stack.create(queue)
        (winner,) = _first_done([first, second], timeout=2)
        reply, _ = winner.result()
        assert held(reply) == [ticket]
        loser = second if winner is first else first
        time.sleep(1.0)
        assert not loser.done()  # still waiting: nothing was handed out twice
        created_at = time.monotonic()
        following = stack.create(queue)
        reply, at = loser.result(timeout=5)
        assert held(reply) == [following]
        assert at - created_at < 1.0


def test_ten_waiting_agents_and_ten_tickets_each_get_one(stack: Stack) -> None:
    """An arrival wakes as many waiters as tickets arrived (per process); a woken
    fetch's row locks decide; no ticket is lost, none is handed out twice."""
    queue = stack.queue()
    agents = [stack.agent(queue, capacity=1) for _ in range(10)]
    with ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(fetch, stack.waiting.url, h, 20) for h in agents]
        time.sleep(0.8)
        created_at = time.monotonic()
        tickets = {stack.create(queue, f"t{i}") for i in range(10)}
        results = [f.result(timeout=10) for f in futures]
    got = [held(reply) for reply, _ in results]
    assert sorted(t for ids in got for t in ids) == sorted(tickets)
    assert all(len(ids) == 1 for ids in got)
    assert max(at for _, at in results) - created_at < 2.0


def test_a_wait_answers_at_once_when_there_is_nothing_to_wait_for(stack: Stack) -> None:
    def quick(headers: dict[str, str]) -> list[int]:
        started = time.monotonic()
        reply, at = fetch(stack.waiting.url, headers, 10)
        assert at - started < 1.0
        return held(reply)

    # Tickets available: assigned at once.
    queue = stack.queue()
    ticket = stack.create(queue)
    assert quick(stack.agent(queue)) == [ticket]
    # Away or offline: nothing to wait for, whatever arrives.
    empty = stack.queue()
    assert quick(stack.agent(empty, status="away")) == []
    assert quick(stack.agent(empty, status="offline")) == []
    # Full: it holds its capacity.
    queue = stack.queue()
    ticket = stack.create(queue)
    full = stack.agent(queue, capacity=1)
    assert quick(full) == [ticket]
    assert quick(full) == [ticket]


def test_a_wait_ends_with_nothing_after_its_seconds(stack: Stack) -> None:
    headers = stack.agent(stack.queue())
    started = time.monotonic()
    reply, at = fetch(stack.waiting.url, headers, 1)
    assert held(reply) == []
    assert 0.9 < at - started < 2.0


def test_an_agent_going_away_while_waiting_is_answered_at_once(stack: Stack) -> None:
    queue = stack.queue()
    headers = stack.agent(queue)
    with ThreadPoolExecutor(1) as pool:
        waiting = waiting_on(pool, stack, headers, 20)
        changed_at = time.monotonic()
        status = requests.put(
            f"{stack.other.url}/api/agent/status/",
            json={"status": "away"},
            headers=headers,
            timeout=5,
        )
        assert status.status_code == 200
        reply, at = waiting.result(timeout=5)
    assert held(reply) == []
    assert at - changed_at < 1.0


def test_a_logout_while_waiting_is_a_401(stack: Stack) -> None:
    headers = stack.agent(stack.queue())
    with ThreadPoolExecutor(1) as pool:
        waiting = waiting_on(pool, stack, headers, 20)
        out = requests.post(f"{stack.other.url}/api/auth/logout/", headers=headers, timeout=5)
        assert out.status_code == 204
        reply, _ = waiting.result(timeout=5)
    assert reply.status_code == 401
    assert reply.json()["error"]["code"] == "token_revoked"


@pytest.mark.parametrize("wait", ["31", "-1", "soon", "1.5"])
def test_a_wait_out_of_range_is_a_400(stack: Stack, wait: str) -> None:
    headers = stack.agent(stack.queue())
    reply = requests.get(f"{stack.waiting.url}{ASSIGN}?wait={wait}", headers=headers, timeout=5)
    assert reply.status_code == 400, reply.text
    assert list(reply.json()["error"]["fields"]) == ["wait"]


def test_waits_and_streams_beyond_the_limits_are_429s(stack: Stack) -> None:
    limits = {
        "LONG_POLLS_PER_USER": "1",
        "LONG_POLLS_TOTAL": "2",
        "STREAMS_PER_USER": "1",
        "STREAMS_TOTAL": "2",
    }
    queue = stack.queue()
    agents = [stack.agent(queue) for _ in range(3)]

    def places(kind: str) -> int:
        """The places of ``kind`` ("wait", "stream") taken in Redis now."""
        with stack.app.app_context():
            queue_ = ticket_queue()
            return int(queue_.client.zcard(queue_.slots_key(kind)))

    with gunicorn(service_env(**limits), workers=2) as server, ThreadPoolExecutor(2) as pool:
        first = pool.submit(fetch, server.url, agents[0], 5)
        wait_for(lambda: places("wait") == 1, "the first wait to take its place", 5)
        same_agent, _ = fetch(server.url, agents[0], 5)
        assert same_agent.status_code == 429, same_agent.text
        assert int(same_agent.headers["Retry-After"]) > 0
        second = pool.submit(fetch, server.url, agents[1], 5)
        wait_for(lambda: places("wait") == 2, "the second wait to take its place", 5)
        over_total, _ = fetch(server.url, agents[2], 5)
        assert over_total.status_code == 429, over_total.text
        # The waits in place end normally; then their places are free again.
        assert held(first.result()[0]) == [] and held(second.result()[0]) == []
        reply, _ = fetch(server.url, agents[2], 1)
        assert reply.status_code == 200

        def stream(headers: dict[str, str]) -> requests.Response:
            url = f"{server.url}/api/agent/events/"
            return requests.get(url, headers=headers, stream=True, timeout=5)

        opened = [stream(agents[0])]
        assert opened[-1].status_code == 200
        opened.append(stream(agents[0]))
        assert opened[-1].status_code == 429 and int(opened[-1].headers["Retry-After"]) > 0
        opened.append(stream(agents[1]))
        assert opened[-1].status_code == 200
        opened.append(stream(agents[2]))
        assert opened[-1].status_code == 429
        for response in opened:
            response.close()

        # A client that goes away frees its place at once, not at the next write.
        wait_for(lambda: places("stream") == 0, "the closed streams' places to be free", 2)
        with EventStream(server.url, "/api/agent/events/", agents[0]) as dropped:
            assert dropped.status == 200
        wait_for(lambda: places("stream") == 0, "the dropped stream's place to be free", 2)
        with EventStream(server.url, "/api/agent/events/", agents[0]) as again:
            assert again.status == 200
        waiting = _raw_wait(server.url, agents[0])
        wait_for(lambda: places("wait") == 1, "the raw wait to take its place", 5)
        waiting.close()
        wait_for(lambda: places("wait") == 0, "the dropped wait's place to be free", 2)
        reply, _ = fetch(server.url, agents[0], 1)
        assert reply.status_code == 200, reply.text


def _raw_wait(url: str, headers: dict[str, str]) -> socket.socket:
    """A waiting fetch on a raw socket, so the test can drop it mid-wait."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=5)
    auth = headers["Authorization"]
    request = f"GET {ASSIGN}?wait=20 HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: {auth}"
    sock.sendall(f"{request}\r\n\r\n".encode())
    return sock
