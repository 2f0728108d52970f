"""Long-polls and event streams: one hub per server process, shared by all of them.

The hub (docs/design.md, "Waiting and streams") holds, per process:

* one Redis pub/sub connection (``_listen``), never one per waiter, on the
  channels of service/notify.py: arrivals wake waiting fetches, event nudges
  wake the pump, account messages end streams and wake waiting fetches;
* the waiting fetches (``Waiter``), registered by queue in arrival order. An
  arrival of ``n`` tickets in a queue wakes at most ``n`` of them, and a
  woken fetch that leaves tickets behind passes the wake on: no herd of a
  thousand fetches for one ticket. A woken waiter runs the normal fetch,
  whose row locks decide who gets the ticket;
* the open event streams (``Stream``) and the pump (``_pump``) that reads new
  events once, with service/domain/feed.py (never skipping one still being
  committed), renders each once and hands the batch to every stream: a
  thousand streams cost one query per batch, not a thousand;
* the keeper (``_keep``): renews the leases of this process's places
  (``Slots``), says in Redis that streams are open here, and checks every
  stream's session and account once per keep-alive, in one Redis round trip
  and one query for all of them.

Everything waits on events and timers: an idle stream or waiting fetch costs
no CPU. Written against ``threading``; under gunicorn's gevent workers the
threads are greenlets and the waits cooperative. The hub starts in a process
on first use (after gunicorn's fork) and ``shutdown_all`` ends its streams and
waits when the worker stops, so a restart is not held up by them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis
import redis.exceptions
from sqlalchemy import bindparam, func, select
from sqlalchemy.engine import Engine
from werkzeug.exceptions import TooManyRequests

from . import metrics
from .database import autocommit
from .domain import events, feed, webhook_delivery
from .models import RevokedSession, TicketEvent, User
from .queue import TicketQueue

if TYPE_CHECKING:
    from flask import Flask

    from .auth import Claims

log = logging.getLogger(__name__)

# The pump reads this many events per query; a stream's catch-up as many.
PAGE = 500
# Where the pump of a process starts: this many event ids before the newest,
# read forward with the feed's rule (ids only), so an event still being
# committed then is not skipped. An event that stays uncommitted while more
# than this many later ones commit is missed by streams opened meanwhile.
START_WINDOW = 10_000
# Batches a stream may have waiting; beyond, they are dropped and the stream
# reads what it missed from the table (a slow client costs memory no more).
MAX_PENDING = 256
# A silent pub/sub connection is pinged after this long; a ping unanswered
# for as long again means the connection is dead.
PING_SECONDS = 15.0
# Retry-After of a 429 for a full limit: a waiting fetch lasts at most 30 s.
RETRY_AFTER_SECONDS = 5
# The flag that streams are open ({tq}:streaming) lives this long, and a process
# with streams sets it again this often.
STREAMING_TTL_SECONDS = 30
STREAMING_REFRESH_SECONDS = 10.0

_EVENTS = TicketEvent.__table__
_NEW_EVENTS = (
    select(*_EVENTS.c).where(_EVENTS.c.id > bindparam("after")).order_by(_EVENTS.c.id).limit(PAGE)
)
_NEW_IDS = (
    select(_EVENTS.c.id)
    .where(_EVENTS.c.id > bindparam("after"))
    .order_by(_EVENTS.c.id)
    .limit(START_WINDOW)
)
_NEWEST = select(func.max(_EVENTS.c.id))
_SETTLED_RANGE = (
    select(*_EVENTS.c)
    .where(_EVENTS.c.id > bindparam("after"), _EVENTS.c.id <= bindparam("upto"))
    .order_by(_EVENTS.c.id)
    .limit(PAGE)
)
_SETTLED_RANGE_OF_AGENT = _SETTLED_RANGE.where(_EVENTS.c.agent_id == bindparam("agent"))
_USERS = User.__table__
_ACCOUNTS = select(_USERS.c.id, _USERS.c.is_active, _USERS.c.role, _USERS.c.token_version).where(
    _USERS.c.id.in_(bindparam("ids", expanding=True))
)
_REVOKED = select(RevokedSession.sid).where(
    RevokedSession.sid.in_(bindparam("sids", expanding=True))
)


def render(row: Any) -> bytes:
    """One event as a server-sent event: its id, its type, and the webhook body
    (``webhook_delivery.body``: compact JSON, one line)."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (
        row.id,
        events.event_type(row.kind).encode(),
        webhook_delivery.body(row),
    )


