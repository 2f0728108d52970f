"""Rebuilding Redis, and losing it, while 8 client processes fetch and sell.

A gunicorn server, client processes and (in the wipe test) the workers are
all real processes on the test's PostgreSQL and Redis. Afterwards the audit
must pass, no ticket may ever have been shown to two agents, and the next
fetch must hand out the oldest tickets again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from conftest import Factory, service_env
from flask import Flask
from live import ROOT, live_server, wait_for
from live import stop as stop_process

from service.domain.audit import audit
from service.domain.rebuild import rebuild
from service.extensions import db
from service.models import Ticket
from service.state import ticket_queue

pytestmark = pytest.mark.slow

CLIENTS = 8
AGENTS_PER_CLIENT = 2
CAPACITY = 5
LOAD_SECONDS = 8.0


@contextmanager
def clients(
    url: str, factory: Factory, tmp_path: Path, seconds: float = LOAD_SECONDS
) -> Iterator[Callable[[], dict[str, Any]]]:
    """Start CLIENTS processes for ``seconds``; yield a function that joins them and
    returns their merged answers."""
    agents = factory.agents(CLIENTS * AGENTS_PER_CLIENT, capacity=CAPACITY)
    until = time.time() + 3.0 + seconds  # the processes need a moment to start
    procs = []
    outs = []
    for i in range(CLIENTS):
        mine = agents[i * AGENTS_PER_CLIENT : (i + 1) * AGENTS_PER_CLIENT]
        out = tmp_path / f"client-{i}.json"
        config = tmp_path / f"client-{i}-config.json"
        config.write_text(
            json.dumps(
                {
                    "url": url,
                    "until": until,
                    "out": str(out),
                    "agents": [[a, factory.token(a, "agent")] for a in mine],
                }
            )
        )
        procs.append(
            subprocess.Popen([sys.executable, str(ROOT / "tests" / "rebuild_load.py"), str(config)])
        )
        outs.append(out)

    def join() -> dict[str, Any]:
        merged: dict[str, Any] = {"fetches": [], "sales": [], "errors": []}
        for proc in procs:
            assert proc.wait(timeout=120) == 0
        for out in outs:
            for key, items in json.loads(out.read_text()).items():
                merged[key] += items
        return merged

    try:
        while time.time() < until - seconds:
            time.sleep(0.05)
        yield join
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def create_tickets_meanwhile(
    url: str, factory: Factory, admin_id: int, stop: threading.Event
) -> threading.Thread:
    """An admin who keeps adding tickets over HTTP while the agents work."""
    headers = factory.headers(admin_id, "admin")

    def run() -> None:
        with requests.Session() as http:
            while not stop.is_set():
                response = http.post(
                    f"{url}/api/admin/tickets/", json={"title": "late"}, headers=headers, timeout=30
                )
                assert response.status_code == 201, response.text
                time.sleep(0.05)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def check_answers(answers: dict[str, Any]) -> None:
    """No errors; every ticket ever shown belongs to one agent only; no double sale."""
    assert answers["errors"] == []
    # Enough to matter even on a loaded two-core CI machine (hundreds when idle).
    assert len(answers["fetches"]) >= 50, "too little load to prove anything"
    assert len(answers["sales"]) >= 50
    shown_to: dict[int, set[int]] = defaultdict(set)
    for fetch in answers["fetches"]:
        assert len(fetch["tickets"]) <= fetch["capacity"]
        for ticket_id, agent_id, status in fetch["tickets"]:
            assert (agent_id, status) == (fetch["agent"], "assigned")
            shown_to[ticket_id].add(fetch["agent"])
    doubled = {t: agents for t, agents in shown_to.items() if len(agents) > 1}
    assert doubled == {}, f"tickets handed to two agents: {doubled}"
    sold: dict[int, int] = {}
    for agent, ticket_id, status in answers["sales"]:
        assert status == 200, (agent, ticket_id, status)
        assert ticket_id not in sold, f"ticket {ticket_id} sold twice"
        sold[ticket_id] = agent
        assert agent in shown_to[ticket_id]


def check_after_load(app: Flask, factory: Factory) -> None:
    """The audit passes and a new agent gets the oldest unassigned tickets."""
    with app.app_context():
        queue = ticket_queue()
        assert audit(db.session, queue, recheck_after=1.0) == []
        oldest = list(
            db.session.scalars(
                sa.select(Ticket.id)
                .where(Ticket.status == "unassigned")
                .order_by(Ticket.id)
                .limit(CAPACITY)
            )
        )
        db.session.rollback()
        assert len(oldest) == CAPACITY, "the pool ran dry: seed more tickets"
    newcomer = factory.agents(1, prefix="newcomer", capacity=CAPACITY)[0]
    with app.test_client() as client:
        got = client.post("/api/agent/tickets/assign/", headers=factory.headers(newcomer))
    assert got.status_code == 200, got.get_data(as_text=True)
    assert [t["id"] for t in got.json["tickets"]] == oldest


def test_rebuild_while_agents_fetch_and_sell(app: Flask, factory: Factory, tmp_path):
    admin = factory.user("admin", role="admin")
    factory.bulk_tickets(8000)  # more than the load can sell in LOAD_SECONDS
    with live_server(service_env(), workers=3) as url:
        stop = threading.Event()
        with clients(url, factory, tmp_path) as join:
            creator = create_tickets_meanwhile(url, factory, admin.id, stop)
            summaries = []
            try:
                with app.app_context():
                    queue = ticket_queue()
                    deadline = time.time() + LOAD_SECONDS - 1
                    while time.time() < deadline:  # rebuild again and again under load
                        summaries.append(rebuild(db.session, queue))
                        time.sleep(0.2)
                # The operator's script too, as a separate process.
                script = subprocess.run(
                    [sys.executable, "scripts/rebuild_queue.py"],
                    cwd=ROOT,
                    env={**os.environ, **service_env(LOG_LEVEL="WARNING")},
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                assert script.returncode == 0, script.stderr
            finally:
                stop.set()
                creator.join()
            answers = join()
    assert len(summaries) >= 3 and all(s.completed for s in summaries)
    # Nothing was wrong with the queue's order, and the rebuilds found no stray id
    # to take out. (A ticket created a moment ago may be pushed by the rebuild before
    # its creator pushes it, so `missing` can count a few.)
    assert sum(s.out_of_order + s.extra for s in summaries) == 0
    check_answers(answers)
    check_after_load(app, factory)


def test_redis_wiped_under_load_comes_back(app: Flask, factory: Factory, tmp_path):
    admin = factory.user("admin", role="admin")
    factory.bulk_tickets(8000)  # more than the load can sell in LOAD_SECONDS
    with app.app_context():
        rebuild(db.session, ticket_queue())  # built: the workers start with nothing to do
    env = service_env(
        RELAY_INTERVAL_SECONDS="0.5",
        REAPER_INTERVAL_SECONDS="0.5",
        RECONCILE_INTERVAL_SECONDS="2",
        LOG_FORMAT="text",
    )
    log_path = tmp_path / "workers.log"
    with log_path.open("wb") as log, live_server(service_env(), workers=3) as url:
        workers = subprocess.Popen(
            [sys.executable, "-m", "workers"],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            stop = threading.Event()
            with clients(url, factory, tmp_path) as join:
                creator = create_tickets_meanwhile(url, factory, admin.id, stop)
                try:
                    time.sleep(LOAD_SECONDS / 3)
                    with app.app_context():
                        ticket_queue().client.flushdb()  # Redis restarts empty
                        wait_for(ticket_queue().is_built, "the workers to rebuild", 20)
                finally:
                    stop.set()
                    creator.join()
                answers = join()
            # Fetches popped from the half-built queue may have died with the
            # wipe; the reaper and the relay settle them within a few seconds.
            with app.app_context():

                def healthy() -> bool:
                    return audit(db.session, ticket_queue(), recheck_after=0) == []

                wait_for(healthy, "the audit to pass", 30)
        finally:
            workers.terminate()
            try:
                assert workers.wait(timeout=30) == 0
            finally:
                stop_process(workers, timeout=1)  # kills it only if it outlived the wait
    assert "Redis has no epoch" in log_path.read_text()
    check_answers(answers)
    check_after_load(app, factory)
