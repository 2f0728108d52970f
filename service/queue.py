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
from typing import Any, NamedTuple

import redis

# redis.Redis and redis.RedisCluster share the command API used here.
RedisClient = Any

# Ids per ZMSCORE, and keys per pipeline, in the maintenance scans: large enough
# to amortise round trips, small enough to keep each reply quick to parse.
ZMSCORE_CHUNK = 10_000
HELD_CHUNK = 1_000


def _whole(text: str) -> int:
    """A score as Lua wrote it ("%.17g"): an exact integer below 2^53."""
    return int(float(text))


def _script(client: RedisClient, name: str, *libraries: str) -> Any:
    """The script ``name``, after the shared ``libraries`` (``*.lib.lua``) it calls."""
    folder = resources.files("service").joinpath("lua")
    source = "\n".join(folder.joinpath(part).read_text() for part in (*libraries, name))
    return client.register_script(source)


# A queue's score: the priority rank (0 urgent .. 3 low) above the ticket id,
# so the lowest score is the best ticket (higher priority, then older). Scores
# are doubles, exact below 2^53: ids up to 2^50 (a million billion) fit.
PRIORITY_SHIFT = 2**50


def score(rank: int, ticket_id: int) -> int:
    return rank * PRIORITY_SHIFT + ticket_id


@dataclass(frozen=True)
class Placement:
    """Where an unassigned ticket waits: its queue and its score there."""

    ticket_id: int
    queue: str
    score: int
    left: str | None = None  # a queue it moved out of, to leave


@dataclass(frozen=True)
class Reservation:
    """What one reserve call did."""

    used: int  # the agent's slots in use before the pop: held, and fetches in flight
    popped: list[Placement]  # each with the queue it came from and its score there
    queue_left: int  # tickets left in the agent's queues
    in_flight: list[int] = field(default_factory=list)  # reserved ids PostgreSQL did not list

    @property
    def ids(self) -> list[int]:
        return [p.ticket_id for p in self.popped]


class SessionCheck(NamedTuple):
    """What the token check learns from Redis in its one round trip."""

    revoked: bool
    built: bool  # Redis holds state built from PostgreSQL: its blocklist is trustworthy
    streaming: bool  # an event stream is open in some process


class _Keys:
    """The queue keys of one script call: KEYS[1..fixed] first, then each queue once."""

    def __init__(self, fixed: Sequence[str]) -> None:
        self.keys = list(fixed)
        self._index: dict[str, int] = {}

    def index(self, key: str) -> int:
        """The 1-based index (as Lua counts) of ``key``, added if new."""
        if key not in self._index:
            self.keys.append(key)
            self._index[key] = len(self.keys)
        return self._index[key]


