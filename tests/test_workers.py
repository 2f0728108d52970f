"""``python -m workers`` as a real process against real PostgreSQL and Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from conftest import Factory, service_env
from flask import Flask
from helpers import insert_unqueued, queued_ids
from live import ROOT, Workers, free_port, stop, wait_for

from service.domain.rebuild import rebuild
from service.extensions import db
from service.models import GENERAL
from service.queue import TicketQueue, score
from service.state import ticket_queue

pytestmark = pytest.mark.slow

FAST = {
    "RELAY_INTERVAL_SECONDS": "0.2",
    "REAPER_INTERVAL_SECONDS": "0.2",
    "RECONCILE_INTERVAL_SECONDS": "0.5",
    "WORKER_MAX_BACKOFF_SECONDS": "0.5",
    "LOG_FORMAT": "text",
    "LOG_LEVEL": "INFO",
}


@contextmanager
def workers(tmp_path: Path, name: str = "workers", **env: str) -> Iterator[Workers]:
    proc = Workers(tmp_path / f"{name}.log", service_env(**{**FAST, **env}))
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def queue(app: Flask) -> Iterator[TicketQueue]:
    with app.app_context():
        queue = ticket_queue()
        rebuild(db.session, queue)  # Redis counts as built: no rebuild at start
        yield queue
        db.session.rollback()


def logged(proc: Workers, line: str) -> None:
    """Wait for ``line`` in the workers' log: a step logs what it did a moment after its
    effect shows in Redis (and the runner logs a recovery once the step returns)."""
    wait_for(lambda: line in proc.log, f"the log to say {line!r}", 10)


def test_a_ticket_never_pushed_gets_queued(tmp_path, queue):
    ids = insert_unqueued(2)  # as if the API died right after the INSERT
    # The relay runs before reconcile's rolling sweep, which could queue them too.
    with workers(tmp_path, RECONCILE_INTERVAL_SECONDS="60") as proc:
        wait_for(lambda: "workers started" in proc.log, "the workers to start")
        wait_for(lambda: queued_ids(queue) == ids, "the relay to queue the tickets", 10)
        logged(proc, f"relay: queued 2 missing ticket(s): {ids[0]}, {ids[1]}")
        assert proc.proc.poll() is None


def test_an_expired_reservation_returns_to_the_queue(tmp_path, queue, factory: Factory):
    agent = factory.agents(1)[0]
    ids = factory.bulk_tickets(3)
    popped = queue.reserve(
        agent, 2, 30, known=[], queues=[GENERAL]
    ).ids  # the fetch dies before confirming
    assert popped == ids[:2]
    with workers(tmp_path) as proc:
        wait_for(lambda: "workers started" in proc.log, "the workers to start")
        time.sleep(0.5)
        assert queue.depth([GENERAL]) == (
            {GENERAL: 1},
            2,
        )  # the leases have not ended: nothing moves
        for member in popped:
            queue.client.zadd(queue.reserved_key, {str(member): 0})
        wait_for(
            lambda: queue.depth([GENERAL]) == ({GENERAL: 3}, 0), "the reaper to return the ids", 10
        )
        assert queued_ids(queue) == ids
        assert queue.held(agent) == set()
        logged(proc, f"reaper: returned 2 expired reservation(s) to the queue: {ids[0]}, {ids[1]}")


def test_a_wiped_redis_is_rebuilt(tmp_path, queue, factory: Factory):
    ids = factory.bulk_tickets(5)
    with workers(tmp_path) as proc:
        wait_for(lambda: "workers started" in proc.log, "the workers to start")
        queue.client.flushdb()
        wait_for(queue.is_built, "the epoch to come back", 10)
        assert queued_ids(queue) == ids
        logged(proc, "Redis has no epoch")
        # A fill, or a repair if the relay queued some of the outbox's tickets first.
        wait_for(
            lambda: "rebuild: filled the empty Redis" in proc.log or "rebuild: fixed" in proc.log,
            "the rebuild's line",
            10,
        )


def test_drift_is_reconciled(tmp_path, queue, factory: Factory):
    agent = factory.agents(1)[0]
    ids = factory.bulk_tickets(3)
    queue.client.sadd(queue.held_key(agent), 424242)  # an id the agent never got
    queue.client.zadd(
        queue.queue_key(GENERAL), {"424243": score(2, 424243), str(ids[1]): 1}
    )  # stray; disordered
    with workers(tmp_path) as proc:
        wait_for(lambda: queue.held(agent) == set(), "reconcile to fix the held set", 10)
        wait_for(lambda: queued_ids(queue) == ids, "reconcile to tidy the queue", 10)
        assert queue.client.zscore(queue.queue_key(GENERAL), str(ids[1])) == score(2, ids[1])
        logged(proc, f"held tickets of agent {agent} corrected")
        logged(proc, "queue general: took out 1 stray id(s): 424243")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_exits_zero_promptly(tmp_path, queue, sig):
    proc = Workers(tmp_path / "w.log", service_env(**FAST))
    try:
        wait_for(lambda: "workers started" in proc.log, "the workers to start")
        started = time.monotonic()
        assert proc.stop(sig, timeout=5) == 0
        assert time.monotonic() - started < 3
        assert "workers stopped" in proc.log
        assert "Traceback" not in proc.log
    finally:
        proc.stop(signal.SIGKILL)


def catches_sigterm(pid: int) -> bool:
    """Whether the process has a SIGTERM handler installed (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


def test_a_stop_signal_during_start_up_exits_zero(tmp_path, queue):
    proc = Workers(tmp_path / "w.log", service_env(**FAST))
    try:
        wait_for(lambda: catches_sigterm(proc.proc.pid), "the handler to be installed", 20)
        assert "workers started" not in proc.log  # still importing and creating the app
        assert proc.stop(signal.SIGTERM, timeout=30) == 0
        assert "workers stopped" in proc.log
    finally:
        proc.stop(signal.SIGKILL)


@pytest.mark.parametrize(
    "env",
    [
        {"REDIS_URL": ""},  # PostgreSQL without Redis
        {"JWT_SECRET_KEY": "short"},
        {"RELAY_INTERVAL_SECONDS": "soon"},
        {"REAPER_INTERVAL_SECONDS": "0"},
        {"DATABASE_URL": "", "REDIS_URL": ""},  # embedded mode: nothing to share
    ],
)
def test_a_bad_configuration_exits_non_zero(tmp_path, env):
    result = subprocess.run(
        [sys.executable, "-m", "workers"],
        cwd=ROOT,
        env={**os.environ, **service_env(**{**FAST, **env}), "INSTANCE_PATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "configuration error" in result.stderr + result.stdout


def test_outages_are_retried_never_fatal(tmp_path, queue):
    """Redis unreachable at start: the workers log, back off, and rebuild once it is up."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    ids = insert_unqueued(3)
    server: subprocess.Popen[bytes] | None = None
    with workers(tmp_path, REDIS_URL=url) as proc:
        try:
            wait_for(lambda: proc.log.count("failed (") >= 3, "retries to be logged", 15)
            assert proc.proc.poll() is None
            server = subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
                + ["--appendonly", "no", "--dir", str(tmp_path)],
                stdout=subprocess.DEVNULL,
            )
            private = redis.Redis.from_url(url, decode_responses=True)
            key = queue.queue_key(GENERAL)

            def rebuilt() -> bool:
                try:
                    return [int(m) for m in private.zrange(key, 0, -1)] == ids
                except redis.ConnectionError:
                    return False

            wait_for(rebuilt, "the workers to rebuild the new Redis", 20)
            logged(proc, "working again")
            assert "Traceback" not in proc.log
            private.close()
        finally:
            try:
                assert proc.stop() == 0
            finally:
                if server is not None:
                    stop(server, timeout=10)


def test_postgres_unreachable_is_retried_never_fatal(tmp_path, queue):
    dead = f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/nothing"
    with workers(tmp_path, DATABASE_URL=dead) as proc:
        wait_for(lambda: proc.log.count("failed (") >= 3, "retries to be logged", 15)
        assert proc.proc.poll() is None
        assert "OperationalError" in proc.log
        assert proc.stop() == 0


def test_two_worker_processes_push_each_ticket_once(tmp_path, queue):
    ids = insert_unqueued(40)
    # Both relays drain the same outbox; each runs before its reconcile's first sweep.
    slow_sweep = {"RECONCILE_INTERVAL_SECONDS": "60"}
    with (
        workers(tmp_path, name="one", **slow_sweep) as one,
        workers(tmp_path, name="two", **slow_sweep) as two,
    ):
        wait_for(
            lambda: "workers started" in one.log and "workers started" in two.log,
            "both to start",
        )
        wait_for(lambda: queued_ids(queue) == ids, "the tickets to be queued", 10)
        time.sleep(0.5)

        def pushed(log: str) -> int:
            return sum(
                int(line.split("relay: queued ")[1].split()[0])
                for line in log.splitlines()
                if "relay: queued " in line
            )

        assert pushed(one.log) + pushed(two.log) == 40
