"""The Redis side of assignment: key names and typed wrappers around the Lua scripts.

Every key carries one hash tag (``{tq}`` by default), so each script touches a
single slot and the same code runs on Redis Cluster. Every key a script uses is
passed through KEYS; no script builds a key name itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis

# redis.Redis and redis.RedisCluster share the command API used here.
RedisClient = Any


def _script(client: RedisClient, name: str) -> Any:
    source = resources.files("service").joinpath("lua", name).read_text()
    return client.register_script(source)


@dataclass(frozen=True)
class Reservation:
    """What one reserve call did."""

    held_before: int
    ids: list[int]
    queue_left: int


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

    # -- key names -------------------------------------------------------
    def held_key(self, agent_id: int) -> str:
        return f"{self.prefix}:held:{agent_id}"

    def revoked_key(self, jti: str) -> str:
        return f"{self.prefix}:revoked:{jti}"

    # -- assignment ------------------------------------------------------
    def reserve(self, agent_id: int, capacity: int, lease_seconds: int) -> Reservation:
        """Pop up to the agent's free slots from the queue head and reserve them."""
        held_before, ids, queue_left = self._reserve(
            keys=[self.queue_key, self.held_key(agent_id), self.reserved_key],
            args=[capacity, lease_seconds],
        )
        return Reservation(int(held_before), [int(i) for i in ids], int(queue_left))

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

    def resync_held(self, agent_id: int, ids: Sequence[int]) -> int:
        """Set the agent's held set to PostgreSQL's list, keeping its fetches in flight."""
        return int(self._resync(keys=[self.held_key(agent_id), self.reserved_key], args=list(ids)))

    def held(self, agent_id: int) -> set[int]:
        return {int(i) for i in self.client.smembers(self.held_key(agent_id))}

    def forget_held(self, agent_id: int, ids: Iterable[int]) -> None:
        ids = list(ids)
        if ids:
            self.client.srem(self.held_key(agent_id), *ids)

    def drop_agent(self, agent_id: int) -> None:
        self.client.delete(self.held_key(agent_id))

    # -- queue -------------------------------------------------------------
    def push(self, ids: Iterable[int]) -> int:
        """Queue ids in creation order. Idempotent: a queued id is never queued twice."""
        mapping = {str(i): int(i) for i in ids}
        if not mapping:
            return 0
        return int(self.client.zadd(self.queue_key, mapping))

    def remove(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        if ids:
            self.client.zrem(self.queue_key, *ids)
            self.client.zrem(self.reserved_key, *ids)

    def depth(self) -> tuple[int, int]:
        """(queued, reserved)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.zcard(self.queue_key)
        pipe.zcard(self.reserved_key)
        queued, reserved = pipe.execute()
        return int(queued), int(reserved)

    # -- token blocklist ---------------------------------------------------
    def revoke(self, jti: str, ttl_seconds: int) -> None:
        self.client.set(self.revoked_key(jti), "1", ex=max(int(ttl_seconds), 1))

    def revocation(self, jti: str) -> tuple[bool, bool]:
        """(revoked, trustworthy). Not trustworthy once Redis lost its data."""
        revoked, epoch = self.client.mget(self.revoked_key(jti), self.epoch_key)
        return revoked is not None, epoch is not None

    def mark_built(self, epoch: str) -> None:
        self.client.set(self.epoch_key, epoch)

    def ping(self) -> bool:
        return bool(self.client.ping())


def make_redis(url: str | None, cluster: bool) -> RedisClient:
    """A real client for ``url``, or an in-process fakeredis (with Lua) when ``url`` is None."""
    if url is None:
        import fakeredis

        return fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    retry_options: dict[str, Any] = {
        "socket_timeout": 2.0,
        "socket_connect_timeout": 1.0,
        "decode_responses": True,
    }
    if cluster:
        return redis.RedisCluster.from_url(url, **retry_options)
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url,
        # A dropped connection is retried with a short backoff; reserve is safe
        # to retry because an unanswered pop only leaves a reservation that
        # the reaper returns when its lease ends.
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2),
        health_check_interval=30,
        **retry_options,
    )
