"""Statements and round trips per request on the agent hot path.

docs/design.md, "The assignment path": an agent that is already full costs one
Redis call and one indexed SELECT; a top-up costs one reserve Lua call and one
short transaction. These tests pin what each request really sends, so a change
that adds a round trip shows up here first.

Counted per request, after a warm-up request (Lua scripts loaded, pool filled):

- SQL statements: SQLAlchemy's ``before_cursor_execute`` (what the code asks for);
- PostgreSQL round trips: what the app really sends, counted by a TCP proxy in
  front of PostgreSQL. It sees what the statements do not show: psycopg2's
  BEGIN of each transaction, its COMMIT or ROLLBACK, any ping;
- Redis round trips: writes to a Redis connection (a pipeline counts once),
  with the commands by name.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import flask
import marshmallow as ma
import pytest
import redis
import sqlalchemy as sa
from conftest import TEST_DATABASE_URL, fresh_app
from flask import Flask
from proxy import TcpProxy, tcp_proxy

from service.domain.rebuild import rebuild
from service.extensions import db
from service.state import ticket_queue

ASSIGN = "/api/agent/tickets/assign/"


@dataclass(repr=False)
class Budget:
    statements: list[str] = field(default_factory=list)
    postgres_round_trips: int = 0
    redis_round_trips: int = 0
    redis_commands: list[str] = field(default_factory=list)

    @property
    def kinds(self) -> list[str]:
        return [_kind(s) for s in self.statements]

    def __repr__(self) -> str:
        return (
            f"statements {self.kinds}, postgres {self.postgres_round_trips} round trips;"
            f" redis {self.redis_round_trips} round trips {self.redis_commands}"
        )


def _kind(sql: str) -> str:
    """A short name for a statement: its verb, its first table, its row lock.
    A statement with data-modifying CTEs is named by its writes, joined by '+'."""
    flat = " ".join(sql.split())
    if flat.upper().startswith("WITH "):
        writes = re.findall(r"\b(UPDATE|INSERT INTO|DELETE FROM)\s+(\w+)", flat, re.IGNORECASE)
        return " + ".join(f"{verb.split()[0].upper()} {table}" for verb, table in writes)
    verb = flat.split(" ", 1)[0].upper()
    table = re.search(r"\b(?:FROM|INTO|UPDATE)\s+(\w+)", flat, re.IGNORECASE)
    name = f"{verb} {table.group(1) if table else '?'}"
    if re.search(r"count\(", flat, re.IGNORECASE):
        name += " count"
    lock = re.search(r"\bFOR (?:NO KEY )?UPDATE\b", flat, re.IGNORECASE)
    if verb == "SELECT" and lock:
        name += f" {lock.group(0).upper()}"
    return name


@pytest.fixture
def app(_schema: None) -> Iterator[Flask]:
    """The app with PostgreSQL behind a counting TCP proxy."""
    target = sa.engine.make_url(TEST_DATABASE_URL)
    with tcp_proxy(target.host or "127.0.0.1", target.port or 5432) as proxy:
        proxied = target.set(host="127.0.0.1", port=proxy.port)
        with fresh_app(DATABASE_URL=proxied.render_as_string(False)) as app:
            app.extensions["test_proxy"] = proxy
            yield app


@contextmanager
def counting(app: Flask, monkeypatch: pytest.MonkeyPatch) -> Iterator[Budget]:
    budget = Budget()
    with app.app_context():
        engine = db.engine
    client = ticket_queue_client(app)
    proxy: TcpProxy = app.extensions["test_proxy"]
    sent_before = proxy.client_sends

    def on_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        budget.statements.append(statement)

    listeners = [(engine, "before_cursor_execute", on_execute)]
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

    pipeline_execute = redis.client.Pipeline.execute

    def named_pipeline(self: Any, *args: Any, **options: Any) -> Any:
        budget.redis_commands.extend(str(args[0]).upper() for args, _ in self.command_stack)
        return pipeline_execute(self, *args, **options)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted_send)
    monkeypatch.setattr(client, "execute_command", named)
    monkeypatch.setattr(redis.client.Pipeline, "execute", named_pipeline)
    try:
        yield budget
        budget.postgres_round_trips = proxy.client_sends - sent_before
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
    # The revocation check (the blocklist entry and the build epoch, and the
    # agent's last-seen note, in one script call).
    assert budget.redis_commands == ["EVALSHA"], budget
    assert budget.redis_round_trips == 1, budget
    # The agent's account and unsold tickets in one indexed SELECT...
    assert budget.kinds == ["SELECT users"], budget
    # ...in autocommit: no BEGIN before it, no ROLLBACK after it, no ping.
    assert budget.postgres_round_trips == 1, budget


def test_top_up_is_one_lua_call_and_one_short_transaction(app, agent, monkeypatch):
    client = app.test_client()
    oldest = client.get(ASSIGN, headers=agent).json["tickets"][0]["id"]
    assert client.post(f"/api/agent/tickets/sell/{oldest}/", headers=agent).status_code == 200
    with counting(app, monkeypatch) as budget:
        reply = client.get(ASSIGN, headers=agent)
    assert reply.status_code == 200 and len(reply.json["tickets"]) == 15
    # Redis: the revocation script, then reserve.lua, which also clears what the
    # previous fetch confirmed; nothing after the commit.
    assert budget.redis_commands == ["EVALSHA", "EVALSHA"], budget
    assert budget.redis_round_trips == 2, budget
    assert budget.kinds == [
        # The fast path's SELECT, in autocommit, finds the agent one short...
        "SELECT users",
        # ...then the confirm transaction: lock the agent, list what it holds,
        # assign the reserved ids and log their events in one statement.
        "SELECT users FOR NO KEY UPDATE",
        "SELECT tickets",
        "UPDATE tickets + INSERT ticket_events",
    ], budget
    # The read (1), then BEGIN, the three statements, COMMIT.
    assert budget.postgres_round_trips == 6, budget


def test_sell_budget(app, agent, monkeypatch):
    client = app.test_client()
    oldest = client.get(ASSIGN, headers=agent).json["tickets"][0]["id"]
    with counting(app, monkeypatch) as budget:
        reply = client.post(f"/api/agent/tickets/sell/{oldest}/", headers=agent)
    assert reply.status_code == 200
    # Redis: the revocation script, then one pipeline after the commit that takes
    # the ticket out of the held set and ends its reservation.
    assert budget.redis_commands == ["EVALSHA", "SREM", "ZREM"], budget
    assert budget.redis_round_trips == 2, budget
    # The guarded UPDATE (it checks the account too) and its event, as one
    # statement in autocommit: no BEGIN, no COMMIT.
    assert budget.kinds == ["UPDATE tickets + INSERT ticket_events"], budget
    assert budget.postgres_round_trips == 1, budget


def test_the_hot_path_runs_without_framework_overheads(app, agent, monkeypatch):
    """Costs a change can add without adding a round trip, found with py-spy on
    scripts/bench/hotpath.py (the first two about a tenth of a full agent's fetch
    together):

    - a listener on the engine's connection events (begin, commit, execute, ...)
      sends every statement of every request through SQLAlchemy's slower path
      with events;
    - a marshmallow schema built per request (webargs does, given a class);
    - Flask's cookie session, which the console's messages use, opened on API
      requests too.
    """
    client = app.test_client()
    client.get(ASSIGN, headers=agent)  # warm
    built = []
    original = ma.Schema.__init__

    def counted(self: ma.Schema, *args: Any, **kwargs: Any) -> None:
        built.append(type(self).__name__)
        original(self, *args, **kwargs)

    monkeypatch.setattr(ma.Schema, "__init__", counted)
    for path in (ASSIGN, f"{ASSIGN}?wait=0"):
        assert client.get(path, headers=agent).status_code == 200
    monkeypatch.undo()
    assert built == []
    with app.app_context():
        assert not db.engine._has_events
    with app.test_request_context(ASSIGN, headers=agent):
        session = app.session_interface.open_session(app, flask.request)
        assert app.session_interface.is_null_session(session)
    with app.test_request_context("/console/login"):
        session = app.session_interface.open_session(app, flask.request)
        assert session is not None and not app.session_interface.is_null_session(session)
