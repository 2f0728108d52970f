"""The benchmark's output: result.json, table.md and plot.png."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

SCENARIOS = {
    "fast": "1 fast path",
    "steady": "2 steady state (sell, top up)",
    "steady-paced": "2 steady state, paced",
    "cold": "3 cold fill",
    "deep-fast": "4 deep queue, fast path",
    "deep-topup": "4 deep queue, top-up",
    "idle": "5 idle backlog (no traffic)",
    "route-one": "6 top-up, one queue",
    "route-many": "6 top-up, many queues",
    "open-base": "7 fast path, no connections open",
    "open-fast": "7 fast path, connections open",
}
# The ceiling run, and the floor run, each scenario is compared with.
CEILING_OF: dict[str, str | None] = {
    "fast": "fast",
    "steady": "steady",
    "steady-paced": None,  # a load below the maximum: no ratio
    "cold": "cold",
    "deep-fast": "fast",
    "deep-topup": "steady",
    "idle": None,
    "route-one": "steady",
    "route-many": "steady",
    "open-base": "fast",
    "open-fast": "fast",
}
FLOOR_OF: dict[str, str | None] = {
    "fast": "fast",
    "steady": "steady",
    "steady-paced": None,
    "cold": None,  # the floor does not run it
    "deep-fast": "fast",
    "deep-topup": "steady",
    "idle": None,
    "route-one": "route-one",
    "route-many": "route-many",
    "open-base": "fast",
    "open-fast": "fast",
}
# The product's targets the table checks.
PACED_P99_TARGET_MS = 100.0
IDLE_WORKERS_TARGET_PCT = 2.0
# Scenario 6: a top-up across many queues may cost this many times one across one.
ROUTING_COST_TARGET = 1.5


def label(row: dict[str, Any]) -> str:
    """The scenario's name in the table and the log, with the routed shape's queues."""
    if row["scenario"] == "route-many":
        return f"6 top-up, {row['queues']} queues, {row['per_agent']} per agent"
    return SCENARIOS[row["scenario"]]


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def routing(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Scenario 6's ratios, per target: what a top-up cycle (a sale, then the fetch
    that tops up) costs with agents in several of many queues over what it costs
    with every agent in one, measured in the same round. ``time`` is req/s with
    one queue over req/s with many (the machine is saturated: time per request),
    ``cpu`` the API's CPU ms per request (app + PostgreSQL + Redis), many over
    one, and ``p50``/``p99`` the fetches' latencies, many over one. Each is the
    median of the rounds' ratios, with the rounds' own beside it."""
    out = []
    for target in ("floor", "product"):
        runs = [r for r in rows if r["target"] == target and r["scenario"].startswith("route-")]
        rounds = sorted({r.get("round", 1) for r in runs})
        pairs = []
        for n in rounds:
            one = [r for r in runs if r["scenario"] == "route-one" and r.get("round", 1) == n]
            many = [r for r in runs if r["scenario"] == "route-many" and r.get("round", 1) == n]
            if not one or not many or not one[0]["rps"] or not many[0]["rps"]:
                continue
            a, b = one[0], many[0]
            pair = {
                "round": n,
                "rps_one": a["rps"],
                "rps_many": b["rps"],
                "time": round(a["rps"] / b["rps"], 3),
                "cpu": (
                    round(b["cpu_ms"]["total"] / a["cpu_ms"]["total"], 3)
                    if a["cpu_ms"] and b["cpu_ms"] and a["cpu_ms"]["total"]
                    else None
                ),
                "p50": round(b["p50_ms"] / a["p50_ms"], 3) if a["p50_ms"] else None,
                "p99": round(b["p99_ms"] / a["p99_ms"], 3) if a["p99_ms"] else None,
            }
            pairs.append(pair)
        if not pairs:
            continue
        summary: dict[str, Any] = {
            "target": target,
            "agents": runs[0]["agents"],
            "queues": max(r["queues"] for r in runs),
            "per_agent": max(r["per_agent"] for r in runs),
            "rounds": pairs,
        }
        for key in ("time", "cpu", "p50", "p99"):
            values = [p[key] for p in pairs if p[key] is not None]
            summary[key] = _median(values) if values else None
            summary[f"{key}_range"] = [min(values), max(values)] if values else None
        costs = [summary[k] for k in ("time", "cpu") if summary[k] is not None]
        summary["met"] = bool(costs) and max(costs) <= ROUTING_COST_TARGET
        out.append(summary)
    return out


