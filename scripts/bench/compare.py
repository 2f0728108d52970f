"""The product at a git ref against this tree's, side by side, in one run.

    python -m scripts.bench.compare          # 766dfbf, scenarios 1 and 2, 6 rounds of 10 s
    python -m scripts.bench.compare --ref v1.2 --rounds 4 --duration 30
    python scripts/bench/compare.py --help

Checks ``--ref`` out into a temporary git worktree (detached; removed at the
end, whatever happens), then runs the benchmark on the product alone
(``python -m scripts.bench --targets product --paced 0 --scenarios ...``),
alternately with that worktree's code and with this tree's: ref, tree, then
tree, ref, then ref, tree, ... Every round has one run of each side back to
back, and the rounds alternate which side goes first, so a drift of the
machine's speed during the comparison weighs on both sides alike. Each side
runs its own benchmark code (its seeding matches its schema) with the same
interpreter (this one: the requirements must be the same), against its own
database, dropped and created at the start and migrated by its own
migrations. Redis: the runs never overlap and every seed flushes the db
before it rebuilds the side's keys from its own database, so one Redis db
serves both by default (``--ref-redis-url`` gives the ref its own).

With ``--probe N`` each round also runs each side's in-process probe
(``python -m scripts.bench.hotpath --requests N``: the fast path, the sell +
top-up cycle and the ceiling app through Flask's test client, no HTTP), whose
CPU ms per request is the app's alone and far less disturbed by other load
than req/s; the ceiling app is the same code on both sides, so its ratio shows
what the machine's drift alone does to the others. ``--no-bench`` runs only
the probe.

Prints, for each scenario, each side's req/s, fetch p50 and p99 and API CPU
ms/req (the median over the rounds) and the ratios tree ÷ ref: the median of
the rounds' ratios with their range, which is the spread to read them with.
Writes the same as compare.md and compare.json under ``--results``, beside
each run's own bench-results folder. Exits 1 if any run fails its audit or
does not run clean.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python scripts/bench/compare.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    __package__ = "scripts.bench"

import sqlalchemy as sa  # noqa: E402

from . import loadgen  # noqa: E402
from .run import _git_commit, _ints  # noqa: E402
from .seed import ROOT  # noqa: E402

DEFAULT_REF = "766dfbf"
# The scenarios a comparison can run: the ones that exist at every ref it is
# meant for, and what each is called in result.json.
SCENARIOS = {1: "fast", 2: "steady"}
METRICS = (
    # (key, label, higher is better)
    ("rps", "req/s", True),
    ("p50_ms", "fetch p50 ms", False),
    ("p99_ms", "fetch p99 ms", False),
    ("cpu_ms", "API CPU ms/req", False),
    ("workers_pct", "workers, % of a core", False),
)
# The verdict: tree ÷ ref within this much on req/s and on CPU ms/req.
TOLERANCE = 0.10
# The probe's lines: "product: fast path, depth 1000   1.234 ms wall   0.987 ms CPU ..."
PROBE_LINE = re.compile(
    r"^(?P<path>ceiling: fetch|product: fast path|product: sell \+ top-up)\b.*?"
    r"(?P<wall>[\d.]+) ms wall\s+(?P<cpu>[\d.]+) ms CPU",
    re.MULTILINE,
)
PROBE_PATHS = {
    "ceiling: fetch": "probe: ceiling app (same code)",
    "product: fast path": "probe: fast path",
    "product: sell + top-up": "probe: sell + top-up",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m scripts.bench.compare",
        description="Benchmark the product at a git ref and in this tree, alternating"
        " runs of the two in one comparison, and print the ratios with their spread.",
    )
    p.add_argument("--ref", default=DEFAULT_REF, help=f"the git ref (default {DEFAULT_REF})")
    p.add_argument(
        "--rounds", type=int, default=6, help="runs of each side, alternating (default 6)"
    )
    p.add_argument(
        "--scenarios",
        type=_ints,
        default=[1, 2],
        help="1 (fast path: full agents), 2 (steady state: sell, top up); default 1,2",
    )
    p.add_argument("--agents", type=int, default=1000, help="agents (default 1000)")
    p.add_argument("--tickets", type=int, default=100_000, help="queued tickets (default 100000)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run (default 10)")
    p.add_argument(
        "--settle", type=float, default=3.0, help="seconds the workers run first (default 3)"
    )
    p.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    p.add_argument(
        "--database-url",
        default="postgresql+psycopg2://postgres@127.0.0.1:5432/tq_bench_rtree",
        help="this tree's database; DROPPED and re-created (default tq_bench_rtree)",
    )
    p.add_argument(
        "--ref-database-url",
        default="postgresql+psycopg2://postgres@127.0.0.1:5432/tq_bench_ref",
        help="the ref's database; DROPPED and re-created (default tq_bench_ref)",
    )
    p.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/9",
        help="this tree's Redis db; flushed before every seed (default db 9)",
    )
    p.add_argument(
        "--ref-redis-url",
        help="the ref's Redis db, flushed before every seed (default: --redis-url; the"
        " runs never overlap)",
    )
    p.add_argument(
        "--ref-tree",
        type=Path,
        help="an existing checkout of the ref to use instead of a new worktree (kept)",
    )
    p.add_argument("--results", type=Path, default=ROOT / "bench-results", help="output folder")
    p.add_argument(
        "--probe",
        type=int,
        default=0,
        metavar="REQUESTS",
        help="also run each side's in-process probe (scripts.bench.hotpath) for this many"
        " requests per path in every round: the app's CPU ms per request (default 0: off)",
    )
    p.add_argument("--no-bench", action="store_true", help="run only the probe (needs --probe)")
    p.add_argument(
        "--bench-arg",
        action="append",
        default=[],
        help="one more argument for both sides' benchmark (repeatable), e.g."
        " --bench-arg=--workers=3",
    )
    args = p.parse_args(argv)
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        p.error(f"--scenarios: only {sorted(SCENARIOS)} can be compared, not {sorted(unknown)}")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    args.ref_redis_url = args.ref_redis_url or args.redis_url
    if args.database_url == args.ref_database_url:
        p.error("each side needs its own database")
    if args.no_bench and not args.probe:
        p.error("--no-bench needs --probe")
    return args


def log(message: str) -> None:
    print(f"[compare {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _git(*args: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"git {shlex.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


@contextmanager
def worktree(ref: str) -> Iterator[Path]:
    """A detached worktree of ``ref`` in a temporary folder, removed after. It adds
    an entry under .git/worktrees for its lifetime; this tree's files, index
    and HEAD are not touched."""
    parent = Path(tempfile.mkdtemp(prefix="tq-bench-compare-"))
    path = parent / "tree"
    _git("worktree", "add", "--detach", "--quiet", str(path), ref)
    try:
        yield path
    finally:
        removed = subprocess.run(
            ["git", "worktree", "remove", "--force", str(path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        shutil.rmtree(parent, ignore_errors=True)
        if removed.returncode != 0:
            subprocess.run(["git", "worktree", "prune"], cwd=ROOT, capture_output=True)


def fresh_database(url: str) -> None:
    """Drop the database and create it empty: the side's first run migrates it."""
    target = sa.engine.make_url(url)
    admin = sa.create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)'))
            conn.execute(sa.text(f'CREATE DATABASE "{target.database}"'))
    finally:
        admin.dispose()


def flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


@dataclass(frozen=True)
class Side:
    name: str  # "ref" or "tree"
    root: Path
    database_url: str
    redis_url: str


def _env() -> dict[str, str]:
    """This environment, without what could point a side at the other's code or state."""
    env = dict(os.environ)
    for key in ("PYTHONPATH", "BENCH_DATABASE_URL", "BENCH_REDIS_URL", "WEB_CONCURRENCY"):
        env.pop(key, None)
    return env


def run_side(side: Side, args: argparse.Namespace, out: Path, label: str) -> dict[str, Any]:
    """One benchmark run of one side; its result.json, with how long it took."""
    results = out / label
    argv = [
        sys.executable,
        "-m",
        "scripts.bench",
        "--targets=product",
        f"--scenarios={','.join(map(str, args.scenarios))}",
        f"--agents={args.agents}",
        f"--tickets={args.tickets}",
        f"--duration={args.duration}",
        f"--settle={args.settle}",
        f"--connections={args.connections}",
        "--paced=0",
        f"--database-url={side.database_url}",
        f"--redis-url={side.redis_url}",
        f"--results={results}",
        *args.bench_arg,
    ]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    started = time.monotonic()
    with (out / f"{label}.log").open("w") as output:
        output.write(f"$ cd {side.root} && {shlex.join(argv)}\n")
        output.flush()
        done = subprocess.run(
            argv, cwd=side.root, env=_env(), stdout=output, stderr=subprocess.STDOUT
        )
    seconds = time.monotonic() - started
    path = results / "latest" / "result.json"
    if not path.exists():
        raise SystemExit(f"{label}: the benchmark wrote no result (see {out / f'{label}.log'})")
    result: dict[str, Any] = json.loads(path.read_text())
    result["compare"] = {
        "side": side.name,
        "label": label,
        "returncode": done.returncode,
        "seconds": round(seconds, 1),
        "load_average": load,
    }
    return result


