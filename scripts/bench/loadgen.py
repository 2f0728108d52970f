"""Drive a server with wrk and agents.lua; read back what the script measured."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import math
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parent / "agents.lua"
INSTALL_HINT = "wrk is missing: install it with `apt-get update && apt-get install -y wrk`"


class LoadError(RuntimeError):
    pass


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise LoadError(INSTALL_HINT)
    return path


@dataclass
class Load:
    """What one wrk run measured. Latencies in milliseconds, measured per request kind."""

    mode: str
    requests: int  # every HTTP request answered (fetches and sales)
    seconds: float  # wrk's run time (for cold: first request sent -> last answer)
    rps: float
    fetches: int
    fetch_p50_ms: float
    fetch_p99_ms: float
    sells: int
    sell_p50_ms: float
    sell_p99_ms: float
    short: int  # fetches answered with fewer tickets than the capacity
    lost: int  # answers that named no agent (errors, empty holdings)
    starved: int  # requests sent with no idle agent (a runner bug)
    bad_status: int  # non-200 answers the script recognised
    socket_errors: int
    status_errors: int  # wrk's count of 4xx/5xx answers
    wrk_p50_ms: float  # wrk's own histogram (with its coordinated-omission correction)
    wrk_p99_ms: float
    complete: bool  # cold: every agent got its answer before the timeout

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def problems(self) -> list[str]:
        found = []
        if self.lost or self.bad_status or self.status_errors:
            found.append(
                f"{self.lost} unattributed answers, {self.bad_status + self.status_errors}"
                " error statuses"
            )
        if self.socket_errors:
            found.append(f"{self.socket_errors} socket errors")
        if self.starved:
            found.append(f"{self.starved} requests found no idle agent")
        if self.short:
            found.append(f"{self.short} fetches came back short (pool ran dry?)")
        if not self.complete:
            found.append("not every agent was answered")
        if not self.fetches:
            found.append("no fetch was answered")
        return found


def _read(path: Path) -> dict[str, float]:
    values = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        values[key] = float(value)
    return values


def run(
    url: str,
    mode: str,
    tokens: Path,
    capacity: int,
    threads: int,
    connections: int,
    seconds: float,
    timeout: float = 60.0,
    think_ms: int = 0,
) -> Load:
    """One wrk run. ``cold`` runs until every agent is answered (or ``timeout``).
    ``think_ms``: each connection's pause after an answer (0: flat out)."""
    if mode == "cold":
        return cold_fill(url, tokens, capacity, connections, timeout)
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        out = Path(tmp) / "out.txt"
        done_dir = Path(tmp) / "done"
        done_dir.mkdir()
        duration = int(timeout) if mode == "cold" else max(1, round(seconds))
        argv = [
            wrk_path(),
            "--threads",
            str(threads),
            "--connections",
            str(connections),
            "--duration",
            f"{duration}s",
            "--timeout",
            f"{int(timeout)}s",
            "--script",
            str(SCRIPT),
            url,
            "--",
            mode,
            str(tokens),
            str(threads),
            str(capacity),
            str(done_dir),
            str(think_ms),
        ]
        env = {**os.environ, "BENCH_WRK_OUT": str(out)}
        proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        complete = True
        if mode == "cold":
            # wrk sleeps for its whole duration; SIGINT ends it once every
            # thread has all its answers.
            deadline = time.monotonic() + timeout
            while proc.poll() is None and len(list(done_dir.iterdir())) < threads:
                if time.monotonic() > deadline:
                    complete = False
                    break
                time.sleep(0.02)
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=timeout + 30)
        if proc.returncode != 0 or not out.exists():
            raise LoadError(f"wrk failed ({proc.returncode}):\n{output}")
        v = _read(out)
    seconds_run = v["duration_us"] / 1e6
    if mode == "cold":
        seconds_run = v["span_us"] / 1e6 or seconds_run
    answered = v["assign_count"] + v["sell_count"]
    return Load(
        mode=mode,
        requests=int(v["requests"]),
        seconds=round(seconds_run, 3),
        rps=round(answered / seconds_run, 1) if seconds_run else 0.0,
        fetches=int(v["assign_count"]),
        fetch_p50_ms=round(v["assign_p50_us"] / 1000, 2),
        fetch_p99_ms=round(v["assign_p99_us"] / 1000, 2),
        sells=int(v["sell_count"]),
        sell_p50_ms=round(v["sell_p50_us"] / 1000, 2),
        sell_p99_ms=round(v["sell_p99_us"] / 1000, 2),
        short=int(v["short"]),
        lost=int(v["lost"]),
        starved=int(v["starved"]),
        bad_status=int(v["bad_assign"] + v["bad_sell"]),
        socket_errors=int(
            v["errors_connect"] + v["errors_read"] + v["errors_write"] + v["errors_timeout"]
        ),
        status_errors=int(v["errors_status"]),
        wrk_p50_ms=round(v["wrk_p50_us"] / 1000, 2),
        wrk_p99_ms=round(v["wrk_p99_us"] / 1000, 2),
        complete=complete and (mode != "cold" or v["assign_count"] > 0),
    )


