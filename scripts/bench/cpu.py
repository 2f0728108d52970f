"""CPU time per request, split by who spent it: the app's workers, PostgreSQL, Redis.

Throughput on a shared two-core machine moves with whatever else runs on it;
the CPU seconds each process spent per answered request move far less, and
they say where the time goes: the app's Python, or the database servers its
round trips wake up. Read from /proc (Linux); elsewhere every figure is None.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# Process names (comm) of the servers every target shares.
SERVERS = {"postgres": "postgres", "redis": "redis-server"}


def _stat(pid: str) -> tuple[str, int, float] | None:
    """(comm, parent pid, CPU seconds of the process and its reaped children)."""
    try:
        raw = (PROC / pid / "stat").read_text()
    except OSError:
        return None
    # comm is in parentheses and may hold spaces; the fields after it are plain.
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return comm, int(fields[1]), (utime + stime + cutime + cstime) / _TICK


def snapshot(app_pid: int) -> dict[str, float] | None:
    """CPU seconds so far of the app (``app_pid`` and its workers) and of each server."""
    if not PROC.is_dir():
        return None
    stats = {pid: s for pid in os.listdir(PROC) if pid.isdigit() and (s := _stat(pid))}
    totals = dict.fromkeys(["app", *SERVERS], 0.0)
    for pid, (comm, ppid, seconds) in stats.items():
        if int(pid) == app_pid or ppid == app_pid:
            totals["app"] += seconds
            continue
        for name, server_comm in SERVERS.items():
            if comm == server_comm:
                totals[name] += seconds
    return totals


def per_request(
    before: dict[str, float] | None, after: dict[str, float] | None, requests: int
) -> dict[str, float] | None:
    """Milliseconds of CPU per request, by process group, and their total."""
    if before is None or after is None or requests <= 0:
        return None
    spent = {name: max(after[name] - before[name], 0.0) * 1000 / requests for name in before}
    spent["total"] = sum(spent.values())
    return {name: round(ms, 3) for name, ms in spent.items()}
