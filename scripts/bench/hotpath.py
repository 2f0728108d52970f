"""Per-request cost of the hot path, in one process, without HTTP or gunicorn.

    python -m scripts.bench.hotpath [--requests 2000] [--queues 50 --per-agent 5]
    py-spy record --rate 500 --format raw -o hot.txt -- python -m scripts.bench.hotpath
    python -m scripts.bench.profiling hot.txt

Runs the fast path, the top-up cycle (sell, then fetch) and the ceiling app
through Flask's test client against the benchmark's database and Redis, and
reports wall and CPU milliseconds per request (with ``--queues``, the tickets
dealt over that many queues and each agent in ``--per-agent`` of them, as in
the benchmark's scenario 6). CPU time of this process is
what a gunicorn worker spends of a core per request (PostgreSQL's and Redis's
own work is not in it), and it is far less disturbed by other load on the
machine than wall time, so it is the number to compare changes with.

It does not count what PostgreSQL and Redis spend on each round trip: the
benchmark's CPU ms/req column does (scripts/bench/cpu.py).
"""

from __future__ import annotations

import argparse
import os
import secrets
import time
from typing import Any

from . import seed

AGENTS = 50
ASSIGN = "/api/agent/tickets/assign/"


def _tickets(reply: Any) -> list[dict[str, Any]]:
    tickets: list[dict[str, Any]] = reply.json["tickets"]
    return tickets


# Cumulative CPU per step: (label, function name, part of its file path).
# Nested steps overlap (the revocation check is inside the JWT check).
CPU_STEPS = [
    ("whole request (Flask.wsgi_app)", "wsgi_app", "flask/app.py"),
    ("JWT check, revocation included", "authenticate", "service/auth.py"),
    ("  revocation check (one Redis script)", "session_revoked", "service/auth.py"),
    ("assign()", "assign", "service/domain/assignment.py"),
    ("  holding(): the fast path SELECT", "holding", "service/domain/assignment.py"),
    ("  reserve.lua call", "reserve", "service/queue.py"),
    ("  confirm(): the transaction", "confirm", "service/domain/assignment.py"),
    ("  settle.lua call (refused ids only)", "settle", "service/queue.py"),
    ("sell()", "sell", "service/domain/assignment.py"),
    ("serialise: marshmallow dump", "dump", "marshmallow/schema.py"),
    ("session teardown", "_teardown_session", "flask_sqlalchemy/"),
    ("request log (before/after)", "_begin", "service/logging.py"),
    ("request log (before/after)", "_finish", "service/logging.py"),
    ("metrics (before/after)", "_start_timer", "service/metrics.py"),
    ("metrics (before/after)", "_observe", "service/metrics.py"),
    ("all SQLAlchemy Session.execute", "execute", "sqlalchemy/orm/session.py"),
    ("  of which in the driver (cursor.execute)", "do_execute", "sqlalchemy/engine/default.py"),
    ("pool checkout (the closed-socket check included)", "_checkout", "sqlalchemy/pool/base.py"),
    ("all Redis commands", "execute_command", "redis/client.py"),
]


def _cpu_breakdown(profile: Any, requests: int) -> dict[str, float]:
    import pstats

    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    out: dict[str, float] = {}
    for label, func, path in CPU_STEPS:
        total = sum(
            ct
            for (file, _, name), (_, _, _, ct, _) in stats.items()
            if name == func and path in file
        )
        out[label] = out.get(label, 0.0) + total
    return {k: round(1000 * v / requests, 3) for k, v in out.items()}


