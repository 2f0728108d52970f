"""The workers' settings, read from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from service.config import read_seconds


@dataclass(frozen=True)
class WorkerConfig:
    relay_interval: float = 2.0
    reaper_interval: float = 1.0
    reconcile_interval: float = 30.0
    # Longest wait after repeated failures (an outage), between retries.
    max_backoff: float = 30.0
    # Presence: last-seen times written, and the opt-in rules (None: never).
    presence_interval: float = 5.0
    idle_offline_after: float | None = None
    offline_release_after: float | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerConfig:
        env = os.environ if env is None else env
        return cls(
            relay_interval=read_seconds(env, "RELAY_INTERVAL_SECONDS", 2.0),
            reaper_interval=read_seconds(env, "REAPER_INTERVAL_SECONDS", 1.0),
            reconcile_interval=read_seconds(env, "RECONCILE_INTERVAL_SECONDS", 30.0),
            max_backoff=read_seconds(env, "WORKER_MAX_BACKOFF_SECONDS", 30.0),
            presence_interval=read_seconds(env, "PRESENCE_INTERVAL_SECONDS", 5.0),
            idle_offline_after=_optional(env, "AGENT_IDLE_OFFLINE_SECONDS"),
            offline_release_after=_optional(env, "OFFLINE_RELEASE_SECONDS"),
        )


def _optional(env: Mapping[str, str], name: str) -> float | None:
    """A rule's delay in seconds, or None (the rule is off) when unset."""
    return read_seconds(env, name, 0.0, maximum=30 * 86_400) if env.get(name) else None
