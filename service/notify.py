"""Telling every process what changed, through Redis pub/sub (service/live.py listens).

Three channels, under the key prefix (``TicketQueue``'s ``*_channel``):

* arrivals: ``general=2,billing=1``, what entered which queue. Published by
  the Lua scripts that queue ids (enqueue, reap, settle), in the same step as
  the ZADD, so a fetch woken by it always finds the tickets queued. Nothing
  here: the scripts do it.
* events: ``1``, ticket events were committed. Published after the commit of
  any transaction that wrote events (``events_written``), and only while an
  event stream is open somewhere (``{tq}:streaming``, which the token check
  reads on the round trip it makes anyway): without streams a write pays
  nothing. Under gevent the publish is made by a background greenlet, at most
  one per ``COALESCE_SECONDS`` per process, so no request waits for it.
* accounts: ``session:<id>`` (a logout) or ``user:<id>`` (a password, an
  activity, a presence, queues or a capacity changed), so streams end and
  waiting fetches look again at once.

A lost message costs latency, never correctness: streams re-read the events
every ``STREAM_RESCAN_SECONDS`` and re-check their tokens on every keep-alive,
and a waiting fetch that is never woken answers at the end of its wait.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any

import redis.exceptions
from flask import g, has_app_context
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from .queue import TicketQueue

log = logging.getLogger(__name__)

# At most one events message per process this often: a burst of commits
# costs the streams one read, and Redis one message.
COALESCE_SECONDS = 0.01
_WRITTEN = "tq_events_written"


def _under_gevent() -> bool:
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        return False
    return bool(monkey.is_module_patched("threading"))


def _best_effort(queue: TicketQueue, channel: str, message: str) -> None:
    try:
        queue.publish(channel, message)
    except redis.exceptions.RedisError as exc:
        # Streams re-read and re-check on their own; waiting fetches answer at
        # the end of their wait.
        log.info("could not publish %r on %s (%s)", message, channel, exc)


def session_ended(queue: TicketQueue, session: str) -> None:
    """A session logged out: its streams end, its waiting fetches answer 401."""
    _best_effort(queue, queue.accounts_channel, f"session:{session}")


def account_changed(queue: TicketQueue, user_id: int) -> None:
    """A user's account changed (after the commit): its streams re-check the
    account, its waiting fetches look again (an away agent's answer at once)."""
    _best_effort(queue, queue.accounts_channel, f"user:{user_id}")


class EventNudger:
    """Publishes on the events channel after a commit that wrote events."""

    def __init__(self, queue: TicketQueue) -> None:
        self.queue = queue
        self._wake: threading.Event | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    def nudge(self) -> None:
        if not _under_gevent():
            _best_effort(self.queue, self.queue.events_channel, "1")
            return
        self._background().set()

    def _background(self) -> threading.Event:
        import os

        pid = os.getpid()
        if self._pid != pid or self._wake is None:
            with self._lock:
                if self._pid != pid or self._wake is None:
                    self._wake = threading.Event()
                    threading.Thread(
                        target=self._run, args=(self._wake,), name="event-nudger", daemon=True
                    ).start()
                    self._pid = pid
        return self._wake

    def _run(self, wake: threading.Event) -> None:
        while True:
            wake.wait()
            wake.clear()
            _best_effort(self.queue, self.queue.events_channel, "1")
            time.sleep(COALESCE_SECONDS)


_nudgers: weakref.WeakKeyDictionary[Engine, EventNudger] = weakref.WeakKeyDictionary()


def watch_event_commits(engine: Engine, queue: TicketQueue) -> None:
    """Nudge the streams when a connection that wrote events (``events_written``
    marks it) is given back to the pool.

    SQLAlchemy's "commit" event comes before the database's COMMIT: a stream
    told then could read before the events are visible, and not look again.
    The connection goes back to the pool after its COMMIT (or ROLLBACK: a rare
    failed write then costs the streams one read that finds nothing new).

    Only a pool event: a listener on the engine's connection events would send
    every statement of every request through SQLAlchemy's slower path with
    events (a tenth of a full agent's fetch), and one added per connection costs
    as much again in SQLAlchemy's event registry.
    """
    nudger = EventNudger(queue)
    _nudgers[engine] = nudger

    @event.listens_for(engine, "checkin")
    def _given_back(_dbapi_connection: Any, record: Any) -> None:
        if record.info.pop(_WRITTEN, False):
            nudger.nudge()


def events_written(conn: Connection) -> None:
    """Events were written on ``conn`` (service/domain/events.py calls this): nudge
    the streams once they are committed. In the driver's autocommit (one-statement
    writes on PostgreSQL, service/database.py) they already are."""
    # A request learnt from its token check whether any stream is open (the
    # usual answer, no: the sale or top-up then pays nothing here); elsewhere
    # (the workers, scripts) always tell.
    if has_app_context() and not g.get("streams_open", True):
        return
    nudger = _nudgers.get(conn.engine)
    if nudger is None:
        return
    if _in_autocommit(conn):
        nudger.nudge()
        return
    info = _info(conn)
    if info is not None:
        info[_WRITTEN] = True


def _info(conn: Connection) -> dict[Any, Any] | None:
    """The connection's info, or None for a connection the driver lost (asking a
    lost connection for it would raise, and hide the error being handled)."""
    if conn.invalidated or conn.closed:
        return None
    try:
        info: dict[Any, Any] = conn.info
    except SQLAlchemyError:
        return None
    return info


def _in_autocommit(conn: Connection) -> bool:
    driver: Any = conn.connection.driver_connection
    return bool(getattr(driver, "autocommit", False)) and conn.dialect.driver == "psycopg2"
