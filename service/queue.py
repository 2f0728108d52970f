"""The Redis side of assignment: key names and typed wrappers around the Lua scripts.

Every key carries one hash tag (``{tq}`` by default), so each script touches a
single slot and the same code runs on Redis Cluster. Every key a script uses is
passed through KEYS; no script builds a key name itself.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import redis

# redis.Redis and redis.RedisCluster share the command API used here.
RedisClient = Any

# Ids per ZMSCORE, and keys per pipeline, in the maintenance scans: large enough
# to amortise round trips, small enough to keep each reply quick to parse.
ZMSCORE_CHUNK = 10_000
HELD_CHUNK = 1_000


def _script(client: RedisClient, name: str) -> Any:
    source = resources.files("service").joinpath("lua", name).read_text()
    return client.register_script(source)


@dataclass(frozen=True)
class Reservation:
    """What one reserve call did."""

    used: int  # the agent's slots in use before the pop: held, and fetches in flight
    ids: list[int]
    queue_left: int
    in_flight: list[int] = field(default_factory=list)  # reserved ids PostgreSQL did not list


class TicketQueue:
    """Typed access to the queue, the held sets, reservations and the token blocklist."""

    def __init__(self, client: RedisClient, prefix: str = "{tq}") -> None:
        self.client = client
        self.prefix = prefix
        self.queue_key = f"{prefix}:queue"
        self.reserved_key = f"{prefix}:reserved"
        # Present once the state was built from PostgreSQL; gone after a wipe.
        self.epoch_key = f"{prefix}:epoch"
        # Registered once per client: redis-py sends EVALSHA and falls back to
        # EVAL when the server lost its script cache (a restart).
        self._reserve = _script(client, "reserve.lua")
        self._settle = _script(client, "settle.lua")
        self._resync = _script(client, "resync.lua")
        self._enqueue = _script(client, "enqueue.lua")
        self._reap = _script(client, "reap.lua")
        self._unlock = _script(client, "unlock.lua")
        self._mark_built = _script(client, "mark_built.lua")
        self._queue_range = _script(client, "queue_range.lua")

    # -- key names -------------------------------------------------------
    def held_key(self, agent_id: int) -> str:
        return f"{self.prefix}:held:{agent_id}"

    def revoked_key(self, session: str) -> str:
        return f"{self.prefix}:revoked:{session}"

    # -- assignment ------------------------------------------------------
    def reserve(
        self, agent_id: int, capacity: int, lease_seconds: int, known: Sequence[int]
    ) -> Reservation:
        """Pop up to the agent's free slots from the queue head and reserve them.

        ``known`` is PostgreSQL's list of the agent's unsold tickets, read just
        before: ``held`` is brought in line with it first, and the reservations
        of known ids (confirmed by an earlier fetch) are cleared.
        """
        used, ids, queue_left, in_flight = self._reserve(
            keys=[self.queue_key, self.held_key(agent_id), self.reserved_key],
            args=[capacity, lease_seconds, *known],
        )
        return Reservation(
            int(used), [int(i) for i in ids], int(queue_left), sorted(int(i) for i in in_flight)
        )

    def settle(
        self,
        agent_id: int,
        confirmed: Sequence[int],
        dropped: Sequence[int],
        returned: Sequence[int],
    ) -> int:
        """Clear reservations PostgreSQL answered; give refused ids back to the queue."""
        args: list[int] = []
        for group in (confirmed, dropped, returned):
            args.append(len(group))
            args.extend(group)
        return int(
            self._settle(
                keys=[self.queue_key, self.held_key(agent_id), self.reserved_key], args=args
            )
        )

    def resync_held(self, agent_id: int, ids: Sequence[int], gone: Sequence[int] = ()) -> int:
        """Set the agent's held set to PostgreSQL's list ``ids``, keeping its fetches in
        flight; ``gone`` ids are dropped even if reserved (taken, sold or deleted)."""
        return int(
            self._resync(
                keys=[self.held_key(agent_id), self.reserved_key],
                args=[len(ids), *ids, *gone],
            )
        )

    def held(self, agent_id: int) -> set[int]:
        return {int(i) for i in self.client.smembers(self.held_key(agent_id))}

    def forget_held(self, agent_id: int, ids: Iterable[int]) -> None:
        """Tickets the agent no longer holds (sold, released): out of its held set,
        and their reservations cleared if no fetch has cleared them yet."""
        ids = list(ids)
        if ids:
            pipe = self.client.pipeline(transaction=False)
            pipe.srem(self.held_key(agent_id), *ids)
            pipe.zrem(self.reserved_key, *ids)
            pipe.execute()

    def drop_agent(self, agent_id: int) -> None:
        self.client.delete(self.held_key(agent_id))

    # -- queue -------------------------------------------------------------
    def remove(self, ids: Iterable[int]) -> None:
        """Out of the queue and the reservations, in one round trip."""
        ids = list(ids)
        if ids:
            pipe = self.client.pipeline(transaction=False)
            pipe.zrem(self.queue_key, *ids)
            pipe.zrem(self.reserved_key, *ids)
            pipe.execute()

    def depth(self) -> tuple[int, int]:
        """(queued, reserved)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.zcard(self.queue_key)
        pipe.zcard(self.reserved_key)
        queued, reserved = pipe.execute()
        return int(queued), int(reserved)

    # -- token blocklist ---------------------------------------------------
    def revoke(self, session: str, ttl_seconds: int) -> None:
        """Mark a login session as logged out, for ``ttl_seconds``."""
        self.client.set(self.revoked_key(session), "1", ex=max(int(ttl_seconds), 1))

    def revocation(self, session: str) -> tuple[bool, bool]:
        """(revoked, trustworthy). Not trustworthy once Redis lost its data."""
        revoked, epoch = self.client.mget(self.revoked_key(session), self.epoch_key)
        return revoked is not None, epoch is not None

    def mark_built(self, epoch: str) -> None:
        self.client.set(self.epoch_key, epoch)

    def ping(self) -> bool:
        return bool(self.client.ping())

    # -- maintenance: relay, reaper, reconcile, rebuild, audit -------------
    def now(self) -> float:
        """Redis's clock (TIME), the clock reservation leases are written in."""
        seconds, micros = self.client.time()
        return int(seconds) + int(micros) / 1_000_000

    def is_built(self) -> bool:
        """Whether Redis holds state built from PostgreSQL (False after a wipe)."""
        return bool(self.client.exists(self.epoch_key))

    def absent(self, ids: Sequence[int]) -> list[int]:
        """The ids that are neither queued nor reserved."""
        queued, reserved = self._zmscores(ids)
        return [i for i, q, r in zip(ids, queued, reserved, strict=True) if q is None and r is None]

    def _zmscores(self, ids: Sequence[int | str]) -> tuple[list[Any], list[Any]]:
        queued: list[Any] = []
        reserved: list[Any] = []
        for start in range(0, len(ids), ZMSCORE_CHUNK):
            chunk = list(ids[start : start + ZMSCORE_CHUNK])
            pipe = self.client.pipeline(transaction=False)
            pipe.zmscore(self.queue_key, chunk)
            pipe.zmscore(self.reserved_key, chunk)
            q, r = pipe.execute()
            queued.extend(q)
            reserved.extend(r)
        return queued, reserved

    def queue_scores(self, ids: Sequence[int | str]) -> list[float | None]:
        """Each id's queue score, None where it is not queued."""
        return self._zmscores(ids)[0]

    def enqueue(self, ids: Iterable[int]) -> list[int]:
        """Queue ids in creation order; return those that were not queued before.

        The one way ids enter the queue (creation, release, relay, rebuild): an id
        already queued keeps its place, and an id a fetch has reserved is left
        out, since queueing it too would let a second agent pop it.
        """
        ids = list(ids)
        if not ids:
            return []
        added = self._enqueue(keys=[self.queue_key, self.reserved_key], args=ids)
        return [int(i) for i in added.split(",")] if added else []

    def queued_between(
        self, after: float | None, upto: float | None
    ) -> tuple[list[int], list[tuple[str, float]]]:
        """Queue members scored in (after, upto]: (ids whose score is the id, ascending;
        (member, score) of every other member). ``None`` leaves that end open."""
        low = "-inf" if after is None else f"({after!r}"
        high = "+inf" if upto is None else repr(upto)
        ok, odd = self._queue_range(keys=[self.queue_key], args=[low, high])
        ids = [int(i) for i in ok.split(",")] if ok else []
        return ids, [(str(m), float(s)) for m, s in zip(odd[0::2], odd[1::2], strict=True)]

    def dequeue(self, ids: Iterable[str | int]) -> int:
        """Take ids out of the queue (not out of reservations)."""
        ids = list(ids)
        return int(self.client.zrem(self.queue_key, *ids)) if ids else 0

    def fix_order(self, ids: Iterable[int]) -> int:
        """Reset each still-queued id's score to its id (ZADD XX: never queues a new id)."""
        mapping = {str(i): int(i) for i in ids}
        if not mapping:
            return 0
        return int(self.client.zadd(self.queue_key, mapping, xx=True, ch=True))

    def reservations(
        self, max_deadline: float | None = None, limit: int | None = None
    ) -> list[tuple[int, float]]:
        """(id, lease deadline) of reservations ending by ``max_deadline`` (all when None)."""
        top = "+inf" if max_deadline is None else max_deadline
        page = {} if limit is None else {"start": 0, "num": limit}
        rows = self.client.zrangebyscore(self.reserved_key, "-inf", top, withscores=True, **page)
        return [(int(member), float(score)) for member, score in rows]

    def reap(
        self, ids: Sequence[int], *, requeue: bool, cutoff: float, held_agents: Iterable[int] = ()
    ) -> list[int]:
        """End reservations whose deadline is at most ``cutoff``: requeue or just drop them.

        ``held_agents`` name held sets the ids are also taken out of.
        """
        if not ids:
            return []
        keys = [self.queue_key, self.reserved_key, *(self.held_key(a) for a in held_agents)]
        # Lua's tonumber() does not read "inf": a far-future number stands for "any lease".
        args: list[Any] = ["requeue" if requeue else "drop", repr(min(cutoff, 1e15)), *ids]
        return [int(i) for i in self._reap(keys=keys, args=args)]

    def held_sets(self, agent_ids: Sequence[int]) -> dict[int, set[int]]:
        """Every named agent's held set, in one round trip per chunk."""
        out: dict[int, set[int]] = {}
        for start in range(0, len(agent_ids), HELD_CHUNK):
            chunk = agent_ids[start : start + HELD_CHUNK]
            pipe = self.client.pipeline(transaction=False)
            for agent_id in chunk:
                pipe.smembers(self.held_key(agent_id))
            for agent_id, members in zip(chunk, pipe.execute(), strict=True):
                out[agent_id] = {int(m) for m in members}
        return out

    def held_agent_ids(self) -> set[int]:
        """Agents that have a held set in Redis (SCAN: never blocks the server)."""
        prefix = f"{self.prefix}:held:"
        pattern = "".join(f"\\{c}" if c in "*?[]\\" else c for c in prefix) + "*"
        found: set[int] = set()
        for key in self.client.scan_iter(match=pattern, count=1000):
            suffix = str(key)[len(prefix) :]
            if suffix.isdigit():
                found.add(int(suffix))
        return found

    def reserved_among(self, ids: Sequence[int]) -> set[int]:
        """The ids that are reserved right now."""
        return {i for i, r in zip(ids, self._zmscores(ids)[1], strict=True) if r is not None}

    def restore_revocations(self, entries: Iterable[tuple[str, int]], dry_run: bool = False) -> int:
        """Write missing blocklist entries (session, ttl seconds); return how many were missing."""
        entries = list(entries)
        restored = 0
        for start in range(0, len(entries), HELD_CHUNK):
            chunk = entries[start : start + HELD_CHUNK]
            pipe = self.client.pipeline(transaction=False)
            for session, ttl in chunk:
                if dry_run:
                    pipe.exists(self.revoked_key(session))
                else:
                    pipe.set(self.revoked_key(session), "1", ex=max(int(ttl), 1), nx=True)
            replies = pipe.execute()
            restored += sum(1 for r in replies if (not r if dry_run else r))
        return restored

    # -- where the background passes are ---------------------------------------
    def cursor_key(self, name: str) -> str:
        return f"{self.prefix}:cursor:{name}"

    def cursor_text(self, name: str) -> str | None:
        value = self.client.get(self.cursor_key(name))
        return None if value is None else str(value)

    def set_cursor_text(self, name: str, value: str | None) -> None:
        if value is None:
            self.client.delete(self.cursor_key(name))
        else:
            self.client.set(self.cursor_key(name), value)

    def cursor(self, name: str) -> int | None:
        """A rolling sweep's place (the last id it covered); None: start over."""
        value = self.cursor_text(name)
        return None if value is None else int(value)

    def set_cursor(self, name: str, value: int | None) -> None:
        self.set_cursor_text(name, None if value is None else str(value))

    # -- build marker and worker locks -------------------------------------
    def begin_build(self, ttl_seconds: int = 3600) -> str:
        """Note that a rebuild started; a wipe meanwhile deletes the note."""
        token = uuid.uuid4().hex
        self.client.set(self.build_key(token), "1", ex=ttl_seconds)
        return token

    def finish_build(self, token: str, epoch: str) -> bool:
        """Set the epoch unless Redis was wiped since ``begin_build``."""
        return bool(self._mark_built(keys=[self.build_key(token), self.epoch_key], args=[epoch]))

    def build_key(self, token: str) -> str:
        return f"{self.prefix}:building:{token}"

    def lock_key(self, name: str) -> str:
        return f"{self.prefix}:lock:{name}"

    def acquire_lock(self, name: str, ttl_ms: int) -> str | None:
        """SET NX PX: a token if the lock was free, else None."""
        token = uuid.uuid4().hex
        if self.client.set(self.lock_key(name), token, nx=True, px=max(int(ttl_ms), 1)):
            return token
        return None

    def release_lock(self, name: str, token: str) -> bool:
        """Compare-and-delete: never releases a lock that expired and passed to another holder."""
        return bool(self._unlock(keys=[self.lock_key(name)], args=[token]))