class TicketQueue:
    """Typed access to the queues, the held sets, reservations and the token blocklist."""

    # The layout of the keys below. A new layout makes data of an older one count
    # as not built (its epoch key is another), so the workers rebuild it.
    LAYOUT = 2

    def __init__(self, client: RedisClient, prefix: str = "{tq}") -> None:
        self.client = client
        self.prefix = prefix
        self.reserved_key = f"{prefix}:reserved"
        # Present once the state was built from PostgreSQL; gone after a wipe.
        self.epoch_key = f"{prefix}:epoch:v{self.LAYOUT}"
        # Registered once per client: redis-py sends EVALSHA and falls back to
        # EVAL when the server lost its script cache (a restart).
        self._reserve = _script(client, "reserve.lua")
        self._settle = _script(client, "settle.lua", "arrivals.lib.lua")
        self._resync = _script(client, "resync.lua")
        self._enqueue = _script(client, "enqueue.lua", "arrivals.lib.lua")
        self._reap = _script(client, "reap.lua", "arrivals.lib.lua")
        self._unlock = _script(client, "unlock.lua")
        self._mark_built = _script(client, "mark_built.lua")
        self._queue_range = _script(client, "queue_range.lua")
        self._revocation = _script(client, "revocation.lua")
        self._take_slot = _script(client, "slots.lua")
        self._renew_slots = _script(client, "slots_renew.lua")
        # Pub/sub channels (service/live.py listens): what entered which queue
        # (published by the scripts that queue ids), that events were committed,
        # and that a session or an account changed.
        self.arrivals_channel = f"{prefix}:notify:arrivals"
        self.events_channel = f"{prefix}:notify:events"
        self.accounts_channel = f"{prefix}:notify:accounts"
        # Present while an event stream is open in some process: only then do
        # writers tell the streams that events were committed.
        self.streaming_key = f"{prefix}:streaming"

    # -- key names -------------------------------------------------------
    def queue_key(self, queue: str) -> str:
        """The sorted set of a queue's waiting tickets (queue names are [a-z0-9_-])."""
        return f"{self.prefix}:queue:{queue}"

    def held_key(self, agent_id: int) -> str:
        return f"{self.prefix}:held:{agent_id}"

    def revoked_key(self, session: str) -> str:
        return f"{self.prefix}:revoked:{session}"

    # -- assignment ------------------------------------------------------
    def reserve(
        self,
        agent_id: int,
        capacity: int,
        lease_seconds: int,
        known: Sequence[int],
        queues: Sequence[str],
    ) -> Reservation:
        """Reserve the best tickets of ``queues`` for the agent's free slots.

        ``known`` is PostgreSQL's list of the agent's unsold tickets, read just
        before: ``held`` is brought in line with it first, and the reservations
        of known ids (confirmed by an earlier fetch) are cleared.
        """
        keys = [self.held_key(agent_id), self.reserved_key, *map(self.queue_key, queues)]
        used, popped, queue_left, in_flight = self._reserve(
            keys=keys, args=[capacity, lease_seconds, *known]
        )
        return Reservation(
            int(used),
            [
                Placement(int(popped[i]), queues[int(popped[i + 1]) - 3], int(popped[i + 2]))
                for i in range(0, len(popped), 3)
            ],
            int(queue_left),
            sorted(int(i) for i in in_flight),
        )

    def settle(
        self,
        agent_id: int,
        confirmed: Sequence[int],
        dropped: Sequence[int],
        returned: Sequence[Placement],
    ) -> int:
        """Clear reservations PostgreSQL answered; give refused ids back to their places."""
        keys = _Keys([self.held_key(agent_id), self.reserved_key])
        args: list[Any] = [self.arrivals_channel]
        for group in (confirmed, dropped):
            args.append(len(group))
            args.extend(group)
        for place in returned:
            args += [place.ticket_id, keys.index(self.queue_key(place.queue)), place.score]
        return int(self._settle(keys=keys.keys, args=args))

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

    def is_reserved(self, ticket_id: int) -> bool:
        """Whether a fetch popped the ticket and its reservation has not ended."""
        return self.client.zscore(self.reserved_key, str(ticket_id)) is not None

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

    # -- queues ------------------------------------------------------------
    def enqueue(self, placements: Iterable[Placement]) -> list[int]:
        """Put unassigned tickets in their queues at their scores (out of a queue they
        left); return those that were not queued before.

        The one way ids enter a queue: an id a fetch has reserved is left out,
        since queueing it too would let a second agent pop it.
        """
        keys = _Keys([self.reserved_key])
        args: list[Any] = [self.arrivals_channel]
        for place in placements:
            left = keys.index(self.queue_key(place.left)) if place.left else 0
            args += [place.ticket_id, keys.index(self.queue_key(place.queue)), place.score, left]
        if len(args) == 1:
            return []
        added = self._enqueue(keys=keys.keys, args=args)
        return [int(i) for i in added.split(",")] if added else []

    def remove(self, ids: Iterable[int], queues: Iterable[str]) -> None:
        """Out of ``queues`` and out of the reservations, in one round trip."""
        ids = list(ids)
        if ids:
            pipe = self.client.pipeline(transaction=False)
            for queue in sorted(set(queues)):
                pipe.zrem(self.queue_key(queue), *ids)
            pipe.zrem(self.reserved_key, *ids)
            pipe.execute()

    def depth(self, queues: Sequence[str]) -> tuple[dict[str, int], int]:
        """({queue: ids waiting}, reservations), in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for queue in queues:
            pipe.zcard(self.queue_key(queue))
        pipe.zcard(self.reserved_key)
        *counts, reserved = pipe.execute()
        return dict(zip(queues, map(int, counts), strict=True)), int(reserved)

    # -- token blocklist ---------------------------------------------------
    def revoke(self, session: str, ttl_seconds: int) -> None:
        """Mark a login session as logged out, for ``ttl_seconds``."""
        self.client.set(self.revoked_key(session), "1", ex=max(int(ttl_seconds), 1))

    def revocation(self, session: str, seen_agent: int | None = None) -> tuple[bool, bool]:
        """(revoked, trustworthy). Not trustworthy once Redis lost its data.

        With ``seen_agent``, also notes that the agent was seen now, on the same
        round trip, unless the session was logged out: its last-seen time costs
        the request nothing more, and a stale client of a logged-out session
        does not keep the agent looking present.
        """
        revoked, built, _ = self.check_session(session, seen_agent)
        return revoked, built

    def check_session(self, session: str, seen_agent: int | None = None) -> SessionCheck:
        """``revocation``, and whether an event stream is open anywhere (so a write
        of events should tell the streams), on the same round trip."""
        if seen_agent is None:
            revoked, epoch, streaming = self.client.mget(
                self.revoked_key(session), self.epoch_key, self.streaming_key
            )
            return SessionCheck(revoked is not None, epoch is not None, streaming is not None)
        revoked, built, streaming = self._revocation(
            keys=[self.revoked_key(session), self.epoch_key, self.seen_key, self.streaming_key],
            args=[seen_agent, repr(time.time())],
        )
        return SessionCheck(bool(revoked), bool(built), bool(streaming))

    # -- notifications and long-lived connections ---------------------------
    def publish(self, channel: str, message: str) -> None:
        self.client.publish(channel, message)

    def mark_streaming(self, ttl_seconds: int) -> bool:
        """Say that a stream is open here for ``ttl_seconds``; whether it was said
        already (False: writers may not have told the streams until now)."""
        before = self.client.set(self.streaming_key, "1", ex=max(int(ttl_seconds), 1), get=True)
        return before is not None

    def slots_key(self, kind: str, user_id: int | None = None) -> str:
        """The places of long-lived connections of ``kind`` ("stream", "wait"):
        every one, or one user's."""
        base = f"{self.prefix}:slots:{kind}"
        return base if user_id is None else f"{base}:{user_id}"

    def take_slot(
        self, kind: str, user_id: int, place: str, lease: float, per_user: int, total: int
    ) -> int:
        """Take a place (0), or say which limit is reached: 1 the user's, 2 the total."""
        keys = [self.slots_key(kind, user_id), self.slots_key(kind)]
        return int(self._take_slot(keys=keys, args=[place, lease, per_user, total]))

    def renew_slots(self, kind: str, places: Sequence[tuple[str, int]], lease: float) -> int:
        """Renew the leases of ``places`` ((place, user id)) of ``kind``."""
        renewed = 0
        for start in range(0, len(places), HELD_CHUNK):
            keys = _Keys([self.slots_key(kind)])
            args: list[Any] = [lease]
            for place, user_id in places[start : start + HELD_CHUNK]:
                args += [place, keys.index(self.slots_key(kind, user_id))]
            renewed += int(self._renew_slots(keys=keys.keys, args=args))
        return renewed

    def free_slot(self, kind: str, user_id: int, place: str) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.zrem(self.slots_key(kind, user_id), place)
        pipe.zrem(self.slots_key(kind), place)
        pipe.execute()

    # -- presence ------------------------------------------------------------
    @property
    def seen_key(self) -> str:
        """Agent id -> when it last made a request on an agent route (unix seconds)."""
        return f"{self.prefix}:seen"

    def seen_after(self, after: float, limit: int) -> list[tuple[int, float]]:
        """(agent, when) of agents seen after ``after``, oldest first."""
        rows = self.client.zrangebyscore(
            self.seen_key, f"({after!r}", "+inf", withscores=True, start=0, num=limit
        )
        return [(int(member), float(when)) for member, when in rows]

    def seen(self, agent_ids: Sequence[int]) -> dict[int, float]:
        """When each of the agents was last seen, where Redis knows it."""
        if not agent_ids:
            return {}
        found = self.client.zmscore(self.seen_key, [str(a) for a in agent_ids])
        return {a: float(w) for a, w in zip(agent_ids, found, strict=True) if w is not None}

    def mark_built(self, epoch: str) -> None:
        self.client.set(self.epoch_key, epoch)

    def ping(self) -> bool:
        return bool(self.client.ping())

    # -- maintenance: relay, reaper, reconcile, rebuild, audit -------------
    def now(self) -> float:
        """Redis's clock (TIME), the clock reservation leases are written in."""
        seconds, micros = self.client.time()
        return int(seconds) + int(micros) / 1_000_000

    def is_empty(self) -> bool:
        """Whether Redis holds nothing of this service's but its locks and build notes
        (a restart without persistence, a flush)."""
        for kind in ("queue", "held", "reserved"):
            if self._scan(f"{self.prefix}:{kind}"):
                return False
        return True

    def drop_older_layouts(self) -> int:
        """Delete what older key layouts kept that this one does not read (layout 1's
        one global queue and its epoch); how many keys were there. UNLINK frees a
        large queue in the background."""
        return int(self.client.unlink(f"{self.prefix}:queue", f"{self.prefix}:epoch"))

    def is_built(self) -> bool:
        """Whether Redis holds state built from PostgreSQL (False after a wipe)."""
        return bool(self.client.exists(self.epoch_key))

    def absent(self, placements: Sequence[Placement]) -> list[int]:
        """The tickets that are neither in their queue nor reserved."""
        if not placements:
            return []
        queued, reserved = self.lookup(placements)
        return [
            p.ticket_id
            for p, q, r in zip(placements, queued, reserved, strict=True)
            if q is None and r is None
        ]

    def lookup(self, placements: Sequence[Placement]) -> tuple[list[Any], list[Any]]:
        """Each ticket's score in its queue, and its lease if reserved (None where not)."""
        queued: list[Any] = []
        reserved: list[Any] = []
        for start in range(0, len(placements), ZMSCORE_CHUNK):
            chunk = placements[start : start + ZMSCORE_CHUNK]
            by_queue: dict[str, list[int]] = {}
            for n, place in enumerate(chunk):
                by_queue.setdefault(place.queue, []).append(n)
            pipe = self.client.pipeline(transaction=False)
            for queue, positions in by_queue.items():
                pipe.zmscore(self.queue_key(queue), [chunk[n].ticket_id for n in positions])
            pipe.zmscore(self.reserved_key, [p.ticket_id for p in chunk])
            *per_queue, leases = pipe.execute()
            scores: list[Any] = [None] * len(chunk)
            for positions, found in zip(by_queue.values(), per_queue, strict=True):
                for n, value in zip(positions, found, strict=True):
                    scores[n] = value
            queued.extend(scores)
            reserved.extend(leases)
        return queued, reserved

    def queued_between(
        self, queue: str, after: float | None, upto: float | None
    ) -> tuple[list[tuple[int, int]], list[tuple[str, float]]]:
        """A queue's members scored in (after, upto]: ((id, score) of the ticket ids, in
        score order; (member, score) of every member that is no ticket id). ``None``
        leaves that end open."""
        low = "-inf" if after is None else f"({after!r}"
        high = "+inf" if upto is None else repr(upto)
        ids, scores, odd = self._queue_range(keys=[self.queue_key(queue)], args=[low, high])
        pairs = (
            list(zip(map(int, ids.split(",")), map(_whole, scores.split(",")), strict=True))
            if ids
            else []
        )
        return pairs, [(str(m), float(s)) for m, s in zip(odd[0::2], odd[1::2], strict=True)]

    def dequeue(self, queue: str, members: Iterable[str | int]) -> int:
        """Take members out of a queue (not out of reservations)."""
        members = list(members)
        return int(self.client.zrem(self.queue_key(queue), *members)) if members else 0

    def fix_scores(self, queue: str, scores: dict[int, int]) -> int:
        """Reset still-queued ids to their right scores (ZADD XX: never queues a new id)."""
        if not scores:
            return 0
        mapping = {str(i): s for i, s in scores.items()}
        return int(self.client.zadd(self.queue_key(queue), mapping, xx=True, ch=True))

    def queue_names(self) -> set[str]:
        """The queues Redis has a key for (SCAN: never blocks the server)."""
        prefix = f"{self.prefix}:queue:"
        return {key[len(prefix) :] for key in self._scan(prefix)}

    def drop_queue(self, queue: str) -> None:
        self.client.delete(self.queue_key(queue))

    def _scan(self, prefix: str) -> list[str]:
        pattern = "".join(f"\\{c}" if c in "*?[]\\" else c for c in prefix) + "*"
        return [str(key) for key in self.client.scan_iter(match=pattern, count=1000)]

    def reservations(
        self, max_deadline: float | None = None, limit: int | None = None
    ) -> list[tuple[int, float]]:
        """(id, lease deadline) of reservations ending by ``max_deadline`` (all when None)."""
        top = "+inf" if max_deadline is None else max_deadline
        page = {} if limit is None else {"start": 0, "num": limit}
        rows = self.client.zrangebyscore(self.reserved_key, "-inf", top, withscores=True, **page)
        return [(int(member), float(score)) for member, score in rows]

    def reap(
        self,
        ends: Sequence[tuple[int, Placement | None]],
        *,
        cutoff: float,
        held_agents: Iterable[int] = (),
    ) -> list[int]:
        """End the reservations whose deadline is at most ``cutoff``: each id back to its
        place (a Placement) or just dropped (None). ``held_agents`` name held sets the
        ids are also taken out of."""
        if not ends:
            return []
        held = [self.held_key(a) for a in held_agents]
        keys = _Keys([self.reserved_key, *held])
        # Lua's tonumber() does not read "inf": a far-future number stands for "any lease".
        args: list[Any] = [repr(min(cutoff, 1e15)), len(held), self.arrivals_channel]
        for ticket_id, place in ends:
            if place is None:
                args += [ticket_id, 0, 0]
            else:
                args += [ticket_id, keys.index(self.queue_key(place.queue)), place.score]
        return [int(i) for i in self._reap(keys=keys.keys, args=args)]

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
        suffixes = (key[len(prefix) :] for key in self._scan(prefix))
        return {int(s) for s in suffixes if s.isdigit()}

    def reserved_among(self, ids: Sequence[int]) -> set[int]:
        """The ids that are reserved right now."""
        found: set[int] = set()
        for start in range(0, len(ids), ZMSCORE_CHUNK):
            chunk = list(ids[start : start + ZMSCORE_CHUNK])
            leases = self.client.zmscore(self.reserved_key, chunk)
            found |= {i for i, r in zip(chunk, leases, strict=True) if r is not None}
        return found

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
