"""Webhooks: the admin routes, the URL guard, the fan-out, the sender, the schedule, the view.

The endpoints here are small HTTP servers in threads of the test process;
tests/test_webhooks_live.py runs the real processes (the workers, the sample
receiver) through crashes.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import METRICS_AUTH, Factory, fresh_app
from flask import Flask
from flask.testing import FlaskClient
from helpers import assert_error
from live import ROOT

from service import outbound
from service.config import ConfigError
from service.domain import events, webhook_delivery
from service.domain.webhook_delivery import (
    Settings,
    claim,
    due_webhooks,
    fan_out,
    release,
    retry_delay,
    schedule,
    send_batch,
)
from service.extensions import db
from service.metrics import WEBHOOK_DELIVERIES
from service.models import FeedPosition, TicketEvent, Webhook, WebhookDelivery, utcnow
from service.schemas import EventMessageSchema
from workers.config import WorkerConfig
from workers.webhooks import Dispatcher

WEBHOOKS = "/api/admin/webhooks/"
PUBLIC = "https://93.184.216.34/hooks/tickets"  # an IP literal: no DNS lookup
SECRET = "a-test-secret-of-enough-length"
FAST = Settings(timeout=2.0, max_attempts=3, retry_base=0.05, allow_private=True)
WEBHOOK_KEYS = {"id", "url", "events", "active", "created_at", "updated_at"}
DELIVERY_KEYS = {
    "event_id",
    "type",
    "attempts",
    "status",
    "last_status_code",
    "last_error",
    "next_attempt_at",
    "delivered_at",
}


def _receiver_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "webhook_receiver", ROOT / "scripts" / "webhook_receiver.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


receiver = _receiver_module()


class Endpoint:
    """An HTTP endpoint in a thread: answers ``status`` after ``delay`` seconds and
    keeps every request (path, headers, body)."""

    def __init__(
        self,
        status: int = 204,
        delay: float = 0.0,
        location: str | None = None,
        trickle: float = 0.0,
    ):
        self.status = status
        self.delay = delay
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                endpoint.requests.append((self.path, dict(self.headers), self.rfile.read(length)))
                time.sleep(endpoint.delay)
                self.send_response(endpoint.status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.flush()
                time.sleep(trickle)  # the status is out; the body takes its time
                self.wfile.write(b"no")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    served = Endpoint()
    yield served
    served.close()


@pytest.fixture
def private_app(_schema: None) -> Iterator[Flask]:
    """An app that lets webhooks name this machine (the test endpoints)."""
    with fresh_app(WEBHOOK_ALLOW_PRIVATE="true") as app:
        yield app


@pytest.fixture
def private_client(private_app: Flask) -> FlaskClient:
    return private_app.test_client()


@pytest.fixture
def private_admin(private_app: Flask) -> dict[str, str]:
    factory = Factory(private_app)
    return factory.headers(factory.user("admin", role="admin"))


def create(client: FlaskClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = client.post(WEBHOOKS, json={"url": PUBLIC, **body}, headers=headers)
    assert response.status_code == 201, response.get_data(as_text=True)
    created: dict[str, Any] = response.get_json()
    return created


def rows(app: Flask, model: Any = WebhookDelivery) -> list[Any]:
    with app.app_context():
        found = db.session.execute(sa.select(model.__table__)).all()
        db.session.rollback()
        return list(found)


def deliveries(app: Flask) -> dict[tuple[int, int], Any]:
    return {(r.webhook_id, r.event_id): r for r in rows(app)}


def event_ids(app: Flask) -> list[int]:
    with app.app_context():
        ids = list(db.session.scalars(sa.select(TicketEvent.id).order_by(TicketEvent.id)))
        db.session.rollback()
        return ids


def engine(app: Flask) -> sa.Engine:
    with app.app_context():
        return db.engine


def make_due(app: Flask) -> None:
    """Bring every pending delivery's next attempt to now."""
    with app.app_context():
        db.session.execute(
            sa.update(WebhookDelivery)
            .where(WebhookDelivery.status == "pending")
            .values(next_attempt_at=utcnow() - timedelta(seconds=1))
        )
        db.session.commit()