# Scenario 7: the fast path's throughput with the connections open, over without.
OPEN_RATIO_TARGET = 0.90


def _ratio(row: dict[str, Any], references: list[dict[str, Any]], kind: str | None) -> Any:
    """req/s over the reference run's on path ``kind``, at the nearest agent count
    (and of the same round of scenario 6)."""
    same = [r for r in references if kind and r["scenario"] == kind and r["rps"]]
    if "round" in row:
        same = [r for r in same if r.get("round") == row["round"]] or same
    if not same or not row["rps"]:
        return None
    reference = min(same, key=lambda r: abs(r["agents"] - row["agents"]))
    return round(row["rps"] / reference["rps"], 3)


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Set ``vs_ceiling`` and ``vs_floor``: req/s over the ceiling's and the floor's,
    same path, nearest agent count."""
    ceilings = [r for r in rows if r["target"] == "ceiling"]
    floors = [r for r in rows if r["target"] == "floor"]
    for row in rows:
        row["vs_ceiling"] = _ratio(row, ceilings, CEILING_OF[row["scenario"]])
        row["vs_floor"] = (
            _ratio(row, floors, FLOOR_OF[row["scenario"]]) if row["target"] != "ceiling" else None
        )


def write_json(path: Path, result: dict[str, Any]) -> None:
    path.write_text(json.dumps(result, indent=2) + "\n")


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _cpu(row: dict[str, Any]) -> str:
    spent = row.get("cpu_ms")
    if not spent:
        return "–"
    return (
        f"{spent['app']:.2f} + {spent['postgres']:.2f} + {spent['redis']:.2f}"
        f" = {spent['total']:.2f}"
    )


def _workers(row: dict[str, Any]) -> str:
    share = row.get("workers_cpu")
    if not share:
        return "–"
    return f"{share['process_pct']:.1f} + {share['postgres_pct']:.1f} = {share['total_pct']:.1f}"


def _verdict(row: dict[str, Any]) -> str:
    audit = row["audit"]
    if audit is None:
        verdict = "n/a"
    elif audit["violations"]:
        verdict = f"**{len(audit['violations'])} violations**"
    else:
        verdict = "ok"
    if row["problems"]:
        verdict += " (" + "; ".join(row["problems"]) + ")"
    return verdict


def _targets(rows: list[dict[str, Any]]) -> list[str]:
    """One line per target the product has: met or missed, with the figure."""
    lines = []
    for row in rows:
        if row["scenario"] == "steady-paced" and row["target"] == "product":
            met = "met" if row["p99_ms"] < PACED_P99_TARGET_MS else "**missed**"
            lines.append(
                f"- paced steady state, {row['agents']:,} agents at {row['of_max']:.2f} of the"
                f" maximum: p99 {row['p99_ms']:,.1f} ms (target < {PACED_P99_TARGET_MS:.0f} ms:"
                f" {met})"
            )
        if row["scenario"] == "open-fast" and row.get("open"):
            opened = row["open"]
            met = "met" if opened["ratio"] >= OPEN_RATIO_TARGET else "**missed**"
            lines.append(
                f"- open connections, {opened['streams']:,} streams and {opened['waits']:,}"
                f" waiting fetches: the fast path kept {opened['ratio']:.2f} of its throughput"
                f" (target ≥ {OPEN_RATIO_TARGET:.2f}: {met})"
            )
        if row["scenario"] == "idle" and row["workers_cpu"]:
            total = row["workers_cpu"]["total_pct"]
            met = "met" if total < IDLE_WORKERS_TARGET_PCT else "**missed**"
            lines.append(
                f"- idle backlog, {row['queued']:,} queued, {row['agents']:,} agents: the"
                f" workers and their PostgreSQL backends use {total:.1f}% of one core"
                f" (target < {IDLE_WORKERS_TARGET_PCT:.0f}%: {met})"
            )
    for ratio in routing(rows):
        if ratio["target"] != "product":
            continue
        met = "met" if ratio["met"] else "**missed**"
        lines.append(
            f"- routing, {ratio['agents']:,} agents each in {ratio['per_agent']} of"
            f" {ratio['queues']} queues: a top-up cycle takes {ratio['time']:.2f}× the time"
            f" and {_fmt(ratio['cpu'], 2)}× the CPU of one with every agent in one queue"
            f" (target ≤ {ROUTING_COST_TARGET}×: {met})"
        )
    return lines


def _routing_table(rows: list[dict[str, Any]]) -> list[str]:
    ratios = routing(rows)
    if not ratios:
        return []
    lines = [
        "",
        "## 6 routing: a top-up across many queues over one across one queue",
        "",
        "The steady state (sell, then the fetch that tops up) with every agent in the one"
        " queue, and with the tickets dealt over many queues and each agent in several, so"
        " that reserve.lua takes the best of several queue heads and the SELECT and the"
        " guarded UPDATE carry the agent's queues; same agents, same pool, one after the"
        " other. Time is the single queue's req/s over the routed one's (the machine is"
        " saturated: the time a cycle takes); CPU is the API's CPU ms/req, routed over single;"
        " p50 and p99 are the fetches', routed over single. Each ratio is the median of the"
        " rounds' (their range in brackets).",
        "",
        "| target | agents | queues, per agent | rounds | req/s one queue | req/s routed"
        f" | time × (target ≤ {ROUTING_COST_TARGET}) | CPU × | fetch p50 × | fetch p99 × |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]

    def spread(ratio: dict[str, Any], key: str) -> str:
        value, bounds = ratio[key], ratio[f"{key}_range"]
        if value is None:
            return "–"
        if len(ratio["rounds"]) == 1:
            return f"{value:.2f}"
        return f"{value:.2f} [{bounds[0]:.2f}–{bounds[1]:.2f}]"

    for ratio in ratios:
        rounds = ratio["rounds"]
        one = _median([p["rps_one"] for p in rounds])
        many = _median([p["rps_many"] for p in rounds])
        lines.append(
            f"| {ratio['target']} | {ratio['agents']:,} | {ratio['queues']},"
            f" {ratio['per_agent']} | {len(rounds)} | {one:,.1f} | {many:,.1f} |"
            f" {spread(ratio, 'time')} | {spread(ratio, 'cpu')} | {spread(ratio, 'p50')} |"
            f" {spread(ratio, 'p99')} |"
        )
    return lines


def _idle_table(rows: list[dict[str, Any]]) -> list[str]:
    idle = [r for r in rows if r["scenario"] == "idle"]
    if not idle:
        return []
    lines = [
        "",
        "## 5 idle backlog: no traffic",
        "",
        "Every agent full, the backlog queued (by the product's rebuild), the workers"
        " started and settled, then the CPU of every process read over the window with no"
        " request at all, as % of one core. Redis is the whole server's (it is shared)."
        " The API is gunicorn, idle; the rest of PostgreSQL is its background processes"
        " and any other database on the server.",
        "",
        "| agents | queued | seconds | workers | their PostgreSQL | workers total"
        f" (target < {IDLE_WORKERS_TARGET_PCT:.0f}%) | Redis | API | API's PostgreSQL"
        " | rest of PostgreSQL | audit |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for row in idle:
        cpu = row["cpu"]
        if not cpu:
            lines.append(f"| {row['agents']:,} | {row['queued']:,} | – |" + " – |" * 7 + " |")
            continue
        pct = cpu["percent"]
        lines.append(
            f"| {row['agents']:,} | {row['queued']:,} | {cpu['seconds']:.0f} |"
            f" {pct['workers']:.2f} | {pct['pg_workers']:.2f} |"
            f" {row['workers_cpu']['total_pct']:.2f} | {pct['redis']:.2f} | {pct['app']:.2f} |"
            f" {pct['pg_api']:.2f} | {pct['pg_rest']:.2f} | {_verdict(row)} |"
        )
    return lines


def _open_table(rows: list[dict[str, Any]]) -> list[str]:
    opened = [r for r in rows if r["scenario"] == "open-fast" and r.get("open")]
    if not opened:
        return []
    lines = [
        "",
        "## 7 open connections",
        "",
        "The fast path (every agent full, each fetch assigns nothing) measured without"
        " connections, then with the event streams and waiting fetches held open by one"
        " client process (each wait sent again as soon as it is answered), then without"
        " again once the server let them go. The ratio is the run with them over the mean"
        " of the two without. At rest: the CPU of every process over a window with the"
        " connections open and no other request, as % of one core.",
        "",
        "| streams | waits (s each) | req/s without | req/s with | ratio"
        f" (target ≥ {OPEN_RATIO_TARGET:.2f}) | p99 ms with | at rest: API | API's PostgreSQL"
        " | Redis | workers | held after the run | client refused / errors |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in opened:
        info = row["open"]
        rest = (info.get("at_rest") or {}).get("percent") or {}
        holder = info.get("holder") or {}

        def pct(group: str, rest: dict[str, float] = rest) -> str:
            return f"{rest[group]:.2f}" if group in rest else "–"

        base = " / ".join(_fmt(rps) for rps in info["base_rps"])
        lines.append(
            f"| {info['streams']:,} | {info['waits']:,} ({info['wait_seconds']}) | {base} |"
            f" {_fmt(row['rps'])} | {info['ratio']:.3f} | {_fmt(row['p99_ms'], 2)} |"
            f" {pct('app')} | {pct('pg_api')} | {pct('redis')} | {pct('workers')} |"
            f" {tuple(info['held_after'])} | {holder.get('refused') or 0} /"
            f" {holder.get('errors', 0)} |"
        )
    return lines


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    rows = result["results"]
    loaded = [r for r in rows if r["scenario"] != "idle"]
    lines = [
        "# Benchmark results",
        "",
        f"`{meta['command']}` on {meta['started']} (commit {meta['commit']}),"
        f" {meta['cpus']} CPUs, load average {meta['load_average']} at the start.",
        f"gunicorn: `{' '.join(meta['gunicorn'])}`, {meta.get('workers', 'default')} workers"
        + (
            f"; wrk: {meta['wrk_threads']} threads, up to {meta['connections']} connections,"
            f" {meta['duration']} s per run."
            if loaded
            else "."
        )
        + " The product runs with `python -m workers` beside it.",
        "",
    ]
    if targets := _targets(rows):
        lines += ["The product's targets:", "", *targets, ""]
    if not loaded:
        return "\n".join(lines + _idle_table(rows)[1:]) + "\n"
    lines += [
        "req/s counts every answered request (in scenario 2 and the deep top-up, a sale and"
        " a fetch per cycle); p50 and p99 are of the fetches only. × ceiling and × floor are"
        " req/s over the ceiling app's and the floor's for the same path and agent count."
        " API CPU ms/req is the CPU time the app's gunicorn workers, their own PostgreSQL"
        " backends and Redis (the whole server: the workers' commands too) spent per answered"
        " request, read from /proc over the run: steadier than req/s on a shared machine,"
        " and it says where the time goes. Workers"
        " is the CPU of `python -m workers` and of its PostgreSQL backends over the same"
        " run, as % of one core (CPU seconds per second). The floor is the required work"
        " alone, with no framework around it: on the fast path the JWT check, the revocation"
        " check (one Redis script), the SELECT through bare psycopg2 and orjson; on a top-up"
        " also one"
        " reserve.lua call and one transaction with the product's statements. A paced run"
        " repeats the steady state with each connection pausing between requests, offering"
        " part of the maximum (the fraction it reached is given): the latency below the"
        " maximum, where a flat-out run measures mostly the wait in the listen queue.",
        "",
        "| scenario | target | agents | queued | req/s | p50 ms | p99 ms | × ceiling | × floor"
        " | API CPU ms/req: app + PostgreSQL + Redis | workers, % of a core: process +"
        " PostgreSQL | audit |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for row in loaded:
        scenario = label(row)
        if row.get("of_max") is not None:
            scenario += f" ({row['of_max']:.2f} of the maximum, {row['think_ms']} ms pauses)"
        lines.append(
            f"| {scenario} | {row['target']} | {row['agents']:,} |"
            f" {row['queued']:,} | {_fmt(row['rps'])} | {_fmt(row['p50_ms'], 2)} |"
            f" {_fmt(row['p99_ms'], 2)} | {_fmt(row['vs_ceiling'], 2)} |"
            f" {_fmt(row.get('vs_floor'), 2)} | {_cpu(row)} | {_workers(row)} | {_verdict(row)} |"
        )
    lines += _routing_table(rows)
    lines += _idle_table(rows)
    lines += _open_table(rows)
    return "\n".join(lines) + "\n"


COLOURS = {
    "product": "tab:blue",
    "ceiling": "tab:gray",
    "floor": "tab:green",
    "baseline": "tab:orange",
}
# (scenario, marker, line style) of the lines against the number of agents.
PATHS = (("fast", "o", "-"), ("steady", "s", "--"), ("steady-paced", "D", ":"))


def _series(rows: list[dict[str, Any]], scenario: str, target: str) -> list[dict[str, Any]]:
    return sorted(
        (r for r in rows if r["scenario"] == scenario and r["target"] == target and r["rps"]),
        key=lambda r: r["agents"],
    )


def _legend_below(ax: Any) -> None:
    """The panel's own legend, under its axes, where it hides no line."""
    handles = ax.get_legend_handles_labels()[0]
    if handles:
        ax.legend(
            fontsize=7.5,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.14),
            frameon=False,
            ncol=2 if len(handles) > 4 else 1,
        )


