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

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerConfig:
        env = os.environ if env is None else env
        return cls(
            relay_interval=read_seconds(env, "RELAY_INTERVAL_SECONDS", 2.0),
            reaper_interval=read_seconds(env, "REAPER_INTERVAL_SECONDS", 1.0),
            reconcile_interval=read_seconds(env, "RECONCILE_INTERVAL_SECONDS", 30.0),
            max_backoff=read_seconds(env, "WORKER_MAX_BACKOFF_SECONDS", 30.0),
        )
