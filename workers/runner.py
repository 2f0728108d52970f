"""Run periodic jobs in one thread: locks, backoff on failure, a graceful stop."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis.exceptions
from sqlalchemy.exc import SQLAlchemyError

from service.config import ConfigError
from service.queue import TicketQueue

log = logging.getLogger("workers")

# Longest single sleep: a stop request is noticed at least this often.
TICK = 0.1

# What an outage of PostgreSQL or Redis raises: logged briefly and retried.
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.RedisError,
    SQLAlchemyError,  # DBAPIError (a lost connection) among them
    ConnectionError,
    TimeoutError,
)


class Stopping(Exception):
    """Raised inside a long step (a rebuild) when a stop was requested."""


@dataclass
class Job:
    """One loop: ``step`` runs every ``interval`` seconds while the lock is free."""

    name: str
    interval: float
    step: Callable[[], None]
    # How long the lock outlives a process that died holding it.
    lock_ttl: float = 10.0
    next_run: float = 0.0
    failures: int = 0
    # False: no Redis lock, for a job whose steps are safe side by side on their
    # own (PostgreSQL claims) and that should go on while Redis is down.
    locked: bool = True
    # Called once when the loop ends (after the last step), e.g. to wait for
    # work the job handed to threads.
    on_stop: Callable[[], None] | None = None


class Runner:
    """Runs jobs until ``stop()``; a step in progress always finishes first."""

    def __init__(
        self,
        queue: TicketQueue,
        jobs: list[Job],
        *,
        max_backoff: float = 30.0,
        after_step: Callable[[], None] | None = None,
    ) -> None:
        self.queue = queue
        self.jobs = jobs
        self.max_backoff = max_backoff
        self.after_step = after_step or (lambda: None)
        self.stopping = False

    def stop(self, *_: object) -> None:
        """Ask the loop to end after the current step (safe in a signal handler)."""
        self.stopping = True

    def check_stop(self) -> None:
        """For long steps: abandon the step if a stop was requested."""
        if self.stopping:
            raise Stopping

    def run(self) -> None:
        while not self.stopping:
            for job in sorted(self.jobs, key=lambda j: j.next_run):
                if self.stopping:
                    break
                if job.next_run <= time.monotonic():
                    self.run_once(job)
            self._sleep_until(min(job.next_run for job in self.jobs))
        self._stop_jobs()

    def _stop_jobs(self) -> None:
        for job in self.jobs:
            if job.on_stop is not None:
                job.on_stop()

    def _sleep_until(self, when: float) -> None:
        # Short sleeps rather than an Event: a signal handler may only set a flag.
        while not self.stopping:
            left = when - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, TICK))

    def run_once(self, job: Job) -> None:
        """Run one step of ``job`` under its lock; on failure schedule a retry with backoff."""
        try:
            if not job.locked:
                job.step()
            elif (token := self.queue.acquire_lock(job.name, int(job.lock_ttl * 1000))) is None:
                log.debug("%s: another worker holds the lock; skipping this round", job.name)
            else:
                try:
                    job.step()
                finally:
                    self._release(job.name, token)
        except ConfigError:
            raise
        except Stopping:
            log.info("%s: stopped before it finished; it resumes on the next start", job.name)
            return
        except OUTAGE_ERRORS as exc:
            job.failures += 1
            delay = self._backoff(job)
            log.warning(
                "%s failed (%s: %s); retrying in %.1fs",
                job.name,
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
                delay,
            )
            job.next_run = time.monotonic() + delay
            return
        except Exception:  # noqa: BLE001 - a bug in one step must not stop the others
            job.failures += 1
            delay = self._backoff(job)
            log.exception("%s failed unexpectedly; retrying in %.1fs", job.name, delay)
            job.next_run = time.monotonic() + delay
            return
        finally:
            self.after_step()
        if job.failures:
            log.info("%s: working again after %d failed attempt(s)", job.name, job.failures)
        job.failures = 0
        job.next_run = time.monotonic() + job.interval

    def _backoff(self, job: Job) -> float:
        # Exponential from the job's interval, capped, with jitter so that
        # several workers do not retry against a recovering server in step.
        base = min(job.interval * 2 ** min(job.failures, 16), self.max_backoff)
        return float(base * random.uniform(0.5, 1.0))

    def _release(self, name: str, token: str) -> None:
        try:
            self.queue.release_lock(name, token)
        except redis.exceptions.RedisError as exc:
            # The lock expires on its own after its TTL.
            log.warning("%s: could not release the lock (%s)", name, exc)