def _agents_panels(rows: list[dict[str, Any]], ax_rps: Any, ax_p99: Any) -> None:
    """Throughput (linear) and fetch p99 (log) against the number of agents."""
    from matplotlib.ticker import FuncFormatter

    for scenario, marker, dash in PATHS:
        for target, colour in COLOURS.items():
            points = _series(rows, scenario, target)
            if not points:
                continue
            xs = [r["agents"] for r in points]
            label = f"{target}, {SCENARIOS[scenario]}"
            style = {"marker": marker, "color": colour, "label": label}
            if scenario != "steady-paced":  # a paced run's req/s is set by its pauses
                ax_rps.plot(xs, [r["rps"] for r in points], dash, **style)
            ax_p99.plot(xs, [r["p99_ms"] for r in points], dash, **style)
    for target, colour in COLOURS.items():
        for r in _series(rows, "cold", target):
            label = f"{target}, {SCENARIOS['cold']}"
            ax_rps.scatter([r["agents"]], [r["rps"]], marker="^", color=colour, s=60, label=label)
            ax_p99.scatter(
                [r["agents"]], [r["p99_ms"]], marker="^", color=colour, s=60, label=label
            )
    if any(r["scenario"] == "steady-paced" for r in rows):
        ax_p99.axhline(
            PACED_P99_TARGET_MS,
            color="tab:red",
            lw=0.8,
            alpha=0.6,
            label=f"target of the paced p99: {PACED_P99_TARGET_MS:.0f} ms",
        )
    for ax, title, unit in (
        (ax_rps, "throughput", "requests per second"),
        (ax_p99, "p99 latency of fetches (log scale)", "milliseconds"),
    ):
        ax.set_xscale("log")
        ax.set_xlabel("agents")
        ax.set_ylabel(unit)
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    ax_rps.set_ylim(bottom=0)
    ax_p99.set_yscale("log")
    # Plain milliseconds on the log axis (10, 20, 50, 100 ...), not powers of ten.
    ax_p99.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax_p99.yaxis.set_minor_formatter(
        FuncFormatter(lambda v, _pos: f"{v:g}" if f"{v:g}"[0] in "25" else "")
    )