def send_all(app: Flask, webhook_id: int, settings: Settings = FAST) -> webhook_delivery.Sent:
    token = claim(engine(app), webhook_id, settings)
    assert token is not None
    return send_batch(engine(app), webhook_id, token, settings)


# -- the admin routes --------------------------------------------------------------
def test_a_webhook_is_created_with_its_secret_shown_once(client, admin_headers) -> None:
    created = create(client, admin_headers)
    assert set(created) == WEBHOOK_KEYS | {"secret"}
    assert created["url"] == PUBLIC and created["active"] is True
    assert created["events"] == list(events.EVENT_TYPES)  # all by default
    assert len(created["secret"]) >= 43  # generated: 32 random bytes
    shown = client.get(f"{WEBHOOKS}{created['id']}", headers=admin_headers)  # no slash too
    assert shown.status_code == 200
    assert shown.get_json() == {k: v for k, v in created.items() if k != "secret"}
    listed = client.get(WEBHOOKS.rstrip("/"), headers=admin_headers).get_json()
    assert listed == {"items": [shown.get_json()], "next_cursor": None}

    given = create(
        client,
        admin_headers,
        secret=SECRET,
        events=["ticket.sold", "ticket.created", "ticket.sold"],
        active=False,
    )
    assert given["secret"] == SECRET
    assert given["events"] == ["ticket.created", "ticket.sold"]  # once each, in order
    assert given["active"] is False


def test_the_list_pages(client, admin_headers) -> None:
    ids = [create(client, admin_headers)["id"] for _ in range(3)]
    first = client.get(f"{WEBHOOKS}?limit=2", headers=admin_headers).get_json()
    assert [w["id"] for w in first["items"]] == ids[:2]
    rest = client.get(
        f"{WEBHOOKS}?limit=2&cursor={first['next_cursor']}", headers=admin_headers
    ).get_json()
    assert [w["id"] for w in rest["items"]] == ids[2:] and rest["next_cursor"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "url"),
        ({"url": "ftp://93.184.216.34/"}, "url"),
        ({"url": "http://"}, "url"),
        ({"url": "https://93.184.216.34/" + "a" * 2048}, "url"),
        ({"url": "http://93.184.216.34/a b"}, "url"),
        ({"url": 5}, "url"),
        ({"url": PUBLIC, "events": []}, "events"),
        ({"url": PUBLIC, "events": ["ticket.exploded"]}, "events.0"),
        ({"url": PUBLIC, "events": "ticket.created"}, "events"),
        ({"url": PUBLIC, "secret": "x" * 15}, "secret"),
        ({"url": PUBLIC, "secret": "x" * 257}, "secret"),
        ({"url": PUBLIC, "active": "yes"}, "active"),
        ({"url": PUBLIC, "colour": "blue"}, "colour"),
    ],
)
def test_a_bad_body_is_a_400_naming_the_field(client, admin_headers, app, body, field) -> None:
    error = assert_error(client.post(WEBHOOKS, json=body, headers=admin_headers), 400)
    assert error["code"] == "validation_error"
    assert list(error["fields"]) == [field]
    assert rows(app, Webhook) == []


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://127.1/hook",
        "http://2130706433/hook",
        "http://10.1.2.3/hook",
        "http://172.16.0.1/hook",
        "http://192.168.1.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/hook",
        "http://0.0.0.0/hook",
        "http://224.0.0.1/hook",
        "http://255.255.255.255/hook",
        "http://[::1]/hook",
        "http://[::]/hook",
        "http://[fd00::1]/hook",
        "http://[fe80::1]/hook",
        "http://[ff02::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[::ffff:10.0.0.1]/hook",
        "http://[2002:7f00:1::]/hook",
        "http://localhost:8080/hook",
        "http://LOCALHOST./hook",
        "http://user:pass@93.184.216.34/hook",
        "http://93.184.216.34/hook#part",
        "http://93.184.216.34:0/hook",
        "http://-bad-.example/hook",
        "http://no-such-host.invalid/hook",
    ],
)
def test_urls_reaching_private_places_are_refused(client, admin_headers, app, url) -> None:
    error = assert_error(client.post(WEBHOOKS, json={"url": url}, headers=admin_headers), 400)
    assert error["code"] == "validation_error"
    assert list(error["fields"]) == ["url"], error
    assert rows(app, Webhook) == []


