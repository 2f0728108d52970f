"""Run the benchmark: ``python -m scripts.bench [--quick] [options]``.

For each target (the ceiling app, the floor, the product, the PostgreSQL-only
baseline) one gunicorn with the production settings; for each scenario a fresh
seeded state, one wrk run (for the product with ``python -m workers`` running
beside it), then the invariant audit. Scenario 5 sends no traffic at all: it
measures what the workers cost at rest. Scenario 6 runs the top-up twice, with
every agent in one queue and with agents in several of many queues, and gives
the ratio. Scenario 7 (only when named) holds thousands of event streams and waiting
fetches open beside the fast path. Results go to ``bench-results/<time>/``
(result.json, table.md, plot.png); ``--publish`` also copies the table and the
plot to docs/bench/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python scripts/bench/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    __package__ = "scripts.bench"

from . import audit as audits  # noqa: E402
from . import cpu, loadgen, profiling, report, seed, servers  # noqa: E402

ROOT = seed.ROOT
TARGETS = ("ceiling", "floor", "product", "baseline")
# Which targets each scenario runs on: the baseline only where it has something
# to say (the top-up path), the ceiling wherever there is a ratio to give, the
# floor on the fast path and the top-up (what their required work alone
# reaches), the idle backlog on the product alone (its workers at rest), the
# routing on the two that have queues.
SCENARIO_TARGETS = {
    1: ("ceiling", "floor", "product"),
    2: ("ceiling", "floor", "product", "baseline"),
    3: ("ceiling", "product", "baseline"),
    4: ("product",),
    5: ("product",),
    6: ("floor", "product"),
    7: ("product",),
}
# Scenario 7 runs only when asked for (--scenarios 7): it holds thousands of
# connections open, which the other scenarios do not need.
DEFAULT_SCENARIOS = [1, 2, 3, 4, 5, 6]
# The queue the waiting agents of scenario 7 belong to: no ticket ever enters it.
WAIT_QUEUE = "bench-wait"

FULL = {
    "agents": [100, 1000, 10_000],
    "tickets": 100_000,
    "duration": 30.0,
    "cold_agents": 1000,
    "deep_agents": 1000,
    "depths": [10_000, 1_000_000],
    "connections": 32,
    "idle_agents": 10_000,
    "idle_tickets": 1_000_000,
    "idle_seconds": 60.0,
    "settle": 5.0,
    "routing_agents": 1000,
    "open_agents": 1000,
    "open_streams": 1000,
    "open_waits": 1000,
    "open_wait": 30,
    "open_idle_seconds": 10.0,
}
QUICK = {
    "agents": [20, 100],
    "tickets": 3000,
    "duration": 3.0,
    "cold_agents": 200,
    "deep_agents": 100,
    "depths": [1000, 10_000],
    "connections": 16,
    "idle_agents": 200,
    "idle_tickets": 20_000,
    "idle_seconds": 5.0,
    "settle": 1.0,
    "routing_agents": 100,
    "open_agents": 100,
    "open_streams": 100,
    "open_waits": 100,
    "open_wait": 30,
    "open_idle_seconds": 2.0,
}


def _ints(text: str) -> list[int]:
    return [int(part.replace("_", "")) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m scripts.bench",
        description="Benchmark the assignment path against a ceiling app and a"
        " PostgreSQL-only baseline; audit the invariants after every scenario.",
    )
    p.add_argument("--quick", action="store_true", help="small scale, seconds per run")
    p.add_argument("--agents", type=_ints, help=f"agent counts (default {FULL['agents']})")
    p.add_argument("--tickets", type=int, help="unassigned tickets behind the agents' for 1, 2")
    p.add_argument("--duration", type=float, help="seconds per wrk run (default 30)")
    p.add_argument("--cold-agents", type=int, help="agents fetching at once in 3 (default 1000)")
    p.add_argument("--deep-agents", type=int, help="agents in 4 (default 1000)")
    p.add_argument("--depths", type=_ints, help="queue depths in 4 (default 10000,1000000)")
    p.add_argument("--connections", type=int, help="wrk connections (default 32)")
    p.add_argument("--idle-agents", type=int, help="agents in 5, each full (default 10000)")
    p.add_argument(
        "--idle-tickets", type=int, help="unassigned tickets queued in 5 (default 1000000)"
    )
    p.add_argument(
        "--idle-seconds", type=float, help="seconds 5 measures, with no traffic (default 60)"
    )
    p.add_argument(
        "--settle",
        type=float,
        help="seconds the workers run before a measurement starts, once any rebuild is"
        " done (default 5)",
    )
    p.add_argument("--routing-agents", type=int, help="agents in 6, each one short (default 1000)")
    p.add_argument(
        "--queues",
        type=int,
        default=50,
        help="6: the queues of the routed shape, q00, q01, ... (default 50)",
    )
    p.add_argument(
        "--per-agent",
        type=int,
        default=5,
        help="6: the queues each agent is in, of --queues (default 5)",
    )
    p.add_argument(
        "--routing-rounds",
        type=int,
        default=1,
        help="6: how many times to measure both shapes, alternating which goes first (default 1)",
    )
    p.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    p.add_argument("--capacity", type=int, default=15, help="tickets per agent (default 15)")
    p.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("WEB_CONCURRENCY") or 2 * (os.cpu_count() or 1) + 1),
        help="gunicorn workers for every target (default: WEB_CONCURRENCY, else the"
        " production default of 2 x cores + 1)",
    )
    p.add_argument(
        "--paced",
        type=float,
        default=0.7,
        help="after each of the product's steady-state runs, run it again with each"
        " connection pausing between requests, offering about this fraction of the"
        " req/s it just reached: the latency at a load below the maximum (0: off;"
        " default 0.7)",
    )
    p.add_argument(
        "--open-agents", type=int, help="full agents on the fast path in 7 (default 1000)"
    )
    p.add_argument("--open-streams", type=int, help="event streams held open in 7 (default 1000)")
    p.add_argument("--open-waits", type=int, help="fetches kept waiting in 7 (default 1000)")
    p.add_argument("--open-wait", type=int, help="seconds each fetch waits in 7 (default 30)")
    p.add_argument(
        "--open-idle-seconds",
        type=float,
        help="seconds 7 reads the CPU with the connections open and no other traffic (default 10)",
    )
    p.add_argument(
        "--scenarios",
        type=_ints,
        default=DEFAULT_SCENARIOS,
        help="e.g. 1,2 or 5 or 6; 7 (open connections) only when named",
    )
    p.add_argument("--targets", default=",".join(TARGETS), help="ceiling,floor,product,baseline")
    p.add_argument(
        "--database-url",
        default=os.environ.get(
            "BENCH_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/tq_bench"
        ),
        help="the benchmark's own database, created if missing (default tq_bench)",
    )
    p.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/8"),
        help="the benchmark's own Redis db; it is flushed (default db 8)",
    )
    p.add_argument("--results", type=Path, default=ROOT / "bench-results", help="output folder")
    p.add_argument(
        "--publish",
        action="store_true",
        help="copy table and plot to docs/bench/ (table-5.md, plot-5.png for --scenarios 5)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="sample the product's workers with py-spy during its runs (slows them a little)",
    )
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.targets = [t for t in TARGETS if t in args.targets.split(",")]
    if 6 in args.scenarios and not 1 <= args.per_agent <= args.queues:
        p.error(f"--per-agent must be 1..--queues ({args.queues}), not {args.per_agent}")
    return args


@dataclass
class Bench:
    args: argparse.Namespace
    settings: seed.Settings
    out: Path
    seeder: seed.Seeder
    rows: list[dict[str, Any]] = field(default_factory=list)
    profiles: dict[str, Any] = field(default_factory=dict)

    def log(self, message: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)

    def env(self) -> dict[str, str]:
        """The environment of every target's gunicorn and of the product's workers."""
        return {
            **self.settings.service_env(),
            "BENCH_DATABASE_URL": self.settings.database_url,
            "WEB_CONCURRENCY": str(self.args.workers),
        }

    def tokens(self, agents: int) -> Path:
        path = self.out / f"tokens-{agents}.txt"
        if not path.exists():
            self.seeder.write_tokens(path, agents)
        return path

    def prepare(
        self,
        target: str,
        agents: int,
        held: int,
        unassigned: int,
        queues: int = 1,
        per_agent: int = 1,
    ) -> int:
        """Seed the state a run starts from; the number of queued tickets."""
        if target == "ceiling":
            return 0  # it keeps no state
        info = self.seeder.seed(agents, self.args.capacity, held, unassigned, queues, per_agent)
        shape = f" in {queues} queues, {per_agent} per agent" if queues > 1 else ""
        self.log(
            f"seeded {agents} agents holding {held}, {info.queued} queued{shape}"
            f" in {info.seconds:.1f}s"
        )
        return info.queued

    @contextmanager
    def beside(
        self, target: str, running: servers.Workers | None = None
    ) -> Iterator[servers.Workers | None]:
        """The product's ``python -m workers``, started on the seeded state and settled
        (see ``settle``), then stopped after the measurement (``Workers.problem`` then
        says whether they ran and stopped cleanly); None for the other targets, which
        have no workers."""
        if target != "product" or running is not None:
            yield running
            return
        with servers.workers(self.env(), self.out / "workers.log") as started:
            self.settle()
            yield started

    def settle(self) -> float:
        """Wait until no rebuild runs (Redis holds its epoch and the rebuild lock is
        free), then ``--settle`` seconds more, so the workers' start-up (imports,
        their first steps) stays out of the measurement. Returns the seconds waited."""
        started = time.monotonic()
        queue = self.seeder.queue
        while not queue.is_built() or queue.client.exists(queue.lock_key("rebuild")):
            if time.monotonic() - started > 1800:
                raise RuntimeError("the workers' rebuild did not finish in 30 minutes")
            time.sleep(0.2)
        time.sleep(self.args.settle)
        return time.monotonic() - started

    def audit(self, target: str) -> dict[str, Any]:
        """The product's own audit (the floor shares the product's state), else SQL."""
        by, violations = (
            audits.audit_baseline(self.seeder.app)
            if target == "baseline"
            else audits.audit_product(self.seeder.app)
        )
        return {"by": by, "violations": violations}

    def measure(
        self,
        server: servers.Server,
        target: str,
        scenario: str,
        agents: int,
        mode: str,
        queued: int,
        depth: int | None = None,
        think_ms: int = 0,
        queues: int = 1,
        per_agent: int = 1,
        running: servers.Workers | None = None,
        audit_after: bool = True,
    ) -> dict[str, Any]:
        """One wrk run, with the product's workers beside it (``running`` if they
        run already), then the audit (unless ``audit_after`` is False)."""
        args = self.args
        cold = mode == "cold"
        # One idle agent more than connections per wrk thread (see agents.lua).
        # Cold fill: every agent asks once, twice the usual connections in flight
        # (loadgen.cold_fill); the sync workers serve a handful at a time anyway.
        connections = (
            min(agents, 2 * args.connections)
            if cold
            else min(args.connections, max(1, agents // 2))
        )
        threads = max(1, min(args.threads, connections))
        connections = max(connections, threads)
        name = (
            f"{target}-{scenario}-{agents}"
            + (f"-{depth}" if depth else "")
            + (f"-{queues}q{per_agent}" if queues > 1 else "")
        )
        if name in self.profiles:  # a second round of scenario 6
            name += f"-{sum(n.startswith(name) for n in self.profiles) + 1}"
        tokens = self.tokens(agents)
        with self.beside(target, running) as workers:
            sampler = None
            if args.profile and target == "product":
                raw = self.out / f"profile-{name}.txt"
                sampler = profiling.record(server.pid, raw, args.duration)
                time.sleep(0.5)  # py-spy attaches to every worker
            meter = cpu.Meter(
                server.pid, workers.pid if workers else None, self.settings.database_url
            ).start()
            load = loadgen.run(
                server.url,
                mode,
                tokens,
                args.capacity,
                threads,
                connections,
                args.duration,
                timeout=max(60.0, args.duration * 4),
                think_ms=think_ms,
            )
            usage = meter.stop()
            if sampler is not None:
                sampler.wait(timeout=args.duration + 30)
                if raw.exists():
                    self.profiles[name] = profiling.summarize(raw)
            time.sleep(0.3)  # requests the server still had in hand finish
        audit = None
        queued_after = None
        # The ceiling changes nothing, nor does the floor's fast path.
        changes = target in ("product", "baseline") or (target == "floor" and mode != "fetch")
        if changes and audit_after:
            queued_after, _ = self.seeder.queue_depth()
            audit = self.audit(target)
        row = {
            "scenario": scenario,
            "target": target,
            "agents": agents,
            "depth": depth,
            "queues": queues,
            "per_agent": per_agent,
            "queued": queued,
            "queued_after": queued_after if target == "product" else None,
            "connections": connections,
            "think_ms": think_ms,
            "rps": load.rps,
            "p50_ms": load.fetch_p50_ms,
            "p99_ms": load.fetch_p99_ms,
            "vs_ceiling": None,
            "vs_floor": None,
            "cpu_ms": usage.per_request(load.requests) if usage else None,
            "workers_cpu": usage.workers() if usage and workers else None,
            "cpu": usage.as_dict() if usage else None,
            "audit": audit,
            "problems": load.problems() + _stopped_badly(workers),
            "load": load.as_dict(),
        }
        self.rows.append(row)
        verdict = "audit n/a" if audit is None else f"{len(audit['violations'])} violations"
        cpu_ms, beside = row["cpu_ms"], row["workers_cpu"]
        self.log(
            f"{report.label(row):<32} {target:<8} agents={agents:<6}"
            f" {load.rps:>8.1f} req/s  p50 {load.fetch_p50_ms:>7.2f} ms"
            f"  p99 {load.fetch_p99_ms:>7.2f} ms  {verdict}"
            + (
                f"  CPU ms/req: app {cpu_ms['app']:.2f} pg {cpu_ms['postgres']:.2f}"
                f" redis {cpu_ms['redis']:.2f}"
                if cpu_ms
                else ""
            )
            + (
                f"  workers {beside['process_pct']:.1f}% + pg {beside['postgres_pct']:.1f}%"
                if beside
                else ""
            )
            + (f"  PROBLEMS: {'; '.join(row['problems'])}" if row["problems"] else "")
        )
        return row

    def idle(self, server: servers.Server) -> dict[str, Any]:
        """Scenario 5: a backlog and no traffic at all. ``--idle-agents`` agents, each
        full, ``--idle-tickets`` queued behind them (queued by the product's
        rebuild); the workers start, settle, and the CPU of every process is read
        over ``--idle-seconds``. Full agents: a backlog is when nobody can take more."""
        args = self.args
        agents, capacity = args.idle_agents, args.capacity
        queued = self.prepare("product", agents, capacity, args.idle_tickets)
        with self.beside("product") as workers:
            assert workers is not None
            meter = cpu.Meter(server.pid, workers.pid, self.settings.database_url).start()
            time.sleep(args.idle_seconds)
            usage = meter.stop()
        queued_after, _ = self.seeder.queue_depth()
        audit = self.audit("product")
        row = {
            "scenario": "idle",
            "target": "product",
            "agents": agents,
            "depth": None,
            "queues": 1,
            "per_agent": 1,
            "queued": queued,
            "queued_after": queued_after,
            "connections": 0,
            "think_ms": 0,
            "rps": None,
            "p50_ms": None,
            "p99_ms": None,
            "vs_ceiling": None,
            "vs_floor": None,
            "cpu_ms": None,
            "workers_cpu": usage.workers() if usage else None,
            "cpu": usage.as_dict() if usage else None,
            "audit": audit,
            "problems": ([] if usage else ["no CPU figures: /proc is missing"])
            + _stopped_badly(workers),
            "load": None,
        }
        self.rows.append(row)
        pct = usage.percent() if usage else {}
        self.log(
            f"{report.SCENARIOS['idle']:<32} product  agents={agents:<6} queued={queued}"
            f"  {len(audit['violations'])} violations"
            + (
                f"  % of a core: workers {pct['workers']:.2f} + their pg"
                f" {pct['pg_workers']:.2f}; redis {pct['redis']:.2f}, API {pct['app']:.2f},"
                f" API pg {pct['pg_api']:.2f}, rest of pg {pct['pg_rest']:.2f}"
                if pct
                else ""
            )
        )
        return row

    def open_connections(self, server: servers.Server) -> None:
        """Scenario 7: the fast path (full agents fetching) without, then with
        ``--open-streams`` event streams and ``--open-waits`` waiting fetches held
        open by one client process (connections.py), then without again once the
        server has let them go: the fast path must keep 90% of its throughput.
        The waiting agents are agents of their own, in a queue no ticket enters,
        each with one stream and one wait (sent again as soon as it is answered:
        ``--open-wait`` seconds). Between the runs, the CPU of every process is
        read over ``--open-idle-seconds`` with the connections open and nothing
        else: what they cost at rest."""
        args = self.args
        agents = args.open_agents
        queued = self.prepare("product", agents, args.capacity, args.tickets)
        holders = max(args.open_streams, args.open_waits)
        first = self.seeder.add_waiting_agents(holders, args.capacity, WAIT_QUEUE)
        tokens = self.out / "tokens-waiting.txt"
        self.seeder.write_tokens(tokens, holders, first)
        self.log(f"added {holders} waiting agents (ids {first}..{first + holders - 1})")
        with self.beside("product") as workers:
            assert workers is not None

            def fast(scenario: str) -> dict[str, Any]:
                """The fast path, measured with the workers beside it."""
                return self.measure(
                    server,
                    "product",
                    scenario,
                    agents,
                    "fetch",
                    queued,
                    running=workers,
                    audit_after=False,
                )

            before = fast("open-base")
            status = self.out / "connections.json"
            holder = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "scripts.bench.connections",
                    server.url,
                    str(tokens),
                    f"--streams={args.open_streams}",
                    f"--waits={args.open_waits}",
                    f"--wait={args.open_wait}",
                    f"--status={status}",
                ],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            try:
                opened_in = self.until_held(args.open_streams, args.open_waits, timeout=120)
                self.log(
                    f"{args.open_streams} streams and {args.open_waits} waits open"
                    f" in {opened_in:.1f}s"
                )
                meter = cpu.Meter(server.pid, workers.pid, self.settings.database_url).start()
                time.sleep(args.open_idle_seconds)
                at_rest = meter.stop()
                held = self.held()
                during = fast("open-fast")
                held_after = self.held()
            finally:
                holder.send_signal(signal.SIGTERM)
                output, _ = holder.communicate(timeout=60)
            counts = json.loads(output.strip().splitlines()[-1]) if output.strip() else {}
            released_in = self.until_held(0, 0, timeout=max(60.0, args.open_wait + 30))
            self.log(f"the server let every connection go in {released_in:.1f}s")
            after = fast("open-base")
        audit = self.audit("product")
        for row in (before, during, after):
            row["audit"] = audit
        during["open"] = {
            "streams": args.open_streams,
            "waits": args.open_waits,
            "wait_seconds": args.open_wait,
            "held_before": held,
            "held_after": held_after,
            "holder": counts,
            "at_rest": at_rest.as_dict() if at_rest else None,
            "base_rps": [before["rps"], after["rps"]],
        }
        if counts.get("refused") or counts.get("errors"):
            during["problems"].append(
                f"the connections were refused {counts.get('refused')} or failed"
                f" {counts.get('errors')} times"
            )
        # A wait is sent again as soon as it is answered: a few may be between two.
        streams_after, waits_after = held_after
        if streams_after != args.open_streams or waits_after < 0.95 * args.open_waits:
            during["problems"].append(f"held {held_after} at the end of the run")
        base = (before["rps"] + after["rps"]) / 2
        ratio = during["rps"] / base if base else 0.0
        during["open"]["ratio"] = round(ratio, 3)
        self.log(f"open connections: the fast path kept {ratio:.3f} of its throughput")

    def held(self) -> tuple[int, int]:
        """(streams, waits) the server holds now, as their places in Redis say: those
        whose lease runs (a place whose release failed is left to its lease)."""
        queue = self.seeder.queue
        now = queue.now()
        pipe = queue.client.pipeline(transaction=False)
        pipe.zcount(queue.slots_key("stream"), now, "+inf")
        pipe.zcount(queue.slots_key("wait"), now, "+inf")
        streams, waits = pipe.execute()
        return int(streams), int(waits)

    def until_held(self, streams: int, waits: int, timeout: float) -> float:
        """Wait until the server holds ``streams`` and ``waits`` (at least, or none
        when both are 0); the seconds waited."""

        def reached() -> bool:
            now = self.held()
            if streams == waits == 0:
                return now == (0, 0)
            return now[0] >= streams and now[1] >= waits

        started = time.monotonic()
        while not reached():
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"the server holds {self.held()}, not {(streams, waits)}")
            time.sleep(0.2)
        return time.monotonic() - started

    def paced(self, server: servers.Server, agents: int, flat_out: dict[str, Any]) -> None:
        """Steady state again, each connection pausing after every answer so that
        together they offer about ``--paced`` of ``flat_out``'s req/s: the latency
        an operator sees below the maximum, where a flat-out run measures mostly
        the wait in the listen queue. The pause ignores the requests' own time,
        so the load offered comes out a little under the aim; the row says what
        it reached."""
        connections = flat_out["connections"]
        think_ms = max(1, round(1000 * connections / (self.args.paced * flat_out["rps"])))
        queued = self.prepare("product", agents, self.args.capacity - 1, self.args.tickets)
        row = self.measure(
            server, "product", "steady-paced", agents, "topup", queued, think_ms=think_ms
        )
        row["of_max"] = round(row["rps"] / flat_out["rps"], 3)

    def topup_headroom(self) -> int:
        """Tickets a top-up run consumes (one per cycle), from scenario 2's pace, doubled."""
        rates = [
            r["load"]["fetches"] / r["load"]["seconds"]
            for r in self.rows
            if r["scenario"] == "steady" and r["target"] == "product" and r["load"]["seconds"]
        ]
        pace = max(rates) if rates else 1000.0
        return int(pace * self.args.duration * 2) + 1000

    def routing(self, server: servers.Server, target: str) -> None:
        """Scenario 6: the steady-state top-up with every agent in the one queue, then
        with the tickets dealt over ``--queues`` queues and each agent in
        ``--per-agent`` of them (reserve.lua then picks the best of that many
        queue heads), ``--routing-rounds`` times, each round starting with the
        shape the last one ended with, so a drift of the machine's speed
        weighs on both. report.routing gives the ratios."""
        args = self.args
        agents, short = args.routing_agents, args.capacity - 1
        pool = max(args.tickets, self.topup_headroom())
        shapes = [(1, 1), (args.queues, args.per_agent)]
        for n in range(args.routing_rounds):
            for queues, per_agent in shapes if n % 2 == 0 else shapes[::-1]:
                queued = self.prepare(target, agents, short, pool, queues, per_agent)
                scenario = "route-one" if queues == 1 else "route-many"
                row = self.measure(
                    server,
                    target,
                    scenario,
                    agents,
                    "topup",
                    queued,
                    queues=queues,
                    per_agent=per_agent,
                )
                row["round"] = n + 1

    def run_target(self, target: str) -> None:
        args = self.args
        wanted = [s for s in args.scenarios if target in SCENARIO_TARGETS[s]]
        if target not in args.targets or not wanted:
            return
        with servers.serve(target, self.env(), self.out / f"server-{target}.log") as server:
            self.log(f"{target} serving at {server.url}")
            full, short = args.capacity, args.capacity - 1
            for agents in args.agents:
                if 1 in wanted:
                    queued = self.prepare(target, agents, full, args.tickets)
                    self.measure(server, target, "fast", agents, "fetch", queued)
                if 2 in wanted:
                    queued = self.prepare(target, agents, short, args.tickets)
                    flat_out = self.measure(server, target, "steady", agents, "topup", queued)
                    if target == "product" and args.paced > 0 and flat_out["rps"]:
                        self.paced(server, agents, flat_out)
            if 3 in wanted:
                cold = args.cold_agents
                pool = max(args.tickets, 2 * cold * args.capacity)
                queued = self.prepare(target, cold, 0, pool)
                self.measure(server, target, "cold", cold, "cold", queued)
            if 4 in wanted:
                agents = args.deep_agents
                for depth in args.depths:
                    queued = self.prepare(target, agents, full, depth)
                    self.measure(server, target, "deep-fast", agents, "fetch", queued, depth)
                    # Topped up so the run cannot drain the queue below ``depth``.
                    queued = self.prepare(target, agents, short, depth + self.topup_headroom())
                    self.measure(server, target, "deep-topup", agents, "topup", queued, depth)
            if 5 in wanted:
                self.idle(server)
            if 6 in wanted:
                self.routing(server, target)
            if 7 in wanted:
                self.open_connections(server)


