"""Client processes for the concurrency tests: agents that fetch and sell over HTTP.

Each client process runs one thread per agent, each with its own HTTP session,
so every agent's requests are sequential while hundreds of agents are active
at once. Every process starts only when all are ready, and writes what the
server answered to a JSON file the test reads back.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

# Client processes fork from a server process that imported this module once:
# cheaper than spawning a fresh interpreter for each, and unlike a plain fork it
# copies nothing of the test process (its database and Redis connections).
CONTEXT = multiprocessing.get_context("forkserver")
CONTEXT.set_forkserver_preload([__name__])
TIMEOUT = 30.0


@dataclass(frozen=True)
class Fetch:
    agent: int
    start: float
    end: float
    status: int
    ids: list[int]
    # (agent_id, status) of every listed ticket, as the server serialised it
    owners: list[tuple[int | None, str]]
    capacity: int | None
    body: str


@dataclass(frozen=True)
class Sale:
    agent: int
    ticket: int
    start: float
    end: float
    status: int
    body: str


@dataclass(frozen=True)
class Created:
    ticket: int | None
    start: float
    end: float
    status: int
    body: str


@dataclass
class Results:
    fetches: list[Fetch]
    sales: list[Sale]
    created: list[Created]
    errors: list[str]


@dataclass(frozen=True)
class AgentJob:
    agent: int
    token: str
    rounds: int
    sells_per_round: int
    seed: int = 0


@dataclass(frozen=True)
class AdminJob:
    """An admin who creates ``count`` tickets while the agents work, ``pause`` s apart."""

    token: str
    count: int
    pause: float


def _fetch(http: requests.Session, base_url: str, agent: int, out: list[Any]) -> list[int]:
    start = time.time()
    response = http.get(f"{base_url}/api/agent/tickets/assign/", timeout=TIMEOUT)
    end = time.time()
    ids: list[int] = []
    owners: list[tuple[int | None, str]] = []
    capacity = None
    if response.status_code == 200:
        body = response.json()
        ids = [ticket["id"] for ticket in body["tickets"]]
        owners = [(ticket["agent_id"], ticket["status"]) for ticket in body["tickets"]]
        capacity = body["capacity"]
    out.append(
        ["fetch", agent, start, end, response.status_code, ids, owners, capacity, response.text]
    )
    return ids


def _sell(http: requests.Session, base_url: str, agent: int, ticket: int, out: list[Any]) -> None:
    start = time.time()
    response = http.post(f"{base_url}/api/agent/tickets/sell/{ticket}/", timeout=TIMEOUT)
    end = time.time()
    out.append(["sale", agent, ticket, start, end, response.status_code, response.text])


def _agent(
    base_url: str, job: AgentJob, go: threading.Event, progress: Any, out: list[Any]
) -> None:
    """Fetch, sell a few of what came back, repeat ``job.rounds`` times."""
    rng = random.Random(job.agent * 7919 + job.seed)
    try:
        with requests.Session() as http:
            http.headers["Authorization"] = f"Bearer {job.token}"
            go.wait()
            for _ in range(job.rounds):
                ids = _fetch(http, base_url, job.agent, out)
                with progress.get_lock():
                    progress.value += 1
                for ticket in rng.sample(ids, min(job.sells_per_round, len(ids))):
                    _sell(http, base_url, job.agent, ticket, out)
    except Exception:  # noqa: BLE001 - reported to the test, which fails on it
        out.append(["error", job.agent, traceback.format_exc()])


def _admin(base_url: str, job: AdminJob, go: threading.Event, out: list[Any]) -> None:
    try:
        with requests.Session() as http:
            http.headers["Authorization"] = f"Bearer {job.token}"
            go.wait()
            for i in range(job.count):
                start = time.time()
                response = http.post(
                    f"{base_url}/api/admin/tickets/", json={"title": f"late {i}"}, timeout=TIMEOUT
                )
                end = time.time()
                ticket = response.json()["id"] if response.status_code == 201 else None
                out.append(["created", ticket, start, end, response.status_code, response.text])
                time.sleep(job.pause)
    except Exception:  # noqa: BLE001 - reported to the test, which fails on it
        out.append(["error", "admin", traceback.format_exc()])


def _run(
    base_url: str, job: AgentJob | AdminJob, go: threading.Event, progress: Any, out: list[Any]
) -> None:
    if isinstance(job, AdminJob):
        _admin(base_url, job, go, out)
    else:
        _agent(base_url, job, go, progress, out)


def client_process(
    barrier: Any, progress: Any, out_path: str, base_url: str, jobs: list[AgentJob | AdminJob]
) -> None:
    """One client process: a thread per job, all released together."""
    go = threading.Event()
    logs: list[list[Any]] = [[] for _ in jobs]
    threads = [
        threading.Thread(target=_run, args=(base_url, job, go, progress, log))
        for job, log in zip(jobs, logs, strict=True)
    ]
    for thread in threads:
        thread.start()
    barrier.wait(timeout=60)
    go.set()
    for thread in threads:
        thread.join()
    Path(out_path).write_text(json.dumps([entry for log in logs for entry in log]))


class ClientProcesses:
    """Run ``client_process`` in several processes at once.

    Entering starts them and returns once every process is ready and released;
    ``progress`` counts fetches answered so far; ``join`` collects the results.
    """

    def __init__(
        self, base_url: str, groups: list[list[AgentJob | AdminJob]], out_dir: Path
    ) -> None:
        self.base_url = base_url
        self.groups = groups
        out_dir.mkdir(parents=True, exist_ok=True)
        self.out_paths = [out_dir / f"client-{i}.json" for i in range(len(groups))]
        self.barrier = CONTEXT.Barrier(len(groups) + 1)
        self._progress = CONTEXT.Value("i", 0)
        self.processes = [
            CONTEXT.Process(
                target=client_process,
                args=(self.barrier, self._progress, str(path), base_url, jobs),
                daemon=True,
            )
            for jobs, path in zip(groups, self.out_paths, strict=True)
        ]
        self.started = 0.0

    @property
    def progress(self) -> int:
        return int(self._progress.value)

    def __enter__(self) -> ClientProcesses:
        for process in self.processes:
            process.start()
        self.barrier.wait(timeout=60)
        self.started = time.time()
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            if process.is_alive():
                process.terminate()
            process.join(5)
            if process.is_alive():  # close() refuses a live process: make sure it is gone
                process.kill()
                process.join()
            process.close()

    def wait_for(self, fetches: int, timeout: float = 60.0) -> int:
        """Block until at least ``fetches`` fetches were answered; return the count."""
        deadline = time.monotonic() + timeout
        while self.progress < fetches:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.progress} of {fetches} fetches answered")
            time.sleep(0.005)
        return self.progress

    def join(self, timeout: float = 90.0) -> Results:
        deadline = time.monotonic() + timeout
        for process in self.processes:
            process.join(max(deadline - time.monotonic(), 0.1))
            if process.exitcode != 0:
                raise RuntimeError(f"client process ended with {process.exitcode}")
        results = Results([], [], [], [])
        for path in self.out_paths:
            for entry in json.loads(path.read_text()):
                kind, rest = entry[0], entry[1:]
                if kind == "fetch":
                    agent, start, end, status, ids, owners, capacity, body = rest
                    results.fetches.append(
                        Fetch(
                            agent,
                            start,
                            end,
                            status,
                            ids,
                            [tuple(o) for o in owners],
                            capacity,
                            body,
                        )
                    )
                elif kind == "sale":
                    results.sales.append(Sale(*rest))
                elif kind == "created":
                    results.created.append(Created(*rest))
                else:
                    results.errors.append(f"agent {rest[0]}: {rest[1]}")
        return results


def split(jobs: list[AgentJob], processes: int) -> list[list[AgentJob | AdminJob]]:
    """Deal jobs round-robin over ``processes`` client processes."""
    return [jobs[i::processes] for i in range(processes)]