def test_private_urls_are_allowed_when_configured(private_client, private_admin) -> None:
    for url in ("http://127.0.0.1:9000/hook", "http://localhost/hook", "http://[::1]/"):
        assert create(private_client, private_admin, url=url)["url"] == url


def test_a_host_name_is_checked_by_every_address_it_resolves_to(monkeypatch) -> None:
    answers = {"good.test": ["93.184.216.34"], "mixed.test": ["93.184.216.34", "10.0.0.7"]}

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    target = outbound.check("https://good.test/x?y=1", allow_private=False)
    assert (target.host, target.port, target.path) == ("good.test", 443, "/x?y=1")
    assert target.addresses == ("93.184.216.34",)
    with pytest.raises(outbound.Refused, match=r"mixed.test resolves to 10.0.0.7, a private"):
        outbound.check("https://mixed.test/", allow_private=False)
    with pytest.raises(outbound.Refused, match="cannot resolve"):
        outbound.check("https://gone.test/", allow_private=False)


def test_a_hung_resolver_costs_a_bounded_wait(monkeypatch) -> None:
    def hang(*args: Any, **kwargs: Any) -> list[Any]:
        time.sleep(3)
        return []

    monkeypatch.setattr(socket, "getaddrinfo", hang)
    started = time.monotonic()
    with pytest.raises(outbound.Refused, match="did not resolve within 0.3s"):
        outbound.check("https://slow.test/", allow_private=False, timeout=0.3)
    assert time.monotonic() - started < 1.0


def test_a_webhook_is_changed_and_its_new_secret_shown_once(client, admin_headers, app) -> None:
    created = create(client, admin_headers, secret=SECRET)
    path = f"{WEBHOOKS}{created['id']}/"
    changed = client.patch(
        path,
        json={"url": "https://93.184.216.35/", "events": ["ticket.sold"], "active": False},
        headers=admin_headers,
    )
    assert changed.status_code == 200
    body = changed.get_json()
    assert set(body) == WEBHOOK_KEYS  # no secret: none was set
    assert (body["url"], body["events"], body["active"]) == (
        "https://93.184.216.35/",
        ["ticket.sold"],
        False,
    )
    assert body["updated_at"] > created["updated_at"]

    given = client.patch(path, json={"secret": "another-secret-0123"}, headers=admin_headers)
    assert given.get_json()["secret"] == "another-secret-0123"
    fresh = client.patch(path, json={"regenerate_secret": True}, headers=admin_headers).get_json()
    assert len(fresh["secret"]) >= 43
    (stored,) = rows(app, Webhook)
    assert stored.secret == fresh["secret"]
    assert "secret" not in client.get(path, headers=admin_headers).get_json()

    for refused, field in [
        ({}, "body"),
        ({"secret": "another-secret-0123", "regenerate_secret": True}, "secret"),
        ({"url": "http://127.0.0.1/"}, "url"),
        ({"url": "http://localhost/"}, "url"),
        ({"events": []}, "events"),
    ]:
        error = assert_error(client.patch(path, json=refused, headers=admin_headers), 400)
        assert list(error["fields"]) == [field]
    assert rows(app, Webhook) == [stored]  # refused: nothing changed
    assert_error(client.patch(f"{WEBHOOKS}999/", json={"active": True}, headers=admin_headers), 404)
    missing = client.patch(
        f"{WEBHOOKS}999/", json={"url": "http://127.0.0.1/"}, headers=admin_headers
    )
    assert_error(missing, 404)  # 404 first: the URL of nothing is not looked at


def test_deleting_a_webhook_deletes_its_deliveries(client, admin_headers, app, factory) -> None:
    kept, gone = create(client, admin_headers), create(client, admin_headers)
    factory.tickets(2)
    fan_out(engine(app))
    assert len(rows(app)) == 4
    response = client.delete(f"{WEBHOOKS}{gone['id']}", headers=admin_headers)
    assert response.status_code == 204
    assert {r.webhook_id for r in rows(app)} == {kept["id"]}
    assert_error(client.get(f"{WEBHOOKS}{gone['id']}/", headers=admin_headers), 404)
    assert_error(client.delete(f"{WEBHOOKS}{gone['id']}/", headers=admin_headers), 404)


