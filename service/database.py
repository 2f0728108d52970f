"""Engine set-up particular to each database: PostgreSQL in production, SQLite embedded."""

from __future__ import annotations

import contextvars
import select
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import ConnectionPoolEntry, QueuePool


class FairGate:
    """A counting gate that lets waiters through in the order they came.

    A freed place is handed straight to the longest waiter, so a request that
    just gave a connection back cannot take it again ahead of one that has been
    waiting (threading's and gevent's semaphores let it). Cooperative under
    gevent, whose patching turns the lock and the events into greenlet ones.
    """

    def __init__(self, places: int) -> None:
        self._free = places
        self._waiters: deque[threading.Event] = deque()
        self._lock = threading.Lock()

    def enter(self, timeout: float) -> bool:
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return True
            turn = threading.Event()
            self._waiters.append(turn)
        if turn.wait(timeout):
            return True
        with self._lock:
            if turn.is_set():  # handed a place just as the wait ran out
                return True
            self._waiters.remove(turn)
            return False

    def leave(self) -> None:
        with self._lock:
            if self._waiters:
                self._waiters.popleft().set()
            else:
                self._free += 1


class FairQueuePool(QueuePool):
    """SQLAlchemy's QueuePool, handing connections out first come, first served.

    Under gevent one process serves many requests at once, and they queue for
    the pool's connections. QueuePool lets whoever asks at the right moment take
    a returned connection, so under load a few requests waited out the whole
    ``DB_POOL_TIMEOUT`` (a 503) while others were served again and again. Here a
    request first passes a gate with as many places as the pool has connections
    (pool size plus overflow), in arrival order, and only then takes one.
    """

    def __init__(self, creator: Any, pool_size: int = 5, max_overflow: int = 10, **kw: Any):
        super().__init__(creator, pool_size=pool_size, max_overflow=max_overflow, **kw)
        self._gate = FairGate(pool_size + max(max_overflow, 0))

    def _do_get(self) -> ConnectionPoolEntry:
        if not self._gate.enter(self._timeout):
            raise exc.TimeoutError(
                f"no PostgreSQL connection free within {self._timeout:g}s "
                f"(pool of {self.size()} plus {self._max_overflow} overflow, all in use)",
                code="3o7r",
            )
        try:
            return super()._do_get()
        except BaseException:
            self._gate.leave()
            raise

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        try:
            super()._do_return_conn(record)
        finally:
            self._gate.leave()


# A longer wait, for the few statements that raise PostgreSQL's statement
# timeout themselves (an operator's audit over the whole history).
_patience: contextvars.ContextVar[float | None] = contextvars.ContextVar("patience", default=None)


@contextmanager
def patience(seconds: float) -> Iterator[None]:
    """Let statements run inside this block wait up to ``seconds`` (see ``bound_waits``)."""
    token = _patience.set(seconds)
    try:
        yield
    finally:
        _patience.reset(token)


def bound_waits(connect_timeout: float, statement_timeout: float) -> None:
    """Make every wait on PostgreSQL in this process end in bounded time.

    ``statement_timeout`` is PostgreSQL's own deadline, but a server that hangs
    (frozen, or a network that drops everything) enforces nothing, and the
    driver waited forever: a request never answered, a worker never moved. The
    driver runs every operation through a wait callback instead (psycopg2's
    "green" mode), which waits on the socket with ``poll`` for at most
    ``connect_timeout`` while connecting and ``statement_timeout`` after; past
    that it raises OperationalError and psycopg2 closes the connection, so the
    request answers 503 and the pool opens a new one next time.

    The same callback serves gevent's processes: gevent's patched ``poll``
    lets the other greenlets run while one waits.
    """
    from psycopg2 import OperationalError, extensions

    def wait(conn: Any) -> None:
        setup = conn.status == extensions.STATUS_SETUP
        limit = connect_timeout if setup else _patience.get() or statement_timeout
        deadline = time.monotonic() + limit
        while True:
            state = conn.poll()
            if state == extensions.POLL_OK:
                return
            left = deadline - time.monotonic()
            if left > 0:
                if state == extensions.POLL_READ:
                    events = select.POLLIN
                elif state == extensions.POLL_WRITE:
                    events = select.POLLOUT
                else:
                    raise OperationalError(f"bad state from poll: {state}")
                # poll(), not select(): a process holding many streams has
                # descriptors past select()'s 1,024.
                poller = select.poll()
                poller.register(conn.fileno(), events | select.POLLERR | select.POLLHUP)
                if poller.poll(left * 1000):
                    continue
            what = "connecting" if setup else "answering"
            raise OperationalError(f"PostgreSQL did not finish {what} within {limit:g}s")

    extensions.set_wait_callback(wait)


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


# One SQLite write transaction at a time in this process, waited for here
# rather than in SQLite's busy handler: under gevent the busy handler sleeps in
# C and blocks every greenlet, including the one holding the lock, while this
# lock (cooperative once gevent has patched threading) lets the others wait.
# Reentrant: a greenlet that begins a second transaction goes on to SQLite,
# which refuses it after busy_timeout rather than hanging.
_sqlite_writer = threading.RLock()


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
        _sqlite_writer.acquire()
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            _sqlite_writer.release()
            raise
        connection.info["holds_sqlite_writer"] = True

    @event.listens_for(engine, "commit")
    @event.listens_for(engine, "rollback")
    def _end(connection: Any) -> None:
        if connection.info.pop("holds_sqlite_writer", False):
            _sqlite_writer.release()
