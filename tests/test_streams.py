"""Event streams (server-sent events) on real gunicorn processes.

A client that drops its connection and resumes with Last-Event-ID, again and
again while tickets are written through both workers, gets every event
exactly once, in id order, each message exactly the webhook body; a new event
reaches an open stream within a second; logout, deactivation and a password
change end a stream; an idle stream costs no CPU; embedded mode streams too.

The tests share one server and make their own users, so event ids keep
growing from one test to the next, as in production.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
import sqlalchemy as sa
from conftest import Factory, fresh_app, service_env
from flask import Flask
from live import Server, gunicorn, wait_for
from sse import EventStream, Message
from test_embedded import credentials, embedded_env, flask_cli

from service.domain import events
from service.extensions import db
from service.models import TicketEvent
from service.schemas import EventMessageSchema
from service.state import ticket_queue

pytestmark = pytest.mark.slow

ADMIN_EVENTS = "/api/admin/events/"
AGENT_EVENTS = "/api/agent/events/"
KEEPALIVE = 2.0
RESCAN = 2.0  # the pump's read without being told, in the lost-flag test
_names = itertools.count(1)


@dataclass
class Stack:
    app: Flask
    server: Server
    factory: Factory

    def user(self, role: str = "agent", **kwargs: Any) -> tuple[int, dict[str, str]]:
        user = self.factory.user(f"{role}{next(_names)}", role=role, **kwargs)
        return user.id, self.factory.headers(user)

    def queue(self) -> str:
        """A queue of the test's own: what other tests left waiting is not in it."""
        return self.factory.queue(f"q{next(_names)}")

    def post(self, path: str, headers: dict[str, str], **kwargs: Any) -> requests.Response:
        return requests.post(f"{self.server.url}{path}", headers=headers, timeout=10, **kwargs)

    def patch(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> requests.Response:
        return requests.patch(f"{self.server.url}{path}", headers=headers, json=body, timeout=10)

    def stream(self, path: str, headers: dict[str, str], last: int | None = None) -> EventStream:
        return EventStream(self.server.url, path, headers, last_event_id=last)

    def expected(self, after: int = 0, agent: int | None = None) -> list[TicketEvent]:
        """The events in the table after ``after`` (of ``agent``), in id order."""
        with self.app.app_context():
            query = sa.select(TicketEvent).where(TicketEvent.id > after).order_by(TicketEvent.id)
            if agent is not None:
                query = query.where(TicketEvent.agent_id == agent)
            rows = list(db.session.scalars(query))
            db.session.remove()
            return rows


@pytest.fixture(scope="module")
def stack(_schema: None) -> Iterator[Stack]:
    env = service_env(STREAM_KEEPALIVE_SECONDS=str(KEEPALIVE), STREAMS_PER_USER="8")
    with fresh_app() as app, gunicorn(env, workers=2) as server:
        yield Stack(app, server, Factory(app))


def as_sent(event: TicketEvent) -> str:
    """What a stream must send as the event's data: the webhook body, compact."""
    return orjson.dumps(EventMessageSchema().dump(events.message(event))).decode()


def assert_exactly(received: list[Message], expected: list[TicketEvent]) -> None:
    assert [m.id for m in received] == [e.id for e in expected]
    for message, event in zip(received, expected, strict=True):
        assert message.event == f"ticket.{event.kind}"
        assert message.data == as_sent(event)


def newest_event(stack: Stack) -> int:
    rows = stack.expected()
    return rows[-1].id if rows else 0


def test_a_resumed_stream_gets_every_event_once_in_order_under_concurrent_writes(
    stack: Stack,
) -> None:
    _, admin = stack.user("admin")
    queue = stack.queue()
    agent_id, agent = stack.user(capacity=3, queues=(queue,))
    start = newest_event(stack)
    stop = threading.Event()

    def write(seed: int) -> None:
        """Tickets created, edited, fetched and sold, through whichever worker."""
        session = requests.Session()
        url = stack.server.url
        rng = random.Random(seed)
        while not stop.is_set():
            ticket = session.post(
                f"{url}/api/admin/tickets/",
                json={"title": "w", "queue": queue},
                headers=admin,
                timeout=10,
            ).json()["id"]
            priority = rng.choice(["high", "low"])
            session.patch(
                f"{url}/api/admin/tickets/{ticket}/",
                json={"priority": priority},
                headers=admin,
                timeout=10,
            )
            held = session.get(f"{url}/api/agent/tickets/assign/", headers=agent, timeout=10)
            for sold in held.json()["tickets"][: rng.randint(0, 2)]:
                session.post(
                    f"{url}/api/agent/tickets/sell/{sold['id']}/", headers=agent, timeout=10
                )

    def read(path: str, headers: dict[str, str], out: list[Message]) -> None:
        """Take a few events, drop the connection, resume after the last one."""
        rng = random.Random(path)
        last = start
        for _ in range(6):
            with stack.stream(path, headers, last=last) as stream:
                assert stream.status == 200
                for _ in range(rng.randint(1, 12)):
                    out.append(stream.next(timeout=5))
                last = out[-1].id or last
            time.sleep(rng.random() * 0.2)

    everything: list[Message] = []
    agents: list[Message] = []
    # Futures, so that a failed assertion in a reader or a writer fails the test.
    with ThreadPoolExecutor(max_workers=4) as pool:
        writers = [pool.submit(write, n) for n in range(2)]
        readers = [
            pool.submit(read, ADMIN_EVENTS, admin, everything),
            pool.submit(read, AGENT_EVENTS, agent, agents),
        ]
        try:
            for reader in readers:
                reader.result(timeout=60)
        finally:
            stop.set()
        for writer in writers:
            writer.result(timeout=30)

    # Resume once more after the writes stopped: the rest, and nothing twice.
    for path, headers, received, agent_filter in (
        (ADMIN_EVENTS, admin, everything, None),
        (AGENT_EVENTS, agent, agents, agent_id),
    ):
        expected = stack.expected(start, agent_filter)
        with stack.stream(path, headers, last=received[-1].id) as stream:
            while len(received) < len(expected):
                received.append(stream.next(timeout=5))
            received += stream.drain()
        assert_exactly(received, expected)
    assert len(everything) > 100  # enough writes ran beside the resumes


def next_of(stream: EventStream, kind: str, ticket: int, timeout: float = 3) -> Message:
    """The next message about ``ticket`` of ``kind``; a stream opened without
    Last-Event-ID may start with events committed just before it opened."""
    while True:
        message = stream.next(timeout=timeout)
        if message.event == kind and json.loads(message.data)["ticket"]["id"] == ticket:
            return message


def test_a_new_event_reaches_an_open_stream_within_a_second(stack: Stack) -> None:
    _, admin = stack.user("admin")
    queue = stack.queue()
    agent_id, agent = stack.user(queues=(queue,))
    with stack.stream(ADMIN_EVENTS, admin) as everything, stack.stream(AGENT_EVENTS, agent) as mine:
        assert everything.status == 200 and mine.status == 200
        assert everything.headers["content-type"].startswith("text/event-stream")
        latencies = []
        for n in range(5):
            created_at = time.monotonic()
            body = {"title": f"n{n}", "queue": queue}
            ticket = stack.post("/api/admin/tickets/", admin, json=body).json()
            message = next_of(everything, "ticket.created", ticket["id"])
            assert message.received - created_at < 1.0
            latencies.append(message.received - created_at)
            fetched_at = time.monotonic()
            fetch = requests.get(
                f"{stack.server.url}/api/agent/tickets/assign/", headers=agent, timeout=5
            )
            assert ticket["id"] in [t["id"] for t in fetch.json()["tickets"]]
            assigned = mine.next(timeout=3)  # the agent's stream has only its tickets' events
            assert assigned.event == "ticket.assigned" and assigned.received - fetched_at < 1.0
            assert json.loads(assigned.data)["agent_id"] == agent_id
            assert next_of(everything, "ticket.assigned", ticket["id"]).id == assigned.id
        assert mine.drain() == []
    print("event received after its request began:", [round(t, 3) for t in latencies])


def test_streams_get_their_events_when_the_open_streams_flag_is_lost(stack: Stack) -> None:
    """Writers tell the streams only while the flag that streams are open is up in
    Redis; a Redis that restarted has lost it. A stream opened then raises it again
    at once, even in a process whose streams had all closed moments before; one
    already open gets its events by the pump's rescan meanwhile."""
    _, admin = stack.user("admin")
    with stack.app.app_context():
        queue = ticket_queue()
        flag = queue.streaming_key
    env = service_env(STREAM_KEEPALIVE_SECONDS=str(KEEPALIVE), STREAM_RESCAN_SECONDS=str(RESCAN))
    with gunicorn(env, workers=1) as server:

        def create(title: str) -> tuple[int, float]:
            created_at = time.monotonic()
            response = requests.post(
                f"{server.url}/api/admin/tickets/", headers=admin, json={"title": title}, timeout=10
            )
            return response.json()["id"], created_at

        with EventStream(server.url, ADMIN_EVENTS, admin) as first:
            assert first.status == 200
        time.sleep(KEEPALIVE + 1)  # the server has seen it go: no stream is open there
        queue.client.delete(flag)
        with EventStream(server.url, ADMIN_EVENTS, admin) as second:
            assert second.status == 200
            ticket, created_at = create("flag raised again")
            assert next_of(second, "ticket.created", ticket).received - created_at < 1.0
            queue.client.delete(flag)
            ticket, created_at = create("found by the rescan")
            found = next_of(second, "ticket.created", ticket, timeout=6)
            assert found.received - created_at < RESCAN + 2.0


def test_a_stream_without_last_event_id_starts_from_now(stack: Stack) -> None:
    _, admin = stack.user("admin")
    stack.post("/api/admin/tickets/", admin, json={"title": "before"})
    time.sleep(1.5)  # what other tests wrote has settled
    with stack.stream(ADMIN_EVENTS, admin) as stream:
        assert stream.drain(quiet=0.5) == []
        ticket = stack.post("/api/admin/tickets/", admin, json={"title": "after"}).json()
        message = stream.next(timeout=3)
        assert json.loads(message.data)["ticket"]["id"] == ticket["id"]


def test_an_idle_stream_gets_keep_alive_comments(stack: Stack) -> None:
    _, admin = stack.user("admin")
    with stack.stream(ADMIN_EVENTS, admin) as stream:
        wait_for(lambda: stream.comments >= 1, "a keep-alive comment", timeout=2 * KEEPALIVE)
        assert not stream.ended.is_set()
        assert stream.raw.startswith(b"retry: 1000\n\n")


def test_logout_deactivation_and_a_new_password_end_streams(stack: Stack) -> None:
    _, admin = stack.user("admin")
    alice_id, alice = stack.user()
    other_session = stack.factory.headers(alice_id)
    bob_id, bob = stack.user()
    carol_id, carol = stack.user()
    streams = {
        "logged out": stack.stream(AGENT_EVENTS, alice),
        "other session": stack.stream(AGENT_EVENTS, other_session),
        "deactivated": stack.stream(AGENT_EVENTS, bob),
        "new password": stack.stream(AGENT_EVENTS, carol),
        "admin": stack.stream(ADMIN_EVENTS, admin),
    }
    assert {name: s.status for name, s in streams.items()} == dict.fromkeys(streams, 200)
    changed_at = time.monotonic()
    assert stack.post("/api/auth/logout/", alice).status_code == 204
    assert stack.patch(f"/api/admin/users/{bob_id}/", admin, {"is_active": False}).ok
    assert stack.patch(f"/api/admin/users/{carol_id}/", admin, {"password": "n3w-passw0rd!"}).ok
    for name in ("logged out", "deactivated", "new password"):
        assert streams[name].ended.wait(timeout=2), name
    assert time.monotonic() - changed_at < 2.0
    time.sleep(KEEPALIVE + 0.5)  # a keep-alive tick re-checks every token
    assert not streams["other session"].ended.is_set()
    assert not streams["admin"].ended.is_set()
    # A new stream with the ended token is refused.
    again = stack.stream(AGENT_EVENTS, bob)
    assert again.status == 401
    for stream in streams.values():
        stream.close()


def test_stream_errors(stack: Stack) -> None:
    _, admin = stack.user("admin")
    _, agent = stack.user()
    cases = [
        (ADMIN_EVENTS, agent, None, 403),
        (AGENT_EVENTS, admin, None, 403),
        (AGENT_EVENTS, {}, None, 401),
    ]
    for path, headers, last, status in cases:
        stream = stack.stream(path, headers, last)
        assert stream.status == status, (path, stream.body)
    for bad in ("abc", "-1", "1.5", "99999999999999999999"):
        stream = EventStream(stack.server.url, ADMIN_EVENTS, {**admin, "Last-Event-ID": bad})
        assert stream.status == 400, bad
        assert list(json.loads(stream.body)["error"]["fields"]) == ["Last-Event-ID"]


def _cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and its children (gunicorn's master and workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for process in [pid, *map(int, children)]:
        fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def test_fifty_idle_streams_cost_no_cpu(stack: Stack) -> None:
    agents = stack.factory.agents(50, prefix=f"idle{next(_names)}-")
    streams = [stack.stream(AGENT_EVENTS, stack.factory.headers(a)) for a in agents]
    try:
        assert {s.status for s in streams} == {200}
        time.sleep(1.0)  # every stream has settled into its wait
        seconds = 4.0
        before = _cpu_seconds(stack.server.proc.pid)
        time.sleep(seconds)
        spent = _cpu_seconds(stack.server.proc.pid) - before
        # Two keep-alive rounds (a comment on each stream, one token check for
        # all of them per worker) and the events re-read: a few milliseconds.
        assert spent < 0.1 * seconds, f"{spent:.3f} s of CPU in {seconds} s"
        print(f"50 idle streams: {spent * 1000:.1f} ms of CPU in {seconds:.0f} s")
    finally:
        for stream in streams:
            stream.close()


def test_embedded_mode_waits_and_streams(tmp_path: Path) -> None:
    env = embedded_env(tmp_path)
    flask_cli(env, "db", "upgrade")
    demo = credentials(flask_cli(env, "demo-users").stdout)
    with gunicorn(env, workers=1) as server:

        def login(role: str) -> dict[str, str]:
            username, password = demo[role]
            reply = requests.post(
                f"{server.url}/api/auth/token/",
                json={"username": username, "password": password},
                timeout=10,
            )
            return {"Authorization": f"Bearer {reply.json()['access_token']}"}

        admin, agent = login("admin"), login("agent")
        result: dict[str, Any] = {}

        def wait() -> None:
            reply = requests.get(
                f"{server.url}/api/agent/tickets/assign/?wait=10", headers=agent, timeout=20
            )
            result["tickets"] = [t["id"] for t in reply.json()["tickets"]]
            result["at"] = time.monotonic()

        with EventStream(server.url, ADMIN_EVENTS, admin) as stream:
            assert stream.status == 200
            waiting = threading.Thread(target=wait)
            waiting.start()
            time.sleep(0.5)
            created_at = time.monotonic()
            ticket = requests.post(
                f"{server.url}/api/admin/tickets/", json={"title": "e"}, headers=admin, timeout=10
            ).json()["id"]
            waiting.join(timeout=15)
            assert result["tickets"] == [ticket]
            assert result["at"] - created_at < 1.0
            created, assigned = stream.next(timeout=3), stream.next(timeout=3)
            assert (created.event, assigned.event) == ("ticket.created", "ticket.assigned")
            assert json.loads(assigned.data)["ticket"]["id"] == ticket