# -- waiting fetches -------------------------------------------------------------
@dataclass(frozen=True)
class Mark:
    """What the hub had heard when a fetch began: a waiter registered later is woken
    at once if something arrived in its queues since (the fetch may have missed it)."""

    generation: int  # bumped at each (re)connection of the subscription
    seq: int  # bumped at each arrival


class Waiter:
    """A fetch waiting for a ticket in one of ``queues``."""

    __slots__ = ("agent_id", "session", "queues", "event", "reason", "arrival_pending")

    def __init__(self, agent_id: int, session: str, queues: Sequence[str]) -> None:
        self.agent_id = agent_id
        self.session = session
        self.queues = tuple(queues)
        self.event = threading.Event()
        self.reason: str | None = None
        # Woken by an arrival and not yet fetched: to pass on if it leaves.
        self.arrival_pending = False


# Why a waiter wakes, the strongest last: a shutdown overrides everything.
_REASONS = ("arrival", "reset", "account", "gone", "shutdown")


# -- streams ---------------------------------------------------------------------
@dataclass
class Batch:
    """Events the pump read: every event in (``start``, ``end``] that will ever
    exist, rendered, as a whole and by agent."""

    start: int
    end: int
    items: list[tuple[int, bytes]]
    by_agent: dict[int, list[tuple[int, bytes]]] = field(default_factory=dict)

    def of(self, agent: int | None) -> list[tuple[int, bytes]]:
        return self.items if agent is None else self.by_agent.get(agent, [])