def _measure(name: str, requests: int, step: Any, cpu_profile: bool = False) -> dict[str, Any]:
    for _ in range(min(50, requests)):
        step()  # warm: scripts loaded, pools filled, caches compiled
    profile = None
    if cpu_profile:
        import cProfile

        profile = cProfile.Profile(time.process_time)
        profile.enable()
    wall, cpu = time.perf_counter(), time.process_time()
    done = 0
    while done < requests:
        done += step()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if profile is not None:
        profile.disable()
        print(f"{name}: CPU ms per request by step (cProfile, process time; inflated by it)")
        for label, ms in _cpu_breakdown(profile, done).items():
            print(f"    {label:<44} {ms:>7.3f}")
    result = {
        "path": name,
        "requests": done,
        "wall_ms": round(1000 * wall / done, 3),
        "cpu_ms": round(1000 * cpu / done, 3),
    }
    print(
        f"{name:<34} {result['wall_ms']:>7.3f} ms wall  {result['cpu_ms']:>7.3f} ms CPU"
        f"  per request ({done} requests)",
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.bench.hotpath", description=__doc__)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument(
        "--database-url",
        default=os.environ.get(
            "BENCH_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/tq_bench"
        ),
    )
    p.add_argument(
        "--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/8")
    )
    p.add_argument("--paths", default="ceiling,fast,topup", help="which paths to run")
    p.add_argument("--depth", type=int, default=1000, help="tickets queued behind the agents'")
    p.add_argument(
        "--queues", type=int, default=1, help="queues the tickets are dealt over (default 1)"
    )
    p.add_argument(
        "--per-agent", type=int, default=1, help="queues each agent is in, with --queues"
    )
    p.add_argument(
        "--cpu-profile", action="store_true", help="CPU milliseconds per step (cProfile)"
    )
    args = p.parse_args(argv)
    shape = {"queues": args.queues, "per_agent": args.per_agent}
    routed = f", {args.queues} queues, {args.per_agent} per agent" if args.queues > 1 else ""
    settings = seed.Settings(args.database_url, args.redis_url, secrets.token_urlsafe(48))
    os.environ.update({**settings.service_env(), "BENCH_DATABASE_URL": args.database_url})
    seed.ensure_database(settings.database_url)
    seed.migrate({**os.environ})
    seeder = seed.Seeder(settings)
    app = seeder.app
    paths = args.paths.split(",")
    try:
        with app.app_context():
            from service.auth import access_token, new_session

            headers = [
                {"Authorization": "Bearer " + access_token(agent, "agent", 0, new_session())}
                for agent in range(1, AGENTS + 1)
            ]
        turn = iter(range(10**12))

        def agent() -> dict[str, str]:
            return headers[next(turn) % AGENTS]

        if "ceiling" in paths:
            from .ceiling_app import app as ceiling

            ceiling_client = ceiling.test_client()

            def ceiling_fetch() -> int:
                assert ceiling_client.get(ASSIGN, headers=agent()).status_code == 200
                return 1

            _measure("ceiling: fetch", args.requests, ceiling_fetch, args.cpu_profile)

        client = app.test_client()
        if "fast" in paths:
            seeder.seed(AGENTS, 15, 15, args.depth, **shape)

            def fast() -> int:
                reply = client.get(ASSIGN, headers=agent())
                assert reply.status_code == 200 and len(_tickets(reply)) == 15
                return 1

            _measure(
                f"product: fast path, depth {args.depth}{routed}",
                args.requests,
                fast,
                args.cpu_profile,
            )

        if "topup" in paths:
            seeder.seed(AGENTS, 15, 15, max(args.depth, args.requests + 1000), **shape)
            oldest: dict[int, int] = {}

            def cycle() -> int:
                who = agent()
                key = id(who)
                if key not in oldest:
                    oldest[key] = _tickets(client.get(ASSIGN, headers=who))[0]["id"]
                sold = client.post(f"/api/agent/tickets/sell/{oldest[key]}/", headers=who)
                assert sold.status_code == 200, sold.json
                reply = client.get(ASSIGN, headers=who)
                assert reply.status_code == 200 and len(_tickets(reply)) == 15
                oldest[key] = _tickets(reply)[0]["id"]
                return 2

            _measure(
                f"product: sell + top-up, depth {args.depth}{routed}",
                args.requests,
                cycle,
                args.cpu_profile,
            )
    finally:
        seeder.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