def test_webhooks_are_for_admins_only(client, factory) -> None:
    agent = factory.headers(factory.user("alice"))
    for method, path in [
        ("post", WEBHOOKS),
        ("get", WEBHOOKS),
        ("get", f"{WEBHOOKS}1/"),
        ("patch", f"{WEBHOOKS}1/"),
        ("delete", f"{WEBHOOKS}1/"),
        ("get", f"{WEBHOOKS}1/deliveries/"),
    ]:
        assert_error(getattr(client, method)(path, json={"url": PUBLIC}), 401)
        assert_error(getattr(client, method)(path, json={"url": PUBLIC}, headers=agent), 403)


# -- fan-out -----------------------------------------------------------------------
def test_each_event_goes_to_each_active_webhook_that_wants_it(
    client, admin_headers, app, factory
) -> None:
    every = create(client, admin_headers)["id"]
    sold_only = create(client, admin_headers, events=["ticket.created"])["id"]
    paused = create(client, admin_headers, active=False)["id"]
    ticket = factory.tickets(1)[0]
    client.patch(f"/api/admin/tickets/{ticket}/", json={"title": "t2"}, headers=admin_headers)
    created, updated = event_ids(app)
    done = fan_out(engine(app))
    assert (done.events, done.deliveries) == (2, 3)
    assert set(deliveries(app)) == {(every, created), (every, updated), (sold_only, created)}
    assert paused not in {w for w, _ in deliveries(app)}
    for row in rows(app):
        assert (row.status, row.attempts, row.last_error) == ("pending", 0, None)
    assert fan_out(engine(app)).events == 0  # nothing twice


def test_a_new_webhook_gets_what_happens_after_it(client, admin_headers, app, factory) -> None:
    factory.tickets(2)  # before any webhook: never sent
    hook = create(client, admin_headers)["id"]
    factory.tickets(1)
    fan_out(engine(app))
    assert [e for _, e in deliveries(app)] == event_ids(app)[2:]
    assert {w for w, _ in deliveries(app)} == {hook}


def test_the_fan_out_is_exactly_once_across_a_crash_before_its_commit(
    client, admin_headers, app, factory, monkeypatch
) -> None:
    create(client, admin_headers)
    factory.tickets(3)

    def crash(name: str) -> None:
        if name == "webhooks.before_fanout_commit":
            raise KeyboardInterrupt("killed between the read and the commit")

    monkeypatch.setattr(webhook_delivery, "fault_point", crash)
    with pytest.raises(KeyboardInterrupt):
        fan_out(engine(app))
    assert rows(app) == []
    (position,) = rows(app, FeedPosition)
    assert position.after == 0  # it never moved

    monkeypatch.undo()
    assert fan_out(engine(app)).deliveries == 3
    assert fan_out(engine(app)).deliveries == 0
    assert sorted(e for _, e in deliveries(app)) == event_ids(app)
    (position,) = rows(app, FeedPosition)
    assert position.after == event_ids(app)[-1]


def test_two_fan_outs_of_the_same_events_count_once(
    client, admin_headers, app, factory, monkeypatch
) -> None:
    create(client, admin_headers)
    factory.tickets(3)
    read = webhook_delivery.feed.read
    raced = []

    def read_then_lose_the_race(*args: Any, **kwargs: Any) -> Any:
        result = read(*args, **kwargs)
        if not raced:  # another process fans the same events out first
            raced.append(True)
            assert webhook_delivery._fan_out_batch(engine(app), 100)[1] == 3
        return result

    monkeypatch.setattr(webhook_delivery.feed, "read", read_then_lose_the_race)
    assert fan_out(engine(app)).deliveries == 0  # the loser writes nothing
    assert len(rows(app)) == 3


def test_the_fan_out_waits_for_an_event_still_being_committed(
    client, admin_headers, app, factory
) -> None:
    create(client, admin_headers)
    first = factory.tickets(1)
    with engine(app).connect() as slow:
        # A change in flight: its event id is drawn, its commit comes later.
        slow.execute(sa.insert(TicketEvent).values(ticket_id=first[0], kind="updated", at=utcnow()))
        factory.tickets(1)  # a later event commits first
        fan_out(engine(app))
        assert [e for _, e in deliveries(app)] == event_ids(app)[:1]  # stopped at the gap
        slow.commit()
    fan_out(engine(app))
    assert sorted(e for _, e in deliveries(app)) == event_ids(app)  # nothing skipped