def _deep_panel(rows: list[dict[str, Any]], ax: Any) -> None:
    """The product's req/s against the queue depth, each point labelled with its p99."""
    deep = [r for r in rows if r["target"] == "product" and r["scenario"].startswith("deep-")]
    for scenario, marker, dash in (("deep-fast", "o", "-"), ("deep-topup", "s", "--")):
        points = sorted((r for r in deep if r["scenario"] == scenario), key=lambda r: r["depth"])
        if not points:
            continue
        xs = [r["depth"] for r in points]
        ys = [r["rps"] for r in points]
        ax.plot(xs, ys, dash, marker=marker, color=COLOURS["product"], label=SCENARIOS[scenario])
        for x, y, r in zip(xs, ys, points, strict=True):
            ax.annotate(
                f"p99 {r['p99_ms']:.0f} ms",
                (x, y),
                textcoords="offset points",
                xytext=(0, 7),
                ha="center",
                fontsize=7,
            )
    if deep:
        ax.set_xscale("log")
        ax.set_xlim(min(r["depth"] for r in deep) / 3, max(r["depth"] for r in deep) * 3)
        ax.set_ylim(bottom=0, top=max(r["rps"] for r in deep) * 1.3)
        agents = f", {deep[0]['agents']:,} agents"
    else:
        ax.text(0.5, 0.5, "scenario 4 not run", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        agents = ""
    ax.set_xlabel("tickets queued")
    ax.set_ylabel("requests per second")
    ax.set_title(f"deep queue: the product{agents}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)


def _idle_note(rows: list[dict[str, Any]]) -> str:
    notes = []
    for r in rows:
        if r["scenario"] == "idle" and r["cpu"]:
            pct = r["cpu"]["percent"]
            notes.append(
                f"5 idle backlog ({r['queued']:,} queued, {r['agents']:,} agents, no traffic):"
                f" workers {pct['workers']:.1f}% + their PostgreSQL {pct['pg_workers']:.1f}%"
                f" = {r['workers_cpu']['total_pct']:.1f}% of one core"
                f" (target < {IDLE_WORKERS_TARGET_PCT:.0f}%), Redis {pct['redis']:.1f}%"
            )
    return "\n".join(notes)


# Scenario 5's bars: (label, group in the row's cpu percentages).
IDLE_BARS = (
    ("workers", "workers"),
    ("workers'\nPostgreSQL", "pg_workers"),
    ("Redis\n(whole server)", "redis"),
    ("API\n(gunicorn)", "app"),
    ("API's\nPostgreSQL", "pg_api"),
    ("rest of\nPostgreSQL", "pg_rest"),
)


def _idle_panel(rows: list[dict[str, Any]], ax: Any) -> None:
    """Scenario 5 alone: each process group's share of one core, at rest."""
    row = next(r for r in rows if r["scenario"] == "idle" and r["cpu"])
    pct = row["cpu"]["percent"]
    colours = ["tab:purple", "tab:pink", "tab:orange", "tab:blue", "tab:cyan", "tab:gray"]
    bars = ax.bar([label for label, _ in IDLE_BARS], [pct[g] for _, g in IDLE_BARS], color=colours)
    ax.bar_label(bars, fmt="%.1f%%", fontsize=8)
    ax.axhline(IDLE_WORKERS_TARGET_PCT, color="tab:red", lw=0.8, alpha=0.6)
    ax.annotate(
        f"target for the workers and their PostgreSQL together: {IDLE_WORKERS_TARGET_PCT:.0f}%",
        (0.99, IDLE_WORKERS_TARGET_PCT),
        xycoords=("axes fraction", "data"),
        ha="right",
        va="bottom",
        fontsize=8,
        color="tab:red",
    )
    ax.set_ylabel("% of one core")
    ax.set_title(
        f"5 idle backlog: {row['queued']:,} queued, {row['agents']:,} agents, no traffic,"
        f" {row['cpu']['seconds']:.0f} s",
        fontsize=10,
    )
    ax.grid(True, axis="y", alpha=0.3)


def _open_panel(rows: list[dict[str, Any]], ax: Any) -> None:
    """Scenario 7 alone: the fast path's req/s without, with and again without the
    connections open."""
    runs = [r for r in rows if r["scenario"] in ("open-base", "open-fast")]
    labels = [
        "without" if r["scenario"] == "open-base" else "with streams\nand waits open" for r in runs
    ]
    colours = ["tab:gray" if r["scenario"] == "open-base" else "tab:blue" for r in runs]
    bars = ax.bar([f"{n + 1}. {label}" for n, label in enumerate(labels)], [r["rps"] for r in runs])
    for bar, colour in zip(bars, colours, strict=True):
        bar.set_color(colour)
    ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_ylabel("fast path, req/s")
    opened = next((r["open"] for r in runs if r.get("open")), None)
    if opened:
        ax.set_title(
            f"7 open connections: {opened['streams']:,} streams, {opened['waits']:,} waiting"
            f" fetches; kept {opened['ratio']:.2f} of the throughput"
            f" (target ≥ {OPEN_RATIO_TARGET:.2f})",
            fontsize=10,
        )
    ax.grid(True, axis="y", alpha=0.3)


def plot(result: dict[str, Any], path: Path) -> None:
    """Throughput and p99 against the number of agents, the deep queue, the idle cost;
    a run of scenario 5 alone draws its bars instead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["results"]
    if not any(r["scenario"] != "idle" for r in rows) and any(r["cpu"] for r in rows):
        fig, ax = plt.subplots(figsize=(9, 5.5))
        _idle_panel(rows, ax)
    elif rows and all(r["scenario"].startswith("open-") for r in rows):
        fig, ax = plt.subplots(figsize=(9, 5.5))
        _open_panel(rows, ax)
    else:
        fig, (ax_rps, ax_p99, ax_deep) = plt.subplots(
            1, 3, figsize=(17, 6.8), gridspec_kw={"width_ratios": [1, 1, 0.8]}
        )
        _agents_panels(rows, ax_rps, ax_p99)
        _deep_panel(rows, ax_deep)
        for ax in (ax_rps, ax_p99, ax_deep):
            _legend_below(ax)
    meta = result["meta"]
    title = f"{meta['command']} — {meta['started']}, commit {meta['commit']}"
    if note := _idle_note(rows):
        title += "\n" + note
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