def run_probe(side: Side, args: argparse.Namespace, out: Path, label: str) -> dict[str, Any]:
    """One run of the side's in-process probe; the CPU and wall ms per request by path."""
    argv = [
        sys.executable,
        "-m",
        "scripts.bench.hotpath",
        f"--requests={args.probe}",
        f"--database-url={side.database_url}",
        f"--redis-url={side.redis_url}",
    ]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    started = time.monotonic()
    done = subprocess.run(argv, cwd=side.root, env=_env(), capture_output=True, text=True)
    (out / f"{label}.log").write_text(
        f"$ cd {side.root} && {shlex.join(argv)}\n{done.stdout}{done.stderr}"
    )
    paths = {
        PROBE_PATHS[m["path"]]: {"cpu_ms": float(m["cpu"]), "wall_ms": float(m["wall"])}
        for m in PROBE_LINE.finditer(done.stdout)
    }
    return {
        "side": side.name,
        "label": label,
        "returncode": done.returncode,
        "seconds": round(time.monotonic() - started, 1),
        "load_average": load,
        "paths": paths,
    }


def summarize_probes(probes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per path: each side's CPU ms per request (median over the rounds) and tree ÷ ref
    per round, with their median, min and max."""
    out = []
    for path in PROBE_PATHS.values():
        for key, label in (("cpu_ms", "app CPU ms/req"), ("wall_ms", "wall ms/req")):
            ref, tree, ratios = [], [], []
            for n in sorted({p["round"] for p in probes}):
                pair = {p["side"]: p for p in probes if p["round"] == n}
                if set(pair) != {"ref", "tree"}:
                    continue
                a = pair["ref"]["paths"].get(path, {}).get(key)
                b = pair["tree"]["paths"].get(path, {}).get(key)
                if not a or not b:
                    continue
                ref.append(a)
                tree.append(b)
                ratios.append(b / a)
            if ratios:
                out.append(_entry(path, key, label, False, ref, tree, ratios))
    return out


def _figures(result: dict[str, Any], scenario: str) -> dict[str, float | None]:
    row = next(r for r in result["results"] if r["scenario"] == scenario)
    cpu, workers = row["cpu_ms"], row["workers_cpu"]
    return {
        "rps": row["rps"],
        "p50_ms": row["p50_ms"],
        "p99_ms": row["p99_ms"],
        "cpu_ms": cpu["total"] if cpu else None,
        "workers_pct": workers["total_pct"] if workers else None,
    }


def _problems(result: dict[str, Any]) -> list[str]:
    found = []
    for row in result["results"]:
        violations = row["audit"]["violations"] if row["audit"] else []
        if violations:
            found.append(f"{row['scenario']}: {len(violations)} invariant violations")
        found += [f"{row['scenario']}: {p}" for p in row["problems"]]
    if result["compare"]["returncode"] != 0 and not found:
        found.append(f"the benchmark exited with {result['compare']['returncode']}")
    return found


def summarize(runs: list[dict[str, Any]], scenarios: list[int]) -> list[dict[str, Any]]:
    """Per scenario and metric: each side's median over the rounds, and tree ÷ ref
    per round (the two runs of one round) with their median, min and max."""
    rounds = sorted({r["compare"]["round"] for r in runs})
    out = []
    for number in scenarios:
        scenario = SCENARIOS[number]
        for key, label, higher in METRICS:
            ref, tree, ratios = [], [], []
            for n in rounds:
                pair = {r["compare"]["side"]: r for r in runs if r["compare"]["round"] == n}
                if set(pair) != {"ref", "tree"}:
                    continue
                a = _figures(pair["ref"], scenario)[key]
                b = _figures(pair["tree"], scenario)[key]
                if a is None or b is None:
                    continue
                ref.append(a)
                tree.append(b)
                if a:
                    ratios.append(b / a)
            if ratios:
                out.append(_entry(scenario, key, label, higher, ref, tree, ratios))
    return out


def _entry(
    scenario: str,
    key: str,
    label: str,
    higher: bool,
    ref: list[float],
    tree: list[float],
    ratios: list[float],
) -> dict[str, Any]:
    """One line of the summary: the rounds' ratios, their median and range, and the
    ratio of each side's best figure (interference only ever slows a run down, so
    the best is the least disturbed)."""
    median = statistics.median(ratios)
    best = max if higher else min
    return {
        "scenario": scenario,
        "metric": key,
        "label": label,
        "higher_is_better": higher,
        "ref": ref,
        "tree": tree,
        "ratios": [round(x, 3) for x in ratios],
        "ref_median": statistics.median(ref),
        "tree_median": statistics.median(tree),
        "ratio": round(median, 3),
        "low": round(min(ratios), 3),
        "high": round(max(ratios), 3),
        "best": round(best(tree) / best(ref), 3) if best(ref) else None,
        # tree ÷ ref as a cost: > 1 is slower or dearer
        "cost": round(1 / median if higher else median, 3),
    }


def markdown(
    meta: dict[str, Any],
    summary: list[dict[str, Any]],
    runs: list[dict[str, Any]],
    probes: list[dict[str, Any]],
) -> str:
    lines = [
        f"# {meta['ref']} against this tree ({meta['tree_commit']})",
        "",
        f"`{meta['command']}` on {meta['started']}, {meta['cpus']} CPUs; load average"
        f" {meta['load_before']} before, {meta['load_after']} after; {meta['rounds']} rounds"
        + (
            f", {meta['duration']} s per wrk run, {meta['agents']:,} agents,"
            f" {meta['connections']} connections, the product alone with its workers"
            if runs
            else ""
        )
        + (f"; the probe: {meta['probe']} requests per path" if probes else "")
        + ".",
        "",
    ]
    if runs:
        lines += _runs_table(meta, runs)
    if probes:
        lines += [
            "Probe runs, in order (app CPU ms per request):",
            "",
            "| round | side | load average before | " + " | ".join(PROBE_PATHS.values()) + " |",
            "|--:|---|---|" + "--:|" * len(PROBE_PATHS),
        ]
        for probe in probes:
            cells = [
                f"{probe['paths'][p]['cpu_ms']:.3f}" if p in probe["paths"] else "–"
                for p in PROBE_PATHS.values()
            ]
            lines.append(
                f"| {probe['round']} | {probe['side']} | {probe['load_average']} | "
                + " | ".join(cells)
                + " |"
            )
        lines.append("")
    lines += [
        "tree ÷ ref: the median of the rounds' ratios [lowest – highest]; best ÷ best: each"
        " side's best figure (highest req/s, lowest ms), tree's over ref's; cost: the median"
        " as a cost (req/s inverted), above 1 when this tree is slower or dearer.",
        "",
        "| scenario | metric | ref (median) | tree (median) | tree ÷ ref | best ÷ best | cost |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for s in summary:
        best = "–" if s["best"] is None else f"{s['best']:.3f}"
        lines.append(
            f"| {s['scenario']} | {s['label']} | {s['ref_median']:,.3f} |"
            f" {s['tree_median']:,.3f} | {s['ratio']:.3f} [{s['low']:.3f} – {s['high']:.3f}] |"
            f" {best} | {s['cost']:.3f} |"
        )
    verdicts = verdict(summary)
    if verdicts:
        lines += ["", *verdicts]
    return "\n".join(lines) + "\n"


def _runs_table(meta: dict[str, Any], runs: list[dict[str, Any]]) -> list[str]:
    lines = [
        "Runs, in order:",
        "",
        "| round | side | commit | load average before | seconds | "
        + " | ".join(
            f"{SCENARIOS[s]} {label}" for s in meta["scenarios"] for _, label, _ in METRICS
        )
        + " |",
        "|--:|---|---|---|--:|" + "--:|" * (len(meta["scenarios"]) * len(METRICS)),
    ]
    for run in runs:
        c = run["compare"]
        cells = []
        for s in meta["scenarios"]:
            figures = _figures(run, SCENARIOS[s])
            cells += [
                "–" if figures[key] is None else f"{figures[key]:,.2f}" for key, _, _ in METRICS
            ]
        lines.append(
            f"| {c['round']} | {c['side']} | {run['meta']['commit']} | {c['load_average']} |"
            f" {c['seconds']:.0f} | " + " | ".join(cells) + " |"
        )
    return [*lines, ""]


def verdict(summary: list[dict[str, Any]]) -> list[str]:
    """One line per scenario: req/s and CPU ms/req within ``TOLERANCE`` of the ref's."""
    lines = []
    for scenario in dict.fromkeys(s["scenario"] for s in summary):
        if scenario.startswith("probe: ceiling"):
            continue  # the control: the same code on both sides
        costs = {
            s["metric"]: s["cost"]
            for s in summary
            if s["scenario"] == scenario and s["metric"] in ("rps", "cpu_ms")
        }
        if not costs:
            continue
        worst = max(costs.values())
        met = "within" if worst <= 1 + TOLERANCE else "**NOT within**"
        lines.append(
            f"- {scenario}: this tree costs "
            + " and ".join(f"{v:.3f}× ({_cost_name(scenario, k)})" for k, v in costs.items())
            + f" of the ref: {met} {TOLERANCE:.0%}"
        )
    return lines