# -- sending -----------------------------------------------------------------------
def test_a_delivery_is_the_event_signed(
    private_client, private_admin, private_app, endpoint
) -> None:
    hook = create(private_client, private_admin, url=endpoint.url, secret=SECRET)["id"]
    ticket = Factory(private_app).tickets(1)[0]
    fan_out(engine(private_app))
    sent = send_all(private_app, hook)
    assert sent.outcomes == {"delivered": 1}

    [(path, headers, body)] = endpoint.requests
    assert path == "/hook"
    with private_app.app_context():
        event = db.session.scalars(sa.select(TicketEvent)).one()
        assert json.loads(body) == EventMessageSchema().dump(events.message(event))
    assert json.loads(body)["ticket"]["id"] == ticket
    assert headers["Content-Type"] == "application/json"
    assert headers["X-TQ-Event"] == "ticket.created"
    assert headers["X-TQ-Delivery"] == str(event.id)
    timestamp = headers["X-TQ-Timestamp"]
    assert abs(int(timestamp) - time.time()) < 5
    assert headers["X-TQ-Signature"] == webhook_delivery.signature(SECRET, int(timestamp), body)
    assert receiver.verify(SECRET, timestamp, body, headers["X-TQ-Signature"], 300)
    assert not receiver.verify(
        "another-secret-0123", timestamp, body, headers["X-TQ-Signature"], 300
    )
    assert not receiver.verify(SECRET, timestamp, body + b" ", headers["X-TQ-Signature"], 300)
    stale = str(int(timestamp) - 600)
    assert not receiver.verify(
        SECRET, stale, body, webhook_delivery.signature(SECRET, int(stale), body), 300
    )

    (row,) = rows(private_app)
    assert (row.status, row.attempts, row.last_status_code, row.last_error) == (
        "delivered",
        1,
        204,
        None,
    )
    assert row.delivered_at is not None and row.next_attempt_at is None


def test_the_signature_format() -> None:
    """sha256= and the hex HMAC-SHA256 of "<timestamp>.<raw body>", keyed with the secret."""
    expected = hmac.new(b"key", b'1700000000.{"id":1}', hashlib.sha256).hexdigest()
    assert webhook_delivery.signature("key", 1700000000, b'{"id":1}') == f"sha256={expected}"
    headers = webhook_delivery.headers("key", 12, "ticket.sold", b'{"id":1}', 1700000000)
    assert headers == {
        "X-TQ-Event": "ticket.sold",
        "X-TQ-Delivery": "12",
        "X-TQ-Timestamp": "1700000000",
        "X-TQ-Signature": f"sha256={expected}",
    }


def test_a_failing_endpoint_is_retried_with_backoff_then_failed(
    private_client, private_admin, private_app
) -> None:
    failing = Endpoint(status=503)
    try:
        hook = create(private_client, private_admin, url=failing.url)["id"]
        Factory(private_app).tickets(1)
        fan_out(engine(private_app))
        before = {o: WEBHOOK_DELIVERIES.labels(o)._value.get() for o in ("retried", "failed")}

        started = utcnow()
        assert send_all(private_app, hook).outcomes == {"retried": 1}
        (row,) = rows(private_app)
        assert (row.status, row.attempts, row.last_status_code) == ("pending", 1, 503)
        assert row.last_error == "answered 503: no"
        wait = (row.next_attempt_at - started).total_seconds()
        assert 0.04 - 0.01 <= wait <= 0.06 * 1.2 + 0.5  # base × 2^0, with jitter

        assert send_all(private_app, hook).outcomes == {}  # not due yet: nothing sent
        time.sleep(0.3)
        assert send_all(private_app, hook).outcomes == {"retried": 1}
        make_due(private_app)
        assert send_all(private_app, hook).outcomes == {"failed": 1}  # the 3rd attempt
        (row,) = rows(private_app)
        assert (row.status, row.attempts, row.next_attempt_at) == ("failed", 3, None)
        assert len(failing.requests) == 3
        make_due(private_app)
        assert send_all(private_app, hook).outcomes == {}  # failed is final
        after = {o: WEBHOOK_DELIVERIES.labels(o)._value.get() for o in ("retried", "failed")}
        assert after == {"retried": before["retried"] + 2, "failed": before["failed"] + 1}
    finally:
        failing.close()


