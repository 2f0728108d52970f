"""The workers' settings, read from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from service.config import ConfigError


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not 0 < value < 86_400:
        raise ConfigError(f"{name} must be between 0 and 86400 seconds, got {raw!r}")
    return value


@dataclass(frozen=True)
class WorkerConfig:
    relay_interval: float = 2.0
    reaper_interval: float = 1.0
    reconcile_interval: float = 30.0
    # Longest wait after repeated failures (an outage), between retries.
    max_backoff: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerConfig:
        env = os.environ if env is None else env
        return cls(
            relay_interval=_seconds(env, "RELAY_INTERVAL_SECONDS", 2.0),
            reaper_interval=_seconds(env, "REAPER_INTERVAL_SECONDS", 1.0),
            reconcile_interval=_seconds(env, "RECONCILE_INTERVAL_SECONDS", 30.0),
            max_backoff=_seconds(env, "WORKER_MAX_BACKOFF_SECONDS", 30.0),
        )
