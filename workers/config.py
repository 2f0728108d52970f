"""The workers' settings, read from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from service.config import read_int, read_seconds


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
    # Webhooks (service/domain/webhook_delivery.py): how often the events are fanned
    # out and due deliveries started, endpoints sent to at once, an attempt's
    # deadline, attempts before a delivery fails, the first retry's delay and the
    # longest.
    webhook_interval: float = 1.0
    webhook_concurrency: int = 8
    webhook_timeout: float = 5.0
    webhook_max_attempts: int = 12
    webhook_retry_base: float = 40.0
    webhook_retry_max: float = 86_400.0

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
            webhook_interval=read_seconds(env, "WEBHOOK_INTERVAL_SECONDS", 1.0),
            webhook_concurrency=read_int(env, "WEBHOOK_CONCURRENCY", 8, maximum=256),
            webhook_timeout=read_seconds(env, "WEBHOOK_TIMEOUT_SECONDS", 5.0, maximum=60),
            webhook_max_attempts=read_int(env, "WEBHOOK_MAX_ATTEMPTS", 12, maximum=100),
            webhook_retry_base=read_seconds(env, "WEBHOOK_RETRY_BASE_SECONDS", 40.0, maximum=3600),
            webhook_retry_max=read_seconds(env, "WEBHOOK_RETRY_MAX_SECONDS", 86_400.0),
        )


def _optional(env: Mapping[str, str], name: str) -> float | None:
    """A rule's delay in seconds, or None (the rule is off) when unset."""
    return read_seconds(env, name, 0.0, maximum=30 * 86_400) if env.get(name) else None