def test_the_backoff_schedule() -> None:
    defaults = Settings()
    nominal = schedule(defaults)
    assert len(nominal) == defaults.max_attempts - 1 == 11
    assert nominal[:3] == [40.0, 80.0, 160.0]
    assert all(later == 2 * earlier for earlier, later in zip(nominal, nominal[1:], strict=False))
    assert 20 * 3600 < sum(nominal) < 26 * 3600  # about a day from the first attempt to the last
    for failed in range(1, 12):
        for _ in range(20):
            delay = retry_delay(failed, defaults)
            assert 0.8 * nominal[failed - 1] <= delay <= 1.2 * nominal[failed - 1]
    assert retry_delay(13, defaults, 1.0) == 86_400  # capped: WEBHOOK_RETRY_MAX_SECONDS
    assert retry_delay(3, Settings(retry_base=0.1, retry_max=0.3), 1.0) == 0.3


def test_a_slow_endpoint_is_given_up_on_at_the_timeout(
    private_client, private_admin, private_app
) -> None:
    slow = Endpoint(delay=3)
    try:
        hook = create(private_client, private_admin, url=slow.url)["id"]
        Factory(private_app).tickets(1)
        fan_out(engine(private_app))
        started = time.monotonic()
        send_all(private_app, hook, Settings(timeout=0.5, retry_base=60, allow_private=True))
        assert time.monotonic() - started < 1.5
        (row,) = rows(private_app)
        assert (row.status, row.attempts, row.last_status_code) == ("pending", 1, None)
        assert row.last_error == "no answer within 0.5s"
    finally:
        slow.close()


def test_a_2xx_in_time_delivers_however_slow_the_body(
    private_client, private_admin, private_app
) -> None:
    trickling = Endpoint(status=200, trickle=3)
    try:
        hook = create(private_client, private_admin, url=trickling.url)["id"]
        Factory(private_app).tickets(1)
        fan_out(engine(private_app))
        started = time.monotonic()
        sent = send_all(private_app, hook, Settings(timeout=1.0, allow_private=True))
        assert sent.outcomes == {"delivered": 1}
        assert time.monotonic() - started < 1.0
    finally:
        trickling.close()


def test_redirects_are_not_followed(private_client, private_admin, private_app) -> None:
    target = Endpoint()
    moved = Endpoint(status=307, location=target.url)
    try:
        hook = create(private_client, private_admin, url=moved.url)["id"]
        Factory(private_app).tickets(1)
        fan_out(engine(private_app))
        send_all(private_app, hook)
        (row,) = rows(private_app)
        assert (row.status, row.last_status_code) == ("pending", 307)
        assert row.last_error.startswith("answered 307 (redirects are not followed)")
        assert len(moved.requests) == 1 and target.requests == []
    finally:
        target.close()
        moved.close()


def test_the_url_is_checked_again_at_each_attempt(
    private_client, private_admin, private_app, endpoint
) -> None:
    """Saved while private hosts were allowed (or resolving elsewhere then): the
    attempt refuses it, records why, and sends nothing."""
    hook = create(private_client, private_admin, url=endpoint.url)["id"]
    Factory(private_app).tickets(1)
    fan_out(engine(private_app))
    guarded = Settings(timeout=2.0, max_attempts=3, retry_base=60, allow_private=False)
    assert send_all(private_app, hook, guarded).outcomes == {"retried": 1}
    (row,) = rows(private_app)
    assert row.last_error == "refused: 127.0.0.1 is a loopback address"
    assert row.last_status_code is None
    assert endpoint.requests == []