class Breaker:
    """After a Redis command timed out, fail the next ones at once for a while.

    A Redis that hangs (it accepts connections but does not answer) would cost
    every command a full timeout, and every request several: with many
    requests in flight they would all wait. Once one command has timed out,
    the others fail fast (503) for ``cooldown`` seconds; then one tries again.
    So a request waits on a hung Redis for at most about one timeout.
    """

    def __init__(self, cooldown: float) -> None:
        self.cooldown = cooldown
        self.open_until = 0.0

    def check(self) -> None:
        if time.monotonic() < self.open_until:
            raise redis.exceptions.TimeoutError(
                "Redis timed out moments ago; not waiting on it again yet"
            )

    def trip(self) -> None:
        self.open_until = time.monotonic() + self.cooldown


def _guarded(connection_class: type[Any], breaker: Breaker) -> type[Any]:
    """``connection_class`` whose every command goes through ``breaker``: the one place
    every command, pipeline and script of a client passes."""

    class Guarded(connection_class):
        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            breaker.check()
            try:
                super().send_packed_command(command, check_health)
            except redis.exceptions.TimeoutError:
                breaker.trip()
                raise

        def read_response(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return super().read_response(*args, **kwargs)
            except redis.exceptions.TimeoutError:
                breaker.trip()
                raise

    Guarded.__name__ = f"Guarded{connection_class.__name__}"
    return Guarded


def make_redis(url: str | None, cluster: bool, timeout: float = 1.0) -> RedisClient:
    """A real client for ``url``, or an in-process fakeredis (with Lua) when ``url`` is None.

    Every command waits at most ``timeout`` seconds for a connection or an answer
    (REDIS_TIMEOUT_SECONDS), and a timed-out command makes the next ones fail at
    once for as long (``Breaker``).
    """
    if url is None:
        import fakeredis

        return fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    breaker = Breaker(timeout)
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "decode_responses": True,
    }
    if cluster:
        from redis.connection import Connection, SSLConnection

        plain = SSLConnection if url.startswith("rediss://") else Connection
        return redis.RedisCluster.from_url(
            url, connection_class=_guarded(plain, breaker), **options
        )
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    pool = redis.ConnectionPool.from_url(
        url,
        # A refused or dropped connection (a restart, a failover) is retried
        # with a short backoff: every command and script here is idempotent or,
        # like reserve, leaves at worst a reservation the reaper returns. A
        # timeout is not retried: a server that stopped answering would cost
        # each call several timeouts, and every request would crawl.
        retry=Retry(
            ExponentialBackoff(cap=0.2, base=0.02),
            2,
            supported_errors=(redis.exceptions.ConnectionError,),
        ),
        health_check_interval=30,
        **options,
    )
    pool.connection_class = _guarded(pool.connection_class, breaker)
    return redis.Redis(connection_pool=pool)
