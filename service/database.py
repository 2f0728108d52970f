"""Engine set-up particular to each database: PostgreSQL in production, SQLite embedded."""

from __future__ import annotations

import select
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DisconnectionError


def replace_closed_connections(engine: Engine) -> None:
    """Hand out no pooled PostgreSQL connection that the server has closed.

    Instead of ``pool_pre_ping`` (a ``SELECT 1`` round trip per checkout, one
    per request), look at the socket: an idle connection never has anything
    to read unless the server closed it (a restart, a terminated backend, a
    proxy that dropped it: EOF, or a FATAL message and EOF). Raising
    DisconnectionError makes the pool discard it and connect anew. A server
    that vanished without closing anything (a dead host) is still met by the
    first query, which fails with a 503 and invalidates the pool, so the next
    request reconnects.
    """

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        if dbapi_connection.closed or _readable(dbapi_connection.fileno()):
            raise DisconnectionError("the server closed this pooled connection")


@contextmanager
def autocommit(conn: Connection) -> Iterator[Connection]:
    """Run a lone read on ``conn`` in autocommit: one round trip, not three.

    psycopg2 sends a BEGIN before the first statement of a transaction, and the
    transaction then needs a ROLLBACK. In autocommit it sends the statement
    alone, and the connection goes back to the pool with nothing to end.
    SQLAlchemy's ``isolation_level="AUTOCOMMIT"`` does the same but, on the
    connection's return to the pool, resets it with a SET: a round trip again.
    Other drivers (SQLite) run the read as they are.
    """
    driver = conn.connection.driver_connection
    if conn.dialect.driver != "psycopg2" or driver is None:
        yield conn
        return
    driver.autocommit = True
    try:
        yield conn
    finally:
        if not driver.closed:
            driver.autocommit = False


def writes_in_ctes(conn: Connection | Engine) -> bool:
    """Whether the database runs data-modifying CTEs (``WITH x AS (UPDATE ...)``),
    so a change and its event log can be one statement: PostgreSQL, not SQLite."""
    return conn.dialect.name == "postgresql"


@contextmanager
def single_write(engine: Engine) -> Iterator[Connection]:
    """A connection for one write that is a single statement where the database
    allows it (``writes_in_ctes``), and the reads beside it: on PostgreSQL in
    autocommit, one round trip per statement; elsewhere one transaction."""
    if writes_in_ctes(engine):
        with engine.connect() as conn, autocommit(conn):
            yield conn
    else:
        with engine.begin() as conn:
            yield conn


def _readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))


def serialise_sqlite(engine: Engine) -> None:
    """SQLite has no row locks: take the write lock at BEGIN, so transactions
    run one at a time and the confirm's count stays exact (embedded mode only)."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
