"""Webhooks with real processes: every event is delivered at least once through crashes.

``python -m workers`` sends to three copies of scripts/webhook_receiver.py: a
flaky one (30% of requests answered 500) that is SIGKILLed and restarted once,
a slow one (10 s before it answers, past the timeout) and a steady one. The
workers are SIGKILLed while the slow endpoint holds a request, and restarted.
Then every event reached the flaky and the steady endpoints at least once,
every request carried a valid signature, nothing reached a paused or a
deleted webhook, and the steady endpoint never waited on the slow one.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from conftest import Factory, fresh_app, service_env
from flask import Flask
from flask.testing import FlaskClient
from live import ROOT, Workers, free_port, stop, wait_for

from service.domain.webhook_delivery import fan_out
from service.extensions import db
from service.models import TicketEvent, WebhookDelivery

pytestmark = pytest.mark.slow

SECRET = "live-test-secret-0123456789"
TIMEOUT = 3.0  # WEBHOOK_TIMEOUT_SECONDS: the slow endpoint's 10 s is well past it
WORKERS_ENV = {
    "RELAY_INTERVAL_SECONDS": "0.5",
    "REAPER_INTERVAL_SECONDS": "0.5",
    "RECONCILE_INTERVAL_SECONDS": "5",
    "WORKER_MAX_BACKOFF_SECONDS": "0.5",
    "WEBHOOK_INTERVAL_SECONDS": "0.1",
    "WEBHOOK_RETRY_BASE_SECONDS": "0.1",
    "WEBHOOK_RETRY_MAX_SECONDS": "1",
    "WEBHOOK_TIMEOUT_SECONDS": str(TIMEOUT),
    "WEBHOOK_MAX_ATTEMPTS": "100",
    "WEBHOOK_ALLOW_PRIVATE": "true",
    "LOG_FORMAT": "text",
    "LOG_LEVEL": "INFO",
}


class Receiver:
    """scripts/webhook_receiver.py on a port of its own, logging to a file."""

    def __init__(self, tmp_path: Path, name: str, *options: str) -> None:
        self.port = free_port()
        self.log = tmp_path / f"{name}.jsonl"
        self.options = options
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "webhook_receiver.py")]
            + ["--port", str(self.port), "--secret", SECRET, "--log", str(self.log)]
            + list(self.options),
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().startswith(b"listening")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.close()

    def close(self) -> None:
        if self.proc is not None:
            stop(self.proc, timeout=5)
            if self.proc.stdout is not None:
                self.proc.stdout.close()

    def entries(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]

    def accepted(self, path: str = "/") -> dict[int, float]:
        """Event id -> when it was first accepted, of requests to ``path``."""
        return {
            e["id"]: e["at"]
            for e in self.entries()
            if e["outcome"] == "accepted" and e["path"] == path
        }


@pytest.fixture
def private_app(_schema: None) -> Iterator[Flask]:
    with fresh_app(WEBHOOK_ALLOW_PRIVATE="true") as app:
        yield app


@pytest.fixture
def receivers(tmp_path: Path) -> Iterator[tuple[Receiver, Receiver, Receiver]]:
    """A flaky, a slow and a steady receiver, started; stopped after the test."""
    made = (
        Receiver(tmp_path, "flaky", "--fail-rate", "0.3"),
        Receiver(tmp_path, "slow", "--delay", "10"),
        Receiver(tmp_path, "steady"),
    )
    try:
        for receiver in made:
            receiver.start()
        yield made
    finally:
        for receiver in made:
            receiver.close()


class Churn:
    """Changes of every kind through the API: each one an event."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.client: FlaskClient = app.test_client()
        factory = Factory(app)
        self.admin = factory.headers(factory.user("admin", role="admin"))
        self.agent = factory.headers(factory.user("alice", capacity=3))
        self.rounds = 0

    def call(self, method: str, path: str, status: int, **kwargs: Any) -> Any:
        headers = self.agent if path.startswith("/api/agent/") else self.admin
        response = getattr(self.client, method)(path, headers=headers, **kwargs)
        assert response.status_code == status, response.get_data(as_text=True)
        return response.get_json() if response.data else None

    def round(self) -> None:
        """Three tickets; one edited, the agent topped up, one sold, one released,
        one deleted: created, updated, assigned, sold, released, deleted."""
        self.rounds += 1
        ids = [
            self.call("post", "/api/admin/tickets/", 201, json={"title": f"t{self.rounds}.{i}"})[
                "id"
            ]
            for i in range(3)
        ]
        self.call("patch", f"/api/admin/tickets/{ids[0]}/", 200, json={"priority": "high"})
        held = [t["id"] for t in self.call("post", "/api/agent/tickets/assign/", 200)["tickets"]]
        self.call("post", f"/api/agent/tickets/sell/{held[0]}/", 200)
        self.call("post", f"/api/admin/tickets/{held[1]}/release/", 200)
        self.call("delete", f"/api/admin/tickets/{held[1]}/", 204)


