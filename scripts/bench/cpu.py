"""CPU time by who spent it: the API, the background workers, PostgreSQL, Redis.

Throughput on a shared two-core machine moves with whatever else runs on it;
the CPU seconds each process spent over a run move far less, and they say
where the time goes: the app's Python, or the database servers its round trips
wake up. Read from /proc (Linux); elsewhere every figure is None.

PostgreSQL runs one backend process per connection, and the server is shared
(other databases, its own background processes), so its CPU is split by
backend: ``pg_stat_activity`` names each backend's database and
``application_name``. The workers connect as ``tq-workers``, the benchmark's
own connections as ``tq-bench...``; any other backend of the benchmark's
database is the API's. Backends come and go (a recycled gunicorn worker opens
new ones), so a thread samples them every ``SAMPLE_SECONDS`` and a backend that
ends between two samples loses at most that much of its CPU from the count.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROC = Path("/proc")
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
POSTGRES, REDIS = "postgres", "redis-server"  # process names (comm)
WORKERS_APP = "tq-workers"  # application_name of the workers' connections
BENCH_APP = "tq-bench"  # prefix of the benchmark's own connections (seeder, audit, this probe)
SAMPLE_SECONDS = 0.5
# Every group a Usage reports, in CPU seconds over its window.
GROUPS = ("app", "workers", "pg_api", "pg_workers", "pg_rest", "redis")


def _stat(pid: int) -> tuple[str, int, float] | None:
    """(comm, parent pid, CPU seconds of the process and its reaped children)."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # comm is in parentheses and may hold spaces; the fields after it are plain.
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return comm, int(fields[1]), (utime + stime + cutime + cstime) / _TICK


def _processes() -> dict[int, tuple[str, int, float]]:
    return {int(p): s for p in os.listdir(PROC) if p.isdigit() and (s := _stat(int(p)))}


def _totals(
    stats: dict[int, tuple[str, int, float]], roots: dict[str, int | None]
) -> dict[str, float]:
    """CPU seconds so far of each root process with its children, and of each server.

    A child that exited was reaped by its parent, whose ``cutime`` now holds it,
    so the difference of two totals counts every child's CPU in between (a
    recycled gunicorn worker, an ended PostgreSQL backend) exactly once.
    """
    totals = dict.fromkeys([*roots, POSTGRES, REDIS], 0.0)
    for pid, (comm, ppid, seconds) in stats.items():
        for name, root in roots.items():
            if root is not None and root in (pid, ppid):
                totals[name] += seconds
        if comm in (POSTGRES, REDIS):
            totals[comm] += seconds
    return totals


class Backends:
    """Which PostgreSQL backends of one database are the workers' and which the API's."""

    def __init__(self, database_url: str) -> None:
        import psycopg2
        from sqlalchemy.engine import make_url

        url = make_url(database_url).set(drivername="postgresql")
        url = url.update_query_dict({"application_name": f"{BENCH_APP}-cpu"})
        self._conn: Any = psycopg2.connect(url.render_as_string(hide_password=False))
        self._conn.autocommit = True

    def groups(self) -> dict[int, str]:
        """backend pid -> ``pg_workers`` or ``pg_api``; the benchmark's own are left out."""
        with self._conn.cursor() as cur:
            cur.execute(
                "SELECT pid, application_name FROM pg_stat_activity"
                " WHERE datname = current_database() AND backend_type = 'client backend'"
            )
            rows = cur.fetchall()
        return {
            pid: "pg_workers" if name == WORKERS_APP else "pg_api"
            for pid, name in rows
            if not (name or "").startswith(BENCH_APP)
        }

    def close(self) -> None:
        self._conn.close()