def _cost_name(scenario: str, metric: str) -> str:
    if metric == "rps":
        return "time, from req/s"
    return "app CPU" if scenario.startswith("probe:") else "API CPU"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        loadgen.wrk_path()
    except loadgen.LoadError as exc:
        print(exc, file=sys.stderr)
        return 2
    ref_commit = _git("rev-parse", "--short", f"{args.ref}^{{commit}}")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = (args.results / f"compare-{stamp}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m scripts.bench.compare " + shlex.join(
        argv if argv is not None else sys.argv[1:]
    )
    meta: dict[str, Any] = {
        "command": command.strip(),
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "ref": f"{args.ref} ({ref_commit})" if args.ref != ref_commit else ref_commit,
        "ref_commit": ref_commit,
        "tree_commit": "",
        "cpus": os.cpu_count(),
        "load_before": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
        "rounds": args.rounds,
        "scenarios": args.scenarios,
        "duration": args.duration,
        "agents": args.agents,
        "connections": args.connections,
        "bench_args": args.bench_arg,
        "probe": args.probe,
    }
    log(f"results in {out}")
    for url in (args.ref_database_url, args.database_url):
        fresh_database(url)
    for url in {args.ref_redis_url, args.redis_url}:
        flush_redis(url)
    runs: list[dict[str, Any]] = []
    probes: list[dict[str, Any]] = []
    failed: list[str] = []
    with worktree(args.ref) if args.ref_tree is None else _existing(args.ref_tree) as ref_root:
        ref = Side("ref", ref_root, args.ref_database_url, args.ref_redis_url)
        tree = Side("tree", ROOT, args.database_url, args.redis_url)
        log(f"ref {meta['ref']} checked out in {ref_root}")
        for n in range(1, args.rounds + 1):
            for side in (ref, tree) if n % 2 else (tree, ref):
                label = f"{n}-{side.name}"
                if args.probe:
                    probe = run_probe(side, args, out, f"{label}-probe")
                    probe["round"] = n
                    probes.append(probe)
                    if probe["returncode"] != 0 or len(probe["paths"]) != len(PROBE_PATHS):
                        failed.append(f"{label}: the probe failed (see {label}-probe.log)")
                    log(
                        f"round {n} {side.name:<4} probe {probe['seconds']:.0f}s  "
                        + "  ".join(
                            f"{path}: {v['cpu_ms']:.3f} CPU ms/req"
                            for path, v in probe["paths"].items()
                        )
                    )
                if args.no_bench:
                    continue
                result = run_side(side, args, out, label)
                result["compare"]["round"] = n
                runs.append(result)
                problems = _problems(result)
                failed += [f"{label}: {p}" for p in problems]
                figures = "  ".join(
                    f"{SCENARIOS[s]}: {_figures(result, SCENARIOS[s])['rps']:.1f} req/s,"
                    f" {_figures(result, SCENARIOS[s])['cpu_ms'] or 0:.2f} CPU ms/req"
                    for s in args.scenarios
                )
                log(
                    f"round {n} {side.name:<4} ({result['meta']['commit']})"
                    f" {result['compare']['seconds']:.0f}s  {figures}"
                    + (f"  PROBLEMS: {'; '.join(problems)}" if problems else "")
                )
    commits = {r["compare"]["side"]: r["meta"]["commit"] for r in runs}
    meta["tree_commit"] = commits.get("tree") or _git_commit()
    if runs and not commits.get("ref", "").startswith(ref_commit):
        failed.append(f"the ref's runs report commit {commits.get('ref')}, not {ref_commit}")
    meta["load_after"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    summary = summarize(runs, args.scenarios) + summarize_probes(probes)
    text = markdown(meta, summary, runs, probes)
    (out / "compare.md").write_text(text)
    (out / "compare.json").write_text(
        json.dumps(
            {
                "meta": meta,
                "summary": summary,
                "runs": runs,
                "probes": probes,
                "failed": failed,
            },
            indent=2,
        )
        + "\n"
    )
    print(text)
    if failed:
        log("FAILED: " + "; ".join(failed))
        return 1
    log(f"ok: {out}")
    return 0


@contextmanager
def _existing(path: Path) -> Iterator[Path]:
    yield path.resolve()


if __name__ == "__main__":
    raise SystemExit(main())