class Stream:
    """One open event stream: the events of ``agent`` (or all, for None) after
    ``covered``, the last event id it has passed."""

    def __init__(self, claims: Claims, agent: int | None, covered: int) -> None:
        self.user_id = claims.user_id
        self.session = claims.session
        self.role = claims.role
        self.version = claims.version
        self.expires = claims.expires
        self.agent = agent
        self.covered = covered
        self.ended: str | None = None
        self._batches: deque[Batch] = deque()
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._idle = False  # waiting, with nothing pending: the pump may advance it

    def offer(self, batch: Batch) -> None:
        with self._lock:
            if (
                self._idle
                and not self._batches
                and batch.start <= self.covered
                and not batch.of(self.agent)
            ):
                # Nothing for this stream: it moves on without waking.
                self.covered = max(self.covered, batch.end)
                return
            if len(self._batches) >= MAX_PENDING:
                self._batches.clear()  # it reads the gap from the table instead
            self._batches.append(batch)
        self._event.set()

    def end(self, why: str) -> None:
        with self._lock:
            if self.ended is None:
                self.ended = why
        self._event.set()

    def take(self, timeout: float) -> Batch | None:
        """The next batch, or None after ``timeout`` seconds or once ended."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if self.ended is not None:
                    return None
                if self._batches:
                    self._idle = False
                    return self._batches.popleft()
                self._idle = True
                self._event.clear()
            left = deadline - time.monotonic()
            woken = left > 0 and self._event.wait(left)
            with self._lock:
                self._idle = False
            if not woken:
                return None


# -- places: how many long-lived connections, across processes --------------------
class Slots:
    """Bounded places for streams ("stream") and waiting fetches ("wait"), per user and
    in total, counted in Redis across processes with leases this process renews."""

    def __init__(self, queue: TicketQueue, config: Any) -> None:
        self.queue = queue
        self.lease = float(config["CONNECTION_LEASE_SECONDS"])
        self.limits = {
            "stream": (config["STREAMS_PER_USER"], config["STREAMS_TOTAL"]),
            "wait": (config["LONG_POLLS_PER_USER"], config["LONG_POLLS_TOTAL"]),
        }
        self.held: dict[str, tuple[str, int]] = {}  # place -> (kind, user id)

    def take(self, kind: str, user_id: int) -> str:
        per_user, total = self.limits[kind]
        place = uuid.uuid4().hex
        refused = self.queue.take_slot(kind, user_id, place, self.lease, per_user, total)
        if refused:
            what = "event streams" if kind == "stream" else "waiting fetches"
            whose = f"of this user ({per_user})" if refused == 1 else f"in all ({total})"
            raise TooManyRequests(
                f"too many open {what} {whose}; retry later", retry_after=RETRY_AFTER_SECONDS
            )
        self.held[place] = (kind, user_id)
        return place

    def free(self, place: str) -> None:
        kind, user_id = self.held.pop(place, ("", 0))
        if not kind:
            return
        try:
            self.queue.free_slot(kind, user_id, place)
        except redis.exceptions.RedisError as exc:
            log.info("place %s not freed (%s); its lease ends it", place, exc)

    def renew(self) -> None:
        by_kind: dict[str, list[tuple[str, int]]] = {}
        for place, (kind, user_id) in list(self.held.items()):
            by_kind.setdefault(kind, []).append((place, user_id))
        for kind, places in by_kind.items():
            self.queue.renew_slots(kind, places, self.lease)


def watch_client(environ: dict[str, Any], gone: Callable[[], None]) -> Callable[[], None]:
    """Call ``gone`` as soon as the client of this request closes its connection;
    return what stops watching. A stream or a waiting fetch reads nothing from its
    client, so without this a dropped client would be noticed only at the next
    write (a keep-alive, the answer), and hold its place until then.

    Under gunicorn's gevent worker: a libev watcher on the client's socket, which
    costs nothing until the socket turns readable. Elsewhere (a test client)
    nothing is watched.
    """
    sock = environ.get("gunicorn.socket")
    if sock is None or not _under_gevent():
        return lambda: None
    import gevent

    watcher = gevent.get_hub().loop.io(sock.fileno(), 1)

    def check() -> None:
        try:
            peeked = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return  # not readable after all: keep watching
        except OSError:
            peeked = b""
        watcher.stop()  # closed, or the client sent more (nothing to watch for then)
        if not peeked:
            gone()

    # The watcher's callback runs in the hub: the check runs in a greenlet.
    watcher.start(lambda: gevent.spawn(check))
    return watcher.stop


def _under_gevent() -> bool:
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        return False
    return bool(monkey.is_module_patched("socket"))


class Hub:
    """One process's listener, waiters, streams and pump (see the module's docstring)."""

    def __init__(self, app: Flask, engine: Engine) -> None:
        config = app.config
        self.queue: TicketQueue = app.extensions["ticket_queue"]
        self.engine = engine
        self.embedded = config["REDIS_URL"] is None
        self.redis_url = config["REDIS_URL"]
        self.redis_timeout = config["REDIS_TIMEOUT_SECONDS"]
        self.keepalive = float(config["STREAM_KEEPALIVE_SECONDS"])
        self.rescan = float(config["STREAM_RESCAN_SECONDS"])
        self.slots = Slots(self.queue, config)
        self.closed = False
        self.connected = False
        self._lock = threading.RLock()
        # waiting fetches
        self._generation = 0
        self._seq = 0
        self._arrived_at: dict[str, int] = {}
        self._waiting: dict[str, dict[Waiter, None]] = {}
        self._waiters: set[Waiter] = set()
        # streams and the pump
        self._streams: set[Stream] = set()
        self._position: feed.Position | None = None
        self._pump_lock = threading.Lock()
        self._pump_wake = threading.Event()
        self._quick_reads_until = 0.0
        self._hole_delay = 0.0
        # the keeper
        self._keeper_wake = threading.Event()
        self._recheck: set[int] = set()
        self._streaming_marked = float("-inf")
        self._renewed = time.monotonic()
        for target, name in (
            (self._listen, "live-listen"),
            (self._pump_loop, "live-pump"),
            (self._keep, "live-keep"),
        ):
            threading.Thread(target=target, name=name, daemon=True).start()

    def wake_keeper(self) -> None:
        """A place was taken: its lease needs renewing from now on."""
        self._keeper_wake.set()

    # -- waiting fetches -------------------------------------------------------
    def mark(self) -> Mark:
        return Mark(self._generation, self._seq)

    def register(self, waiter: Waiter, mark: Mark) -> None:
        with self._lock:
            self._waiters.add(waiter)
            for name in waiter.queues:
                self._waiting.setdefault(name, {})[waiter] = None
            self._check_mark(waiter, mark)
            if self.closed:  # the process is stopping: answer now
                self._wake(waiter, "shutdown")
        metrics.WAITING_FETCHES.inc()

    def rearm(self, waiter: Waiter, queues: Sequence[str], mark: Mark) -> None:
        """After a fetch that found nothing: wait again (on ``queues``, which an
        admin may have changed), keeping its turn in the queues it still waits on."""
        with self._lock:
            waiter.arrival_pending = False
            if tuple(queues) != waiter.queues:
                self._drop(waiter)
                waiter.queues = tuple(queues)
                self._waiters.add(waiter)
                for name in waiter.queues:
                    self._waiting.setdefault(name, {})[waiter] = None
            self._check_mark(waiter, mark)

    def unregister(self, waiter: Waiter) -> None:
        with self._lock:
            if waiter not in self._waiters:
                return
            self._drop(waiter)
            if waiter.arrival_pending:  # woken for a ticket it never fetched
                self._pass_on(waiter.queues, waiter)
        metrics.WAITING_FETCHES.dec()

    def fetched(self, waiter: Waiter, queue_left: int) -> None:
        """A woken waiter fetched; tickets still queued go to the next waiter."""
        with self._lock:
            waiter.arrival_pending = False
            if queue_left > 0:
                self._pass_on(waiter.queues, waiter)

    def gone(self, waiter: Waiter) -> None:
        """The waiter's client closed its connection."""
        with self._lock:
            self._wake(waiter, "gone")

    def wait(self, waiter: Waiter, timeout: float) -> str | None:
        """Why the waiter woke, or None after ``timeout`` seconds."""
        if timeout > 0 and not waiter.event.is_set():
            waiter.event.wait(timeout)
        with self._lock:
            reason, waiter.reason = waiter.reason, None
            waiter.event.clear()
        return reason

    def _check_mark(self, waiter: Waiter, mark: Mark) -> None:
        if mark.generation != self._generation or any(
            self._arrived_at.get(name, 0) > mark.seq for name in waiter.queues
        ):
            self._wake(waiter, "arrival")

    def _drop(self, waiter: Waiter) -> None:
        self._waiters.discard(waiter)
        for name in waiter.queues:
            waiting = self._waiting.get(name)
            if waiting is not None:
                waiting.pop(waiter, None)
                if not waiting:
                    del self._waiting[name]

    def _wake(self, waiter: Waiter, reason: str) -> None:
        if waiter.reason is None or _REASONS.index(reason) > _REASONS.index(waiter.reason):
            waiter.reason = reason
        if reason == "arrival":
            waiter.arrival_pending = True
        waiter.event.set()

    def _pass_on(self, queues: Sequence[str], leaving: Waiter | None) -> None:
        for name in queues:
            for other in self._waiting.get(name, {}):
                if other is not leaving and not other.event.is_set():
                    self._wake(other, "arrival")
                    return

    def _arrived(self, name: str, count: int) -> None:
        with self._lock:
            self._seq += 1
            self._arrived_at[name] = self._seq
            for waiter in self._waiting.get(name, {}):
                if count <= 0:
                    break
                if not waiter.event.is_set():
                    self._wake(waiter, "arrival")
                    count -= 1

    def _wake_where(self, reason: str, user: int | None = None, session: str | None = None) -> None:
        with self._lock:
            for waiter in list(self._waiters):
                if (user is None or waiter.agent_id == user) and (
                    session is None or waiter.session == session
                ):
                    self._wake(waiter, reason)

    # -- streams -----------------------------------------------------------------
    def open_stream(self, claims: Claims, agent: int | None, last_event_id: int | None) -> Stream:
        """A stream of the events after ``last_event_id`` (None: from now on)."""
        with self._pump_lock:
            if self._position is None:
                self._position = self._start_position()
            start = self._position.after
            stream = Stream(claims, agent, start if last_event_id is None else last_event_id)
            self._streams.add(stream)
            if self.closed:  # the process is stopping: the client resumes elsewhere
                stream.end("server stopping")
        metrics.OPEN_STREAMS.inc()
        # Writers tell the streams only while they know one is open: raise the
        # flag now, whenever this process last did (Redis may have lost it since;
        # the keeper keeps it up); if it was down, writes in flight may not tell,
        # so the pump reads a few times more over the next seconds. And wake the
        # pump in any case: with no stream open it sleeps without a timeout, and
        # from now on it must read at least every STREAM_RESCAN_SECONDS.
        self._mark_streaming()
        self._pump_wake.set()
        self._keeper_wake.set()
        return stream

    def close_stream(self, stream: Stream) -> None:
        with self._pump_lock:
            if stream not in self._streams:
                return
            self._streams.discard(stream)
            if not self._streams:
                self._position = None  # started afresh by the next stream
        metrics.OPEN_STREAMS.dec()

    def stream_body(self, stream: Stream, place: str, environ: dict[str, Any]) -> Iterator[bytes]:
        """What a stream sends: what it missed, then each new batch, with a comment
        every keep-alive while idle; ends when its token or account does, when
        its client goes, or when the process stops. A reconnection with
        Last-Event-ID loses nothing."""
        unwatch = watch_client(environ, lambda: stream.end("client gone"))
        try:
            # Reconnect quickly after a drop: the resume makes it lossless.
            yield b"retry: 1000\n\n"
            yield from self._catch_up(stream, self._started_at(stream))
            while stream.ended is None:
                left = stream.expires - time.time()
                if left <= 0:
                    stream.end("token expired")
                    break
                batch = stream.take(min(self.keepalive, left))
                if batch is None:
                    if stream.ended is None and stream.expires > time.time():
                        yield b": keep-alive\n\n"
                    continue
                if batch.end <= stream.covered:
                    continue
                if batch.start > stream.covered:  # batches were dropped: read the gap
                    yield from self._catch_up(stream, batch.start)
                chunk = b"".join(data for i, data in batch.of(stream.agent) if i > stream.covered)
                stream.covered = batch.end
                if chunk:
                    yield chunk
        except Exception:
            log.exception("event stream of user %s failed; the client resumes", stream.user_id)
        finally:
            unwatch()
            self.close_stream(stream)
            self.slots.free(place)

    def _started_at(self, stream: Stream) -> int:
        with self._pump_lock:
            return self._position.after if self._position is not None else stream.covered

    def _catch_up(self, stream: Stream, upto: int) -> Iterator[bytes]:
        """The stream's events in (covered, ``upto``], read from the table: every
        one of them is committed or never will be (the pump has passed them)."""
        query = _SETTLED_RANGE if stream.agent is None else _SETTLED_RANGE_OF_AGENT
        while stream.covered < upto and stream.ended is None:
            params: dict[str, Any] = {"after": stream.covered, "upto": upto}
            if stream.agent is not None:
                params["agent"] = stream.agent
            with self.engine.connect() as conn, autocommit(conn):
                rows = conn.execute(query, params).all()
            if not rows:
                stream.covered = upto
                break
            stream.covered = upto if len(rows) < PAGE else rows[-1].id
            yield b"".join(render(row) for row in rows)

    def _start_position(self) -> feed.Position:
        with self.engine.connect() as conn, autocommit(conn):
            newest = conn.scalar(_NEWEST) or 0
        position = feed.Position(max(newest - START_WINDOW, 0))
        while True:
            with self.engine.connect() as conn:
                ids, position = feed.read(conn, _NEW_IDS, position)
            if len(ids) < START_WINDOW:
                return position

    def _pump_loop(self) -> None:
        failures = 0
        while not self.closed:
            self._pump_wake.wait(self._pump_timeout(failures))
            self._pump_wake.clear()
            if self.closed or not self._streams:
                continue
            try:
                self._pump()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - PostgreSQL down: retry, streams stay open
                failures += 1
                log.warning("event pump: %s; retrying", exc)

    def _pump_timeout(self, failures: int) -> float | None:
        if not self._streams:
            return None
        if failures:
            return min(self.rescan, 0.2 * 2**failures)
        if self._position is not None and self._position.hole_newest is not None:
            # A gap waits for a transaction still running: look again soon.
            self._hole_delay = min(max(self._hole_delay * 2, 0.02), 1.0)
            return self._hole_delay
        self._hole_delay = 0.0
        if time.monotonic() < self._quick_reads_until:
            return 0.25
        return self.rescan

    def _pump(self) -> None:
        with self._pump_lock:
            for _ in range(20):  # bounded, so stream openings wait on it no longer
                before = self._position
                if before is None:
                    return
                with self.engine.connect() as conn:
                    rows, after = feed.read(conn, _NEW_EVENTS, before)
                self._position = after
                if after.after == before.after:
                    return
                batch = Batch(before.after, after.after, [])
                for row in rows:
                    item = (row.id, render(row))
                    batch.items.append(item)
                    if row.agent_id is not None:
                        batch.by_agent.setdefault(row.agent_id, []).append(item)
                for stream in list(self._streams):
                    stream.offer(batch)
                if len(rows) < PAGE:
                    return
            self._pump_wake.set()  # more to read: go on at once, after the others

    def _mark_streaming(self) -> None:
        try:
            already = self.queue.mark_streaming(STREAMING_TTL_SECONDS)
        except redis.exceptions.RedisError as exc:
            log.info("could not flag the streams in Redis (%s)", exc)
            already = False
        self._streaming_marked = time.monotonic()
        if not already:
            self._quick_reads_until = time.monotonic() + 2.0
            self._pump_wake.set()

    # -- the subscription ------------------------------------------------------------
    def _subscriber(self) -> Any:
        if self.embedded:
            return self.queue.client.pubsub()
        # A connection of its own, without the commands' timeout: it is silent
        # for as long as nothing happens (pings find a dead one).
        client = redis.Redis.from_url(
            self.redis_url,
            socket_connect_timeout=self.redis_timeout,
            socket_timeout=None,
            decode_responses=True,
        )
        return client.pubsub()

    def _listen(self) -> None:
        channels = (
            self.queue.arrivals_channel,
            self.queue.events_channel,
            self.queue.accounts_channel,
        )
        backoff = 0.1
        while not self.closed:
            pubsub = None
            try:
                pubsub = self._subscriber()
                pubsub.subscribe(*channels)
                confirmed = 0
                while confirmed < len(channels):
                    message = pubsub.get_message(timeout=max(self.redis_timeout, 1.0))
                    if message is None:
                        raise redis.exceptions.TimeoutError("no answer to SUBSCRIBE")
                    confirmed += message["type"] == "subscribe"
                self._connected()
                backoff = 0.1
                pinged = False
                while not self.closed:
                    message = pubsub.get_message(timeout=PING_SECONDS)
                    if message is None:
                        if self.embedded:
                            continue
                        if pinged:
                            raise redis.exceptions.TimeoutError("no answer to PING")
                        pubsub.ping()
                        pinged = True
                        continue
                    pinged = False
                    if message["type"] == "message":
                        self._heard(message["channel"], message["data"])
            except Exception as exc:  # noqa: BLE001 - any failure: reconnect
                if self.connected or backoff >= 1:
                    log.warning("live: Redis subscription lost (%s); reconnecting", exc)
                self.connected = False
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):  # closing a dead connection
                        pubsub.close()

    def _connected(self) -> None:
        """(Re)subscribed: what was published meanwhile is lost, so every waiter
        looks again, the pump reads, every stream's account is checked."""
        with self._lock:
            self._generation += 1
            self.connected = True
            # A Redis that restarted lost the flag that streams are open: the
            # keeper raises it again now, not at its next turn.
            self._streaming_marked = float("-inf")
        self._wake_where("reset")
        self._pump_wake.set()
        self._recheck.update(s.user_id for s in list(self._streams))
        self._keeper_wake.set()

    def _heard(self, channel: str, data: str) -> None:
        if channel == self.queue.arrivals_channel:
            for part in data.split(","):
                name, _, count = part.partition("=")
                self._arrived(name, int(count) if count.isdigit() else 1)
        elif channel == self.queue.events_channel:
            if self._streams:
                self._pump_wake.set()
        elif channel == self.queue.accounts_channel:
            kind, _, what = data.partition(":")
            if kind == "session":
                self._wake_where("account", session=what)
                for stream in list(self._streams):
                    if stream.session == what:
                        stream.end("logged out")
            elif kind == "user" and what.isdigit():
                self._wake_where("account", user=int(what))
                if any(s.user_id == int(what) for s in list(self._streams)):
                    self._recheck.add(int(what))
                    self._keeper_wake.set()

    # -- the keeper --------------------------------------------------------------------
    def _keep(self) -> None:
        checked = time.monotonic()
        while not self.closed:
            busy = bool(self._streams or self.slots.held)
            period = min(self.keepalive, self.slots.lease / 3)
            self._keeper_wake.wait(period if busy else None)
            self._keeper_wake.clear()
            now = time.monotonic()
            try:
                if self.slots.held and now - self._renewed >= self.slots.lease / 3:
                    self._renewed = now
                    self.slots.renew()
                if self._streams and now - self._streaming_marked >= STREAMING_REFRESH_SECONDS:
                    self._mark_streaming()
                if self._streams and now - checked >= self.keepalive:
                    checked = now
                    self._check_streams(None)
                elif self._recheck:
                    users, self._recheck = self._recheck, set()
                    self._check_streams(users)
            except Exception as exc:  # noqa: BLE001 - a dependency down: next time
                log.warning("live: keeper step failed (%s)", exc)

    def _check_streams(self, users: set[int] | None) -> None:
        """End the streams whose session was logged out or whose account changed
        (deactivated, a new password, another role): one Redis round trip and one
        query for all of them (``users``: only theirs)."""
        streams = [s for s in list(self._streams) if users is None or s.user_id in users]
        if not streams:
            return
        sessions = sorted({s.session for s in streams})
        pipe = self.queue.client.pipeline(transaction=False)
        for sid in sessions:
            pipe.exists(self.queue.revoked_key(sid))
        pipe.exists(self.queue.epoch_key)
        *found, built = pipe.execute()
        revoked = {sid for sid, hit in zip(sessions, found, strict=True) if hit}
        with self.engine.connect() as conn, autocommit(conn):
            if not built:  # Redis lost its blocklist: PostgreSQL's copy
                revoked |= set(conn.scalars(_REVOKED, {"sids": sessions}))
            ids = sorted({s.user_id for s in streams})
            accounts = {row.id: row for row in conn.execute(_ACCOUNTS, {"ids": ids})}
        for stream in streams:
            account = accounts.get(stream.user_id)
            if stream.session in revoked:
                stream.end("logged out")
            elif (
                account is None
                or not account.is_active
                or account.token_version != stream.version
                or account.role != stream.role
            ):
                stream.end("account changed")

    # -- stopping -------------------------------------------------------------------------
    def shutdown(self) -> None:
        """The process stops: waiting fetches answer now, streams end (their clients
        resume elsewhere with Last-Event-ID)."""
        self.closed = True
        self._wake_where("shutdown")
        for stream in list(self._streams):
            stream.end("server stopping")
        self._pump_wake.set()
        self._keeper_wake.set()


_hubs: weakref.WeakSet[Hub] = weakref.WeakSet()


def shutdown_all() -> None:
    """End every hub's streams and waits in this process (the gunicorn worker stops)."""
    for hub in list(_hubs):
        hub.shutdown()


class Live:
    """The app's handle on its hub: one per process, started on first use (so
    gunicorn's master, which forks the workers, never starts one)."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self._hub: Hub | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    def hub(self) -> Hub:
        pid = os.getpid()
        if self._hub is None or self._pid != pid:
            with self._lock:
                if self._hub is None or self._pid != pid:
                    from .extensions import db

                    with self.app.app_context():
                        engine = db.engine
                    self._hub = Hub(self.app, engine)
                    self._pid = pid
                    _hubs.add(self._hub)
        return self._hub

    def started(self) -> Hub | None:
        """This process's hub if it has started, else None (nothing is started)."""
        hub = self._hub
        return hub if hub is not None and self._pid == os.getpid() else None

    def close(self) -> None:
        """Stop this process's hub, if it started (tests)."""
        if self._hub is not None:
            self._hub.shutdown()
            self._hub = None