def _stopped_badly(workers: servers.Workers | None) -> list[str]:
    """The workers' failure to run or to stop cleanly, as a problem of the run."""
    problem = workers.problem() if workers else None
    return [f"{problem} (see {workers.log_path.name})"] if workers and problem else []


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        loadgen.wrk_path()
    except loadgen.LoadError as exc:
        print(exc, file=sys.stderr)
        return 2
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.results / stamp
    out.mkdir(parents=True, exist_ok=True)
    settings = seed.Settings(args.database_url, args.redis_url, secrets.token_urlsafe(48))
    env = {**os.environ, **settings.service_env()}
    seed.ensure_database(settings.database_url)
    seed.migrate(env)
    seeder = seed.Seeder(settings)
    bench = Bench(args, settings, out, seeder)
    command = "python -m scripts.bench " + shlex.join(argv if argv is not None else sys.argv[1:])
    meta = {
        "command": command.strip(),
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git_commit(),
        "cpus": os.cpu_count(),
        "load_average": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "gunicorn": servers.gunicorn_settings(),
        "workers": args.workers,
        "wrk_threads": args.threads,
        "connections": args.connections,
        "duration": args.duration,
        "capacity": args.capacity,
        "agents": args.agents,
        "tickets": args.tickets,
        "cold_agents": args.cold_agents,
        "deep_agents": args.deep_agents,
        "depths": args.depths,
        "idle_agents": args.idle_agents,
        "idle_tickets": args.idle_tickets,
        "idle_seconds": args.idle_seconds,
        "routing_agents": args.routing_agents,
        "queues": args.queues,
        "per_agent": args.per_agent,
        "routing_rounds": args.routing_rounds,
        "settle": args.settle,
        "open_agents": args.open_agents,
        "open_streams": args.open_streams,
        "open_waits": args.open_waits,
        "open_wait": args.open_wait,
        "profiled": args.profile,
    }
    bench.log(f"results in {out}")
    try:
        for target in TARGETS:
            bench.run_target(target)
    finally:
        seeder.close()
        for tokens in out.glob("tokens-*.txt"):
            tokens.unlink()  # live credentials for the bench database: not kept
    report.add_ratios(bench.rows)
    result = {
        "meta": meta,
        "results": bench.rows,
        "routing": report.routing(bench.rows),
        "profiles": bench.profiles,
    }
    report.write_json(out / "result.json", result)
    (out / "table.md").write_text(report.markdown(result))
    report.plot(result, out / "plot.png")
    latest = args.results / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(out.name)
    if args.publish:
        docs = ROOT / "docs" / "bench"
        docs.mkdir(parents=True, exist_ok=True)
        # A run of some scenarios only (scenario 5 after a change to the relay)
        # must not replace the full run's table: it gets names of its own.
        some = sorted(args.scenarios) != DEFAULT_SCENARIOS
        suffix = "-" + "-".join(map(str, sorted(args.scenarios))) if some else ""
        shutil.copy(out / "table.md", docs / f"table{suffix}.md")
        shutil.copy(out / "plot.png", docs / f"plot{suffix}.png")
    print(report.markdown(result))
    if bench.profiles:
        print(json.dumps(bench.profiles, indent=2))
    violations = sum(len(r["audit"]["violations"]) for r in bench.rows if r["audit"])
    problems = sum(len(r["problems"]) for r in bench.rows)
    if violations:
        bench.log(f"FAILED: {violations} invariant violations (see {out / 'result.json'})")
        return 1
    if problems:
        bench.log(f"FAILED: the load did not run clean (see {out / 'table.md'})")
        return 1
    bench.log(f"ok: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