@dataclass
class Usage:
    """CPU seconds each group spent over a window of ``seconds`` (see ``GROUPS``)."""

    seconds: float
    spent: dict[str, float]
    backends: dict[str, int] = field(default_factory=dict)  # backends seen, by group

    def per_request(self, requests: int) -> dict[str, float] | None:
        """The API's milliseconds of CPU per request: its gunicorn workers, its own
        PostgreSQL backends, Redis, and their total."""
        if requests <= 0:
            return None
        ms = {
            "app": self.spent["app"],
            "postgres": self.spent["pg_api"],
            "redis": self.spent["redis"],
        }
        out = {name: s * 1000 / requests for name, s in ms.items()}
        out["total"] = sum(out.values())
        return {name: round(v, 3) for name, v in out.items()}

    def percent(self) -> dict[str, float]:
        """Each group's CPU as a percentage of one core over the window."""
        if self.seconds <= 0:
            return dict.fromkeys(GROUPS, 0.0)
        return {name: round(100 * s / self.seconds, 2) for name, s in self.spent.items()}

    def workers(self) -> dict[str, Any]:
        """The background workers' share of one core: their process, their backends."""
        pct = self.percent()
        return {
            "process_pct": pct["workers"],
            "postgres_pct": pct["pg_workers"],
            "total_pct": round(pct["workers"] + pct["pg_workers"], 2),
            "backends": self.backends.get("pg_workers", 0),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 3),
            "spent": {name: round(s, 3) for name, s in self.spent.items()},
            "percent": self.percent(),
            "backends": self.backends,
        }


class Meter:
    """CPU of the API (gunicorn ``app_pid`` and its workers), of the background
    workers (``workers_pid``), of their PostgreSQL backends and of Redis, from
    ``start()`` to ``stop()``."""

    def __init__(self, app_pid: int | None, workers_pid: int | None, database_url: str) -> None:
        self.roots = {"app": app_pid, "workers": workers_pid}
        self.database_url = database_url
        self._backends: Backends | None = None
        self._first: dict[int, float] = {}  # every process's CPU at the start
        self._last: dict[int, float] = {}  # each tracked backend's CPU when last seen
        self._group: dict[int, str] = {}  # tracked backend -> its group
        self._start_totals: dict[str, float] = {}
        self._started = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Meter:
        if not PROC.is_dir():
            return self
        self._backends = Backends(self.database_url)
        stats = _processes()
        self._first = {pid: s[2] for pid, s in stats.items()}
        self._start_totals = _totals(stats, self.roots)
        self._started = time.monotonic()
        self._sample()
        self._thread = threading.Thread(target=self._run, name="cpu-meter", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self._sample()

    def _sample(self) -> None:
        assert self._backends is not None
        self._group.update(self._backends.groups())
        for pid in self._group:
            stat = _stat(pid)
            if stat is not None and stat[0] == POSTGRES:
                self._last[pid] = stat[2]

    def stop(self) -> Usage | None:
        """The usage over the window; None where /proc is missing."""
        if self._thread is None or self._backends is None:
            return None
        self._stop.set()
        self._thread.join()
        self._sample()
        seconds = time.monotonic() - self._started
        end = _totals(_processes(), self.roots)
        self._backends.close()
        spent = {name: max(end[name] - self._start_totals[name], 0.0) for name in self.roots}
        spent["redis"] = max(end[REDIS] - self._start_totals[REDIS], 0.0)
        counts: dict[str, int] = {}
        for group in ("pg_api", "pg_workers"):
            pids = [pid for pid, g in self._group.items() if g == group and pid in self._last]
            # A backend born in the window started from nothing.
            spent[group] = sum(max(self._last[p] - self._first.get(p, 0.0), 0.0) for p in pids)
            counts[group] = len(pids)
        postgres = max(end[POSTGRES] - self._start_totals[POSTGRES], 0.0)
        # The rest of the server: its background processes, other databases, the
        # benchmark's own connections, and what ended backends spent after their
        # last sample.
        spent["pg_rest"] = max(postgres - spent["pg_api"] - spent["pg_workers"], 0.0)
        return Usage(seconds, {g: spent[g] for g in GROUPS}, counts)