def events_at(app: Flask) -> dict[int, datetime]:
    with app.app_context():
        found = dict(db.session.execute(sa.select(TicketEvent.id, TicketEvent.at)).tuples().all())
        db.session.rollback()
        return found


def all_delivered(app: Flask, webhook_ids: list[int]) -> bool:
    """Whether every event so far is delivered to each of the webhooks (all made
    before the first event)."""
    with app.app_context():
        events = db.session.scalar(sa.select(sa.func.count()).select_from(TicketEvent))
        delivered = db.session.execute(
            sa.select(WebhookDelivery.webhook_id, sa.func.count())
            .where(WebhookDelivery.status == "delivered")
            .group_by(WebhookDelivery.webhook_id)
        ).all()
        db.session.rollback()
    counts = dict(delivered)
    return all(counts.get(webhook_id) == events for webhook_id in webhook_ids)


def test_every_event_is_delivered_at_least_once_through_crashes(
    tmp_path: Path, private_app: Flask, receivers: tuple[Receiver, Receiver, Receiver]
) -> None:
    started = time.monotonic()
    flaky, slow, steady = receivers
    churn = Churn(private_app)
    hooks = {
        name: churn.call("post", "/api/admin/webhooks/", 201, json={"url": url, "secret": SECRET})[
            "id"
        ]
        for name, url in {
            "flaky": f"{flaky.url}/",
            "slow": f"{slow.url}/",
            "steady": f"{steady.url}/",
            "paused": f"{steady.url}/paused",
            "gone": f"{steady.url}/gone",
        }.items()
    }
    # Deliveries wait for the paused and the deleted webhook, then they are disabled.
    churn.round()
    with private_app.app_context():
        fan_out(db.engine)
    churn.call("patch", f"/api/admin/webhooks/{hooks['paused']}/", 200, json={"active": False})
    churn.call("delete", f"/api/admin/webhooks/{hooks['gone']}/", 204)

    workers: Workers | None = None
    env = service_env(**WORKERS_ENV)

    def caught_up() -> bool:
        return all_delivered(private_app, [hooks["flaky"], hooks["steady"]])

    try:
        workers = Workers(tmp_path / "workers-1.log", env)
        wait_for(lambda: flaky.accepted(), "the first deliveries", 30)
        up_since = time.time()
        for _ in range(3):
            churn.round()
            time.sleep(0.3)

        # The flaky receiver dies (what it logged stays) and comes back on its port.
        flaky.kill()
        churn.round()
        time.sleep(0.5)
        flaky.start()
        churn.round()

        # The workers die while the slow endpoint holds a request (mid-delivery).
        seen = len(slow.entries())
        wait_for(lambda: len(slow.entries()) > seen, "a request to the slow endpoint", 15)
        workers.stop(signal.SIGKILL)
        down_at = time.time()
        assert "Traceback" not in workers.log, workers.log
        churn.round()  # while no worker runs
        metrics_port = free_port()
        workers = Workers(
            tmp_path / "workers-2.log", {**env, "WORKER_METRICS_PORT": str(metrics_port)}
        )
        churn.round()
        wait_for(caught_up, "every delivery to the flaky and the steady endpoints", 45)

        # Caught up. Once the slow endpoint holds a request again (its claim lapsed with
        # the dead process): more changes, measured.
        tried = len(slow.entries())
        wait_for(lambda: len(slow.entries()) > tried, "the slow endpoint's next request", 20)
        measured_from = time.time()
        for _ in range(3):
            churn.round()
            time.sleep(0.3)
        wait_for(caught_up, "the new deliveries to the flaky and the steady endpoints", 30)
        scraped = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        counts = {
            line.split('"')[1]: float(line.split()[-1])
            for line in scraped.splitlines()
            if line.startswith("tq_webhook_deliveries_total{")
        }
        assert counts["delivered"] > 0 and counts["retried"] > 0, counts
        assert "Traceback" not in workers.log, workers.log
    finally:
        if workers is not None:
            workers.stop()

    # Every event since the webhooks were made, at least once to each live endpoint.
    happened = events_at(private_app)
    assert len(happened) >= 50
    for receiver in (flaky, steady):
        assert set(receiver.accepted()) == set(happened), receiver.log
    # Every request carried a valid, fresh signature.
    for receiver in receivers:
        assert all(e["outcome"] != "refused" for e in receiver.entries())
    # Nothing for the paused or the deleted webhook, though deliveries waited for both.
    assert not [e for e in steady.entries() if e["path"] != "/"]
    # The crashes cost duplicates, which the receiver recognised, and the flaky one failed.
    outcomes = [e["outcome"] for e in flaky.entries()]
    assert outcomes.count("failed") > 0
    duplicates = sum(e["outcome"] == "duplicate" for r in receivers for e in r.entries())

    # The steady endpoint never waited on the slow one: while the workers were up,
    # each event reached it well within one of the slow endpoint's attempts.
    first_seen = steady.accepted()
    latencies = [
        first_seen[event_id] - at.timestamp()
        for event_id, at in happened.items()
        if up_since <= at.timestamp() < down_at - TIMEOUT or at.timestamp() >= measured_from
    ]
    assert latencies
    print(
        f"\nevents {len(happened)}, duplicates {duplicates}, flaky failures"
        f" {outcomes.count('failed')}, steady latency max {max(latencies):.2f}s"
        f" over {len(latencies)} events, slow requests {len(slow.entries())},"
        f" test {time.monotonic() - started:.1f}s"
    )
    assert max(latencies) < TIMEOUT - 0.5