def test_a_paused_webhooks_deliveries_wait_and_resume(
    private_client, private_admin, private_app, endpoint
) -> None:
    hook = create(private_client, private_admin, url=endpoint.url)["id"]
    factory = Factory(private_app)
    factory.tickets(2)
    fan_out(engine(private_app))
    path = f"{WEBHOOKS}{hook}/"
    private_client.patch(path, json={"active": False}, headers=private_admin)
    factory.tickets(1)  # while paused: never fanned out to it
    fan_out(engine(private_app))
    assert due_webhooks(engine(private_app), exclude=[], limit=10) == []
    assert claim(engine(private_app), hook, FAST) is None
    assert endpoint.requests == []
    assert [(r.status, r.attempts) for r in rows(private_app)] == [("pending", 0)] * 2

    private_client.patch(path, json={"active": True}, headers=private_admin)
    assert due_webhooks(engine(private_app), exclude=[], limit=10) == [hook]
    assert send_all(private_app, hook).outcomes == {"delivered": 2}
    assert [json.loads(b)["id"] for _, _, b in endpoint.requests] == event_ids(private_app)[:2]


def test_one_batch_per_endpoint_at_a_time(private_client, private_admin, private_app) -> None:
    hook = create(private_client, private_admin, url="http://127.0.0.1:9/")["id"]
    Factory(private_app).tickets(1)
    fan_out(engine(private_app))
    token = claim(engine(private_app), hook, FAST)
    assert token is not None
    assert claim(engine(private_app), hook, FAST) is None  # held
    assert due_webhooks(engine(private_app), exclude=[], limit=10) == []
    release(engine(private_app), hook, token)
    again = claim(engine(private_app), hook, FAST)
    assert again is not None

    # A claim whose holder died lapses: another sender takes it, and the first,
    # had it lived on, stops at its next attempt.
    with private_app.app_context():
        db.session.execute(sa.update(Webhook).values(sender_until=utcnow() - timedelta(seconds=1)))
        db.session.commit()
    taken = claim(engine(private_app), hook, FAST)
    assert taken is not None
    sent = send_batch(engine(private_app), hook, again, FAST)
    assert sent.lost_claim and sent.outcomes == {}
    (row,) = rows(private_app)
    assert row.attempts == 0


def test_the_loop_never_waits_on_a_slow_endpoint(
    private_client, private_admin, private_app
) -> None:
    slow, quick = Endpoint(delay=2.5), Endpoint()
    dispatcher = Dispatcher(
        engine(private_app), Settings(timeout=2.0, retry_base=30, allow_private=True), 4
    )
    try:
        create(private_client, private_admin, url=slow.url)
        create(private_client, private_admin, url=quick.url)
        factory = Factory(private_app)
        factory.tickets(3)
        started = time.monotonic()
        dispatcher.step()
        assert time.monotonic() - started < 0.5  # claims and hands over, sends nothing itself
        deadline = time.monotonic() + 1.0
        while len(quick.requests) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(quick.requests) == 3, "the quick endpoint waited on the slow one"
        assert len(slow.requests) == 1  # the slow one is still on its first
    finally:
        dispatcher.close()
        slow.close()
        quick.close()
    assert len(slow.requests) == 1  # close let that attempt end, started no other


# -- what was sent -----------------------------------------------------------------
def test_the_deliveries_view(private_client, private_admin, private_app) -> None:
    failing = Endpoint(status=500)
    try:
        hook = create(private_client, private_admin, url=failing.url)["id"]
        Factory(private_app).tickets(3)
        fan_out(engine(private_app))
        first, second, third = event_ids(private_app)
        with private_app.app_context():
            db.session.execute(
                sa.update(WebhookDelivery)
                .where(WebhookDelivery.event_id == first)
                .values(
                    status="delivered",
                    attempts=1,
                    last_status_code=200,
                    delivered_at=utcnow(),
                    next_attempt_at=None,
                )
            )
            db.session.execute(
                sa.update(WebhookDelivery)
                .where(WebhookDelivery.event_id == third)
                .values(next_attempt_at=utcnow() + timedelta(hours=1))
            )
            db.session.commit()
        send_all(private_app, hook)  # the second: answered 500
        path = f"{WEBHOOKS}{hook}/deliveries"
        page = private_client.get(f"{path}/?limit=2", headers=private_admin).get_json()
        assert [d["event_id"] for d in page["items"]] == [third, second]  # newest first
        assert all(set(d) == DELIVERY_KEYS for d in page["items"])
        later, failed = page["items"]
        assert later == {**later, "type": "ticket.created", "attempts": 0, "status": "pending"}
        assert later["next_attempt_at"] is not None and later["last_error"] is None
        assert (failed["attempts"], failed["last_status_code"]) == (1, 500)
        assert failed["last_error"] == "answered 500: no" and failed["delivered_at"] is None
        rest = private_client.get(
            f"{path}?limit=2&cursor={page['next_cursor']}", headers=private_admin
        ).get_json()
        assert [d["event_id"] for d in rest["items"]] == [first] and rest["next_cursor"] is None
        assert rest["items"][0]["status"] == "delivered"
        assert rest["items"][0]["next_attempt_at"] is None
        only = private_client.get(f"{path}?status=delivered", headers=private_admin).get_json()
        assert [d["event_id"] for d in only["items"]] == [first]
        assert_error(private_client.get(f"{path}?status=lost", headers=private_admin), 400)
        assert_error(private_client.get(f"{WEBHOOKS}999/deliveries/", headers=private_admin), 404)
    finally:
        failing.close()