def _percentile(sorted_ms: list[float], p: float) -> float:
    if not sorted_ms:
        return 0.0
    rank = max(1, math.ceil(p / 100 * len(sorted_ms)))
    return round(sorted_ms[rank - 1], 2)


def cold_fill(url: str, tokens: Path, capacity: int, concurrency: int, timeout: float) -> Load:
    """Every agent fetches once, ``concurrency`` at a time, from a small client pool.

    Not wrk: once its agents are used up, a wrk connection reconnects and idles
    without sending, and a sync gunicorn worker that accepts such a connection
    waits for its request until the worker timeout, stalling the agents queued
    behind it for 30 s and more: a figure of the harness, not of the service.
    A thread pool sends exactly one request per agent and nothing else; its own
    CPU (about a millisecond per request) is small beside the server's.
    """
    agents = [line.split() for line in tokens.read_text().splitlines() if line.strip()]
    parsed = urllib.parse.urlsplit(url)

    def one(token: str) -> tuple[float, int, int]:
        conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=timeout)
        try:
            start = time.perf_counter()
            conn.request(
                "GET", "/api/agent/tickets/assign/", headers={"Authorization": f"Bearer {token}"}
            )
            reply = conn.getresponse()
            body = reply.read()
            elapsed = (time.perf_counter() - start) * 1000
        finally:
            conn.close()
        held = len(json.loads(body).get("tickets", [])) if reply.status == 200 else 0
        return elapsed, reply.status, held

    errors = 0
    results: list[tuple[float, int, int]] = []
    began = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
        for future in concurrent.futures.as_completed(
            [pool.submit(one, token) for _agent, token in agents]
        ):
            try:
                results.append(future.result())
            except OSError:
                errors += 1
    seconds = time.perf_counter() - began
    latencies = sorted(ms for ms, _status, _held in results)
    p50, p99 = _percentile(latencies, 50), _percentile(latencies, 99)
    bad = sum(1 for _ms, status, _held in results if status != 200)
    return Load(
        mode="cold",
        requests=len(results),
        seconds=round(seconds, 3),
        rps=round(len(results) / seconds, 1) if seconds else 0.0,
        fetches=len(results) - bad,
        fetch_p50_ms=p50,
        fetch_p99_ms=p99,
        sells=0,
        sell_p50_ms=0.0,
        sell_p99_ms=0.0,
        short=sum(1 for _ms, status, held in results if status == 200 and held < capacity),
        lost=0,
        starved=0,
        bad_status=bad,
        socket_errors=errors,
        status_errors=0,
        wrk_p50_ms=p50,
        wrk_p99_ms=p99,
        complete=len(results) == len(agents),
    )