def test_two_worker_processes_send_each_event_once(tmp_path: Path, private_app: Flask) -> None:
    """Side by side, two workers fan each event out once and never send one endpoint's
    delivery twice: the steady receiver sees no duplicate."""
    steady = Receiver(tmp_path, "steady")
    steady.start()
    churn = Churn(private_app)
    hook = churn.call(
        "post", "/api/admin/webhooks/", 201, json={"url": f"{steady.url}/", "secret": SECRET}
    )["id"]
    env = service_env(**WORKERS_ENV)
    one = Workers(tmp_path / "one.log", env)
    two = Workers(tmp_path / "two.log", env)
    try:
        for _ in range(6):
            churn.round()
            time.sleep(0.2)
        wait_for(lambda: all_delivered(private_app, [hook]), "every delivery", 30)
        assert "Traceback" not in one.log + two.log
    finally:
        one.stop()
        two.stop()
        steady.close()
    happened = events_at(private_app)
    assert set(steady.accepted()) == set(happened)
    assert [e["outcome"] for e in steady.entries()] == ["accepted"] * len(happened)
    with private_app.app_context():
        attempts = db.session.scalars(sa.select(WebhookDelivery.attempts)).all()
        db.session.rollback()
    assert sorted(attempts) == [1] * len(happened)
