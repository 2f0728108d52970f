"""Fixtures: an app on real PostgreSQL and Redis, clean for every test.

The database and the Redis database come from TEST_DATABASE_URL and
TEST_REDIS_URL (defaults: a ``tq_test`` database on the local PostgreSQL and
Redis database 15), so several checkouts can test side by side.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from browser import Problems, launch_chromium, open_page
from flask import Flask
from flask.testing import FlaskClient
from playwright.sync_api import Browser, Page
from redis_server import RedisServer

from service import create_app
from service.auth import access_token, hash_password, new_session
from service.extensions import db
from service.models import GENERAL, AgentQueue, Queue, Ticket, User, utcnow
from service.queue import Placement, score
from service.state import ticket_queue

TEST_DATABASE_URL = os.environ.get(
    "TEST_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/tq_test"
)
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
JWT_SECRET = "test-secret-key-that-is-long-enough-0123456789"
METRICS_TOKEN = "test-metrics-token-0123456789"
# Scrapes present the metrics token, as Prometheus is configured to.
METRICS_AUTH = {"Authorization": f"Bearer {METRICS_TOKEN}"}
# Hashing with argon2 takes tens of milliseconds; tests that need many users
# share one precomputed hash of PASSWORD.
PASSWORD = "correct-horse-battery"
_PASSWORD_HASH = hash_password(PASSWORD)


def service_env(**extra: str) -> dict[str, str]:
    """The environment a test app or a test subprocess runs with."""
    env = {
        "DATABASE_URL": TEST_DATABASE_URL,
        "REDIS_URL": TEST_REDIS_URL,
        "JWT_SECRET_KEY": JWT_SECRET,
        "METRICS_TOKEN": METRICS_TOKEN,
    }
    env.update(extra)
    return env


def _ensure_database(url: str) -> None:
    target = sa.engine.make_url(url)
    admin = sa.create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.scalar(
            sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": target.database}
        )
        if not exists:
            conn.execute(sa.text(f'CREATE DATABASE "{target.database}"'))
    admin.dispose()


@pytest.fixture(scope="session")
def _schema() -> None:
    """Create the test database and migrate it from scratch with Alembic."""
    from flask_migrate import downgrade, upgrade

    _ensure_database(TEST_DATABASE_URL)
    app = create_app(env=service_env())
    with app.app_context():
        # Whatever an earlier run or revision left, the migrations start from nothing.
        db.session.execute(sa.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        db.session.commit()
        upgrade()
        downgrade(revision="base")  # the downgrade path works too
        upgrade()
        db.engine.dispose()


def reset_state(app: Flask) -> None:
    with app.app_context():
        db.session.execute(
            sa.text(
                "TRUNCATE users, tickets, ticket_events, revoked_sessions, queue_outbox,"
                " webhooks, webhook_deliveries, feed_positions RESTART IDENTITY CASCADE"
            )
        )
        db.session.execute(sa.text("DELETE FROM queues WHERE name <> 'general'"))
        db.session.commit()
        ticket_queue().client.flushdb()


def close_app(app: Flask) -> None:
    """Give back every connection an app holds to PostgreSQL and Redis."""
    app.extensions["live"].close()  # a hub's threads, if a waiting fetch started one
    with app.app_context():
        db.session.remove()
        db.engine.dispose()
    app.extensions["ticket_queue"].client.close()


@contextmanager
def fresh_app(**env: str) -> Iterator[Flask]:
    """An app on the test databases (``env`` overrides), emptied first, closed after."""
    app = create_app(env=service_env(**env))
    app.config["TESTING"] = True
    reset_state(app)
    try:
        yield app
    finally:
        close_app(app)


@pytest.fixture
def app(_schema: None) -> Iterator[Flask]:
    with fresh_app() as app:
        yield app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> Any:
    return app.test_cli_runner()


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(TEST_REDIS_URL, decode_responses=True)
    yield client
    client.close()


class Factory:
    """Makes users, tickets and tokens straight through the models."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def user(
        self,
        username: str,
        role: str = "agent",
        capacity: int | None = None,
        active: bool = True,
        queues: tuple[str, ...] = (GENERAL,),
        status: str = "online",
    ) -> User:
        """A user straight through the models; an agent in ``queues`` with ``status``."""
        agent = role == "agent"
        if agent and capacity is None:
            capacity = self.app.config["TICKETS_PER_AGENT"]
        with self.app.app_context():
            user = User(
                username=username,
                password_hash=_PASSWORD_HASH,
                role=role,
                capacity=capacity,
                is_active=active,
                status=status if agent else None,
                status_since=utcnow() if agent else None,
                queue_names=",".join(sorted(set(queues))) if agent else None,
            )
            db.session.add(user)
            db.session.flush()
            if agent:
                db.session.add_all(AgentQueue(agent_id=user.id, queue=q) for q in queues)
            db.session.commit()
            return user

    def agents(
        self,
        count: int,
        prefix: str = "agent",
        capacity: int | None = None,
        queues: tuple[str, ...] = (GENERAL,),
    ) -> list[int]:
        """Insert ``count`` online agents in ``queues``, in a few statements; their ids."""
        capacity = capacity or self.app.config["TICKETS_PER_AGENT"]
        rows = [
            {
                "username": f"{prefix}{i}",
                "password_hash": _PASSWORD_HASH,
                "role": "agent",
                "capacity": capacity,
                "is_active": True,
                "status": "online",
                "status_since": utcnow(),
                "queue_names": ",".join(sorted(set(queues))),
            }
            for i in range(count)
        ]
        with self.app.app_context():
            ids = list(db.session.scalars(sa.insert(User).returning(User.id), rows))
            memberships = [{"agent_id": a, "queue": q} for a in ids for q in queues]
            if memberships:
                db.session.execute(sa.insert(AgentQueue), memberships)
            db.session.commit()
            return ids

    def queue(self, name: str, description: str = "") -> str:
        with self.app.app_context():
            db.session.add(Queue(name=name, description=description))
            db.session.commit()
        return name

    def tickets(self, count: int, title: str = "ticket") -> list[int]:
        """Create ``count`` tickets through the domain (PostgreSQL, then the queue)."""
        from service.domain.tickets import create_ticket

        with self.app.app_context():
            return [
                create_ticket(
                    db.session, ticket_queue(), title=f"{title} {i}", description="", actor_id=None
                ).id  # type: ignore[arg-type]
                for i in range(count)
            ]

    def bulk_tickets(self, count: int, queue: str = GENERAL, priority: int = 2) -> list[int]:
        """Insert ``count`` tickets in one statement and queue them."""
        rows = [
            {
                "title": f"bulk {i}",
                "description": "",
                "status": "unassigned",
                "queue": queue,
                "priority": priority,
            }
            for i in range(count)
        ]
        with self.app.app_context():
            ids = list(db.session.scalars(sa.insert(Ticket).returning(Ticket.id), rows))
            db.session.commit()
            ticket_queue().enqueue(Placement(i, queue, score(priority, i)) for i in ids)
            return sorted(ids)

    def token(self, user: User | int, role: str | None = None) -> str:
        """An access token in a new session: for a User, of its role and token version
        as loaded; for a bare id, of an agent (or ``role``) at version 0."""
        if isinstance(user, User):
            user_id, version, role = user.id, user.token_version, role or user.role
        else:
            user_id, version, role = user, 0, role or "agent"
        with self.app.app_context():
            return access_token(user_id, role, version, new_session())

    def headers(self, user: User | int, role: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user, role)}"}


@pytest.fixture
def factory(app: Flask) -> Factory:
    return Factory(app)


@pytest.fixture
def admin(factory: Factory) -> User:
    return factory.user("admin", role="admin")


@pytest.fixture
def admin_headers(factory: Factory, admin: User) -> dict[str, str]:
    return factory.headers(admin)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[Any]:
    """A private three-node Redis Cluster (tests/redis_cluster.py), started once per run
    by the first test that asks for it and stopped at the end."""
    from redis_cluster import running_cluster

    with running_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server on a free port, for tests that stop, restart or flush it."""
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Headless Chromium (tests/browser.py), started once per run by the first test that
    asks for it. A test that asks for it fails where the browser cannot start."""
    with launch_chromium() as chromium:
        yield chromium


@pytest.fixture
def browser_page(browser: Browser) -> Iterator[tuple[Page, Problems]]:
    """A fresh page and the problems seen on it (console errors, failed requests)."""
    with open_page(browser) as opened:
        yield opened
