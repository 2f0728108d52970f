"""Statements and round trips per request on the agent hot path.

DESIGN.md, "The assignment path": an agent that is already full costs one
Redis call and one indexed SELECT; a top-up costs one reserve Lua call and one
short transaction. These tests pin what each request really sends, so a change
that adds a round trip shows up here first.

Counted per request, after a warm-up request (Lua scripts loaded, pool filled):

- SQL statements: SQLAlchemy's ``before_cursor_execute`` (what the code asks for);
- PostgreSQL work the statements do not show: each pool checkout runs the
  pre-ping (``SELECT 1``, a round trip), each transaction ends in a COMMIT or
  ROLLBACK, and psycopg2 sends the BEGIN of each transaction as its own round trip;
- Redis round trips: writes to a Redis connection (a pipeline counts once),
  with the commands by name.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from flask import Flask

from service.domain.rebuild import rebuild
from service.extensions import db
from service.state import ticket_queue

ASSIGN = "/api/agent/tickets/assign/"


@dataclass(repr=False)
class Budget:
    statements: list[str] = field(default_factory=list)
    checkouts: int = 0  # each one a pre-ping round trip
    begins: int = 0
    commits: int = 0
    rollbacks: int = 0
    redis_round_trips: int = 0
    redis_commands: list[str] = field(default_factory=list)

    @property
    def kinds(self) -> list[str]:
        return [_kind(s) for s in self.statements]

    @property
    def postgres_round_trips(self) -> int:
        return self.checkouts + self.begins + len(self.statements) + self.commits + self.rollbacks

    def __repr__(self) -> str:
        return (
            f"statements {self.kinds}, checkouts {self.checkouts}, begins {self.begins},"
            f" commits {self.commits}, rollbacks {self.rollbacks};"
            f" redis {self.redis_round_trips} round trips {self.redis_commands}"
        )


def _kind(sql: str) -> str:
    """A short name for a statement: its verb, its first table, its row lock."""
    flat = " ".join(sql.split())
    verb = flat.split(" ", 1)[0].upper()
    table = re.search(r"\b(?:FROM|INTO|UPDATE)\s+(\w+)", flat, re.IGNORECASE)
    name = f"{verb} {table.group(1) if table else '?'}"
    if re.search(r"count\(", flat, re.IGNORECASE):
        name += " count"
    lock = re.search(r"\bFOR (?:NO KEY )?UPDATE\b", flat, re.IGNORECASE)
    if verb == "SELECT" and lock:
        name += f" {lock.group(0).upper()}"
    return name


@contextmanager
def counting(app: Flask, monkeypatch: pytest.MonkeyPatch) -> Iterator[Budget]:
    budget = Budget()
    with app.app_context():
        engine = db.engine
    client = ticket_queue_client(app)

    def on_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        budget.statements.append(statement)

    def on_checkout(*args: Any) -> None:
        budget.checkouts += 1

    def on_begin(conn: Any) -> None:
        budget.begins += 1

    def on_commit(conn: Any) -> None:
        budget.commits += 1

    def on_rollback(conn: Any) -> None:
        budget.rollbacks += 1

    listeners = [
        (engine, "before_cursor_execute", on_execute),
        (engine.pool, "checkout", on_checkout),
        (engine, "begin", on_begin),
        (engine, "commit", on_commit),
        (engine, "rollback", on_rollback),
    ]
    for target, name, fn in listeners:
        sa.event.listen(target, name, fn)

    send = redis.connection.AbstractConnection.send_packed_command

    def counted_send(self: Any, command: Any, check_health: bool = True) -> None:
        budget.redis_round_trips += 1
        send(self, command, check_health)

    execute_command = client.execute_command

    def named(*args: Any, **options: Any) -> Any:
        budget.redis_commands.append(str(args[0]).upper())
        return execute_command(*args, **options)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted_send)
    monkeypatch.setattr(client, "execute_command", named)
    try:
        yield budget
    finally:
        monkeypatch.undo()
        for target, name, fn in listeners:
            sa.event.remove(target, name, fn)


def ticket_queue_client(app: Flask) -> Any:
    with app.app_context():
        return ticket_queue().client


@pytest.fixture
def agent(app: Flask, factory: Any) -> dict[str, str]:
    """A full agent (15 tickets) with 5 more queued, Redis built, scripts loaded."""
    agent_id = factory.agents(1)[0]
    factory.bulk_tickets(20)
    with app.app_context():
        rebuild(db.session, ticket_queue())  # sets the epoch, as in production
        db.session.remove()
    headers = factory.headers(agent_id)
    client = app.test_client()
    assert len(client.get(ASSIGN, headers=headers).json["tickets"]) == 15
    return headers


def test_fast_path_is_one_redis_call_and_one_select(app, agent, monkeypatch):
    client = app.test_client()
    client.get(ASSIGN, headers=agent)  # warm
    with counting(app, monkeypatch) as budget:
        reply = client.get(ASSIGN, headers=agent)
    assert reply.status_code == 200 and len(reply.json["tickets"]) == 15
    # The revocation check (the blocklist entry and the build epoch in one MGET).
    assert budget.redis_commands == ["MGET"], budget
    assert budget.redis_round_trips == 1, budget
    # The agent's account and unsold tickets in one indexed SELECT...
    assert budget.kinds == ["SELECT users"], budget
    # ...around which PostgreSQL also sees the pool's pre-ping, psycopg2's
    # BEGIN and the ROLLBACK that ends the request's session: 4 round trips.
    assert (budget.checkouts, budget.begins, budget.commits, budget.rollbacks) == (1, 1, 0, 1)
    assert budget.postgres_round_trips == 4, budget


def test_top_up_budget(app, agent, monkeypatch):
    """Today's top-up, which is more than DESIGN.md's "one reserve Lua call plus one
    short transaction": see the comments for each extra step."""
    client = app.test_client()
    oldest = client.get(ASSIGN, headers=agent).json["tickets"][0]["id"]
    assert client.post(f"/api/agent/tickets/sell/{oldest}/", headers=agent).status_code == 200
    with counting(app, monkeypatch) as budget:
        reply = client.get(ASSIGN, headers=agent)
    assert reply.status_code == 200 and len(reply.json["tickets"]) == 15
    # Redis: the revocation MGET, reserve.lua, and a second script call,
    # settle.lua, after the commit (clears the reservation): 3 round trips.
    assert budget.redis_commands == ["MGET", "EVALSHA", "EVALSHA"], budget
    assert budget.redis_round_trips == 3, budget
    assert budget.kinds == [
        # The fast path's SELECT runs first to learn the agent is short; its
        # transaction is rolled back before the confirm.
        "SELECT users",
        # The confirm transaction: lock the agent, count what it holds,
        # assign the reserved ids, log the events, read back its tickets.
        "SELECT users FOR NO KEY UPDATE",
        "SELECT tickets count",
        "UPDATE tickets",
        "INSERT ticket_events",
        "SELECT tickets",
    ], budget
    # Two transactions (the read, then the confirm) and two pre-pings: the
    # confirm's rollback() hands the connection back to the pool, and the
    # confirm checks one out (and pings it) again.
    assert (budget.checkouts, budget.begins, budget.commits, budget.rollbacks) == (2, 2, 1, 1)
    assert budget.postgres_round_trips == 12, budget


def test_sell_budget(app, agent, monkeypatch):
    client = app.test_client()
    oldest = client.get(ASSIGN, headers=agent).json["tickets"][0]["id"]
    with counting(app, monkeypatch) as budget:
        reply = client.post(f"/api/agent/tickets/sell/{oldest}/", headers=agent)
    assert reply.status_code == 200
    # Redis: the revocation MGET, then SREM from the held set after the commit.
    assert budget.redis_commands == ["MGET", "SREM"], budget
    assert budget.redis_round_trips == 2, budget
    # The guarded UPDATE (it checks the account too), then the event.
    assert budget.kinds == ["UPDATE tickets", "INSERT ticket_events"], budget
    assert (budget.checkouts, budget.begins, budget.commits) == (1, 1, 1), budget