def test_metrics_show_each_webhooks_oldest_pending_event(
    client, admin_headers, app, factory
) -> None:
    waiting = create(client, admin_headers)["id"]
    idle = create(client, admin_headers, events=["ticket.sold"])["id"]
    create(client, admin_headers, active=False)
    factory.tickets(1)
    fan_out(engine(app))
    time.sleep(0.2)
    text = client.get("/metrics", headers=METRICS_AUTH).get_data(as_text=True)
    gauges = {
        line.split('"')[1]: float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("tq_webhook_oldest_pending_seconds{")
    }
    assert set(gauges) == {str(waiting), str(idle)}  # active webhooks only
    assert gauges[str(idle)] == 0.0
    assert 0.2 <= gauges[str(waiting)] < 30


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("WEBHOOK_TIMEOUT_SECONDS", "0"),
        ("WEBHOOK_TIMEOUT_SECONDS", "61"),
        ("WEBHOOK_MAX_ATTEMPTS", "0"),
        ("WEBHOOK_MAX_ATTEMPTS", "many"),
        ("WEBHOOK_RETRY_BASE_SECONDS", "-1"),
        ("WEBHOOK_RETRY_MAX_SECONDS", "0"),
        ("WEBHOOK_INTERVAL_SECONDS", "soon"),
        ("WEBHOOK_CONCURRENCY", "1000"),
    ],
)
def test_bad_webhook_settings_are_refused(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        WorkerConfig.from_env({variable: value})


def test_the_workers_refuse_a_bad_webhook_setting() -> None:
    from test_configuration import assert_refused, run

    assert_refused(run(["-m", "workers"], WEBHOOK_MAX_ATTEMPTS="lots"), "WEBHOOK_MAX_ATTEMPTS")
    assert_refused(run(["-m", "workers"], WEBHOOK_ALLOW_PRIVATE="maybe"), "WEBHOOK_ALLOW_PRIVATE")


def test_the_sample_receiver_checks_and_deduplicates(tmp_path: Path) -> None:
    import subprocess
    import sys

    from live import free_port, stop, wait_for

    port = free_port()
    log = tmp_path / "received.jsonl"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "webhook_receiver.py"), "--port", str(port)]
        + ["--secret", SECRET, "--log", str(log)],
        stdout=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for(lambda: _listening(port), "the receiver to listen", 10)
        body = b'{"id": 7, "type": "ticket.sold"}'

        def send(secret: str = SECRET, at: int | None = None) -> int | None:
            stamp = int(time.time()) if at is None else at
            headers = webhook_delivery.headers(secret, 7, "ticket.sold", body, stamp)
            return outbound.post(url, body, headers, timeout=2, allow_private=True).status

        assert send() == 204
        assert send() == 204  # again: answered, not processed twice
        assert send(secret="not-the-secret-at-all") == 401
        assert send(at=int(time.time()) - 3600) == 401
        outcomes = [json.loads(line)["outcome"] for line in log.read_text().splitlines()]
        assert outcomes == ["accepted", "duplicate", "refused", "refused"]
    finally:
        stop(proc, timeout=5)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
