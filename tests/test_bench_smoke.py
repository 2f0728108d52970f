"""The benchmark, end to end at its smallest scale, so it cannot rot.

Runs ``python -m scripts.bench`` for a second per scenario against its own
database (the test database's name + ``_bench``) and the test Redis db, then
checks that every scenario ran on every target it should (the floor on the fast
path and the top-up, a paced steady state on the product, the idle backlog),
that the product's workers ran beside it and their CPU was counted apart from
the API's, that the audit ran and found nothing, that the routing scenario
(6) ran both shapes and gave its ratios, and that the table and the plot were
written. Also runs scenario 5 in its quick form alone, checks that the floor's
top-up answers as the product does, with one queue and across several, and
runs the in-process hot-path probe for a few requests.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import JWT_SECRET, TEST_DATABASE_URL, TEST_REDIS_URL

ROOT = Path(__file__).resolve().parent.parent
BENCH_DATABASE_URL = (
    sa.engine.make_url(TEST_DATABASE_URL)
    .set(database=f"{sa.engine.make_url(TEST_DATABASE_URL).database}_bench")
    .render_as_string(hide_password=False)
)

pytestmark = pytest.mark.slow

if shutil.which("wrk") is None and not os.environ.get("CI"):
    pytest.skip("wrk is missing: apt-get update && apt-get install -y wrk", allow_module_level=True)


@pytest.fixture(scope="module", autouse=True)
def _empty_bench_database() -> None:
    """The bench database starts empty: whatever revision an earlier run of another
    checkout left there, this checkout's migrations run from nothing."""
    from scripts.bench import seed

    seed.ensure_database(BENCH_DATABASE_URL)
    engine = sa.create_engine(BENCH_DATABASE_URL)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    finally:
        engine.dispose()


def _bench(*args: str, timeout: int = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={
            **os.environ,
            "BENCH_DATABASE_URL": BENCH_DATABASE_URL,
            "BENCH_REDIS_URL": TEST_REDIS_URL,
        },
    )


def _check_workers(out: Path, rows: list[dict[str, Any]]) -> None:
    """The product ran with its workers: started and stopped cleanly once per
    scenario, connected to PostgreSQL, their CPU counted apart from the API's."""
    product = [r for r in rows if r["target"] == "product"]
    log = (out / "workers.log").read_text()
    assert log.count("workers started") == len(product), log[-3000:]
    assert log.count("workers stopped") == len(product), log[-3000:]
    for row in rows:
        if row["target"] != "product":
            assert row["workers_cpu"] is None, row
            continue
        share = row["workers_cpu"]
        assert share["backends"] >= 1, row  # their connections were told apart
        assert share["process_pct"] >= 0 and share["postgres_pct"] >= 0, row
        assert share["total_pct"] == pytest.approx(
            share["process_pct"] + share["postgres_pct"], abs=0.011
        )
        assert row["cpu"]["backends"].get("pg_api", 0) >= (row["scenario"] != "idle"), row


def test_benchmark_runs_every_scenario_and_audits(tmp_path):
    done = _bench(
        "scripts.bench",
        "--quick",
        "--duration=1",
        "--agents=10",
        "--tickets=3000",
        "--cold-agents=20",
        "--deep-agents=10",
        "--depths=100,1000",
        "--connections=4",
        "--idle-agents=20",
        "--idle-tickets=2000",
        "--idle-seconds=3",
        "--routing-agents=10",
        "--queues=50",
        "--per-agent=5",
        "--settle=0.5",
        f"--results={tmp_path}",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "latest"
    result = json.loads((out / "result.json").read_text())
    rows = result["results"]
    ran = {(r["scenario"], r["target"]) for r in rows}
    assert ran == {
        ("fast", "ceiling"),
        ("fast", "floor"),
        ("fast", "product"),
        ("steady", "ceiling"),
        ("steady", "floor"),
        ("steady", "product"),
        ("steady-paced", "product"),
        ("steady", "baseline"),
        ("cold", "ceiling"),
        ("cold", "product"),
        ("cold", "baseline"),
        ("deep-fast", "product"),
        ("deep-topup", "product"),
        ("idle", "product"),
        ("route-one", "floor"),
        ("route-many", "floor"),
        ("route-one", "product"),
        ("route-many", "product"),
    }
    assert sorted(r["depth"] for r in rows if r["scenario"] == "deep-fast") == [100, 1000]
    _check_workers(out, rows)
    for row in rows:
        if row["target"] == "ceiling" or (row["target"] == "floor" and row["scenario"] == "fast"):
            assert row["audit"] is None  # they change nothing
        else:
            assert row["audit"]["violations"] == [], row
        assert not row["problems"], row
        if row["scenario"] == "idle":
            continue
        assert row["rps"] > 0 and row["p99_ms"] > 0, row
        if row["target"] == "ceiling":
            # No connection to PostgreSQL: nothing of the shared server is its.
            assert row["cpu_ms"]["postgres"] == 0, row
        else:
            assert row["cpu_ms"]["postgres"] > 0, row
        if row["scenario"] == "steady-paced":
            # Each connection pauses between requests: part of the maximum.
            assert row["think_ms"] > 0 and row["vs_ceiling"] is None, row
            assert row["vs_floor"] is None and row["of_max"] > 0, row
        elif row["target"] != "ceiling":
            assert row["vs_ceiling"] is not None
        if row["target"] == "floor":
            assert row["vs_floor"] == 1.0, row
        if row["target"] == "product" and row["scenario"] not in ("cold", "steady-paced"):
            assert row["vs_floor"] is not None, row
        if row["scenario"] in ("steady", "steady-paced", "deep-topup", "route-one", "route-many"):
            # Every cycle is a sale and a fetch that tops up.
            assert row["load"]["sells"] > 0 and row["load"]["fetches"] > 0, row
        if row["scenario"] == "cold":
            assert row["load"]["fetches"] == 20, row
    idle = next(r for r in rows if r["scenario"] == "idle")
    assert idle["queued"] == 2000 and idle["agents"] == 20, idle
    # Measured (the workers ran, _check_workers says) and far from a busy core: an idle
    # backlog costs the workers next to nothing, so a zero in a 3 s window is fine.
    assert 0 <= idle["cpu"]["spent"]["workers"] < 1.5, idle
    table = (out / "table.md").read_text()
    assert "| 3 cold fill | baseline | 20 |" in table
    assert "| × ceiling | × floor |" in table
    assert "## 5 idle backlog: no traffic" in table
    assert "\n| 20 | 2,000 | 3 |" in table
    # Scenario 6: both shapes, on the floor and the product, and their ratios.
    routed = [r for r in rows if r["scenario"].startswith("route-")]
    assert {(r["queues"], r["per_agent"]) for r in routed} == {(1, 1), (50, 5)}
    assert all(r["agents"] == 10 and r["round"] == 1 for r in routed), routed
    ratios = {r["target"]: r for r in result["routing"]}
    assert set(ratios) == {"floor", "product"}, result["routing"]
    for ratio in ratios.values():
        assert (ratio["queues"], ratio["per_agent"], len(ratio["rounds"])) == (50, 5, 1)
        assert ratio["time"] > 0 and ratio["cpu"] > 0 and ratio["p50"] > 0, ratio
    assert "## 6 routing: a top-up across many queues" in table
    assert "| 6 top-up, 50 queues, 5 per agent | product | 10 |" in table
    assert "- routing, 10 agents each in 5 of 50 queues: a top-up cycle takes" in table
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("tokens-*")), "tokens must not be left behind"


def test_idle_backlog_runs_alone_in_its_quick_form(tmp_path):
    done = _bench("scripts.bench", "--quick", "--scenarios=5", f"--results={tmp_path}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "latest"
    rows = json.loads((out / "result.json").read_text())["results"]
    assert [(r["scenario"], r["target"]) for r in rows] == [("idle", "product")]
    (idle,) = rows
    # The quick backlog: 20,000 tickets behind 200 full agents, 5 s with no traffic.
    assert (idle["agents"], idle["queued"], idle["queued_after"]) == (200, 20_000, 20_000)
    assert idle["cpu"]["seconds"] == pytest.approx(5, abs=1)
    assert 0 <= idle["cpu"]["spent"]["workers"] < 2.5, idle  # well under half a core
    assert idle["audit"]["violations"] == [] and not idle["problems"], idle
    _check_workers(out, rows)
    table = (out / "table.md").read_text()
    assert "target < 2%" in table and "## 5 idle backlog" in table
    assert "| scenario | target |" not in table  # no load ran: no table of it
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_open_connections_run_when_asked_for(tmp_path):
    """Scenario 7, small: the fast path without, with and again without event
    streams and waiting fetches held open; every connection held, then let go."""
    done = _bench(
        "scripts.bench",
        "--quick",
        "--scenarios=7",
        "--duration=1",
        "--open-agents=10",
        "--open-streams=20",
        "--open-waits=20",
        "--open-wait=5",
        "--open-idle-seconds=1",
        "--tickets=100",
        "--connections=4",
        "--settle=0.5",
        f"--results={tmp_path}",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "latest"
    rows = json.loads((out / "result.json").read_text())["results"]
    assert [r["scenario"] for r in rows] == ["open-base", "open-fast", "open-base"]
    assert all(r["target"] == "product" and r["rps"] > 0 for r in rows), rows
    assert all(r["audit"]["violations"] == [] and not r["problems"] for r in rows), rows
    opened = rows[1]["open"]
    assert (opened["streams"], opened["waits"]) == (20, 20)
    assert opened["held_before"] == [20, 20]
    assert opened["holder"]["streams_opened"] >= 20 and opened["holder"]["waits_sent"] >= 20
    assert opened["at_rest"]["seconds"] == pytest.approx(1, abs=0.5)
    assert opened["ratio"] == pytest.approx(
        rows[1]["rps"] / ((rows[0]["rps"] + rows[2]["rps"]) / 2), abs=0.001
    )
    table = (out / "table.md").read_text()
    assert "## 7 open connections" in table and "| 20 | 20 (5) |" in table
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("tokens-*")), "tokens must not be left behind"


def _seeder(queues: int = 1, per_agent: int = 1) -> Iterator[Any]:
    """The benchmark's seeder on its migrated database: 2 agents one short, 100 queued."""
    from scripts.bench import seed

    settings = seed.Settings(BENCH_DATABASE_URL, TEST_REDIS_URL, JWT_SECRET)
    seed.ensure_database(BENCH_DATABASE_URL)
    seed.migrate({**os.environ, **settings.service_env()})
    seeder = seed.Seeder(settings)
    seeder.seed(agents=2, capacity=15, held=14, unassigned=100, queues=queues, per_agent=per_agent)
    try:
        yield seeder
    finally:
        seeder.close()


@pytest.fixture
def seeded() -> Iterator[Any]:
    yield from _seeder()


@pytest.fixture
def routed() -> Iterator[Any]:
    """As ``seeded``, the tickets dealt over q00..q03, each agent in 2 of them."""
    yield from _seeder(queues=4, per_agent=2)


@pytest.fixture
def floor(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The floor app, imported with the bench database's environment."""
    monkeypatch.setenv("JWT_SECRET_KEY", JWT_SECRET)
    monkeypatch.setenv("DATABASE_URL", BENCH_DATABASE_URL)
    monkeypatch.setenv("REDIS_URL", TEST_REDIS_URL)
    name = "scripts.bench.floor_app"
    # It reads its settings when imported: a fresh import for this environment.
    module = importlib.reload(sys.modules[name]) if name in sys.modules else None
    module = module or importlib.import_module(name)
    try:
        yield module
    finally:
        module.close_connections()
        module._queue.client.close()


def _token(app: Any, agent: int) -> dict[str, str]:
    from service.auth import access_token, new_session

    with app.app_context():
        token = access_token(agent, "agent", 0, new_session())
    return {"Authorization": f"Bearer {token}"}


def _events(seeder: Any, kind: str) -> list[tuple[int, int]]:
    from service.extensions import db

    with seeder.app.app_context():
        rows = db.session.execute(
            sa.text("SELECT ticket_id, agent_id FROM ticket_events WHERE kind = :k ORDER BY 1"),
            {"k": kind},
        ).all()
        db.session.rollback()
    return [tuple(r) for r in rows]


def test_floor_tops_up_and_sells_as_the_product_does(seeded, floor):
    from scripts.bench import audit

    product = seeded.app.test_client()
    floor_client = floor.app.test_client()
    agent1, agent2 = _token(seeded.app, 1), _token(seeded.app, 2)
    # Agent 1 holds 1..14, agent 2 holds 15..28; the queue starts at 29.
    by_product = product.get("/api/agent/tickets/assign/", headers=agent1)
    by_floor = floor_client.get("/api/agent/tickets/assign/", headers=agent2)
    assert by_product.status_code == by_floor.status_code == 200
    p, f = by_product.get_json(), by_floor.get_json()
    assert [t["id"] for t in p["tickets"]] == [*range(1, 15), 29]
    assert [t["id"] for t in f["tickets"]] == [*range(15, 29), 30]
    assert p["capacity"] == f["capacity"] == 15
    assert f["tickets"][-1]["status"] == "assigned" and f["tickets"][-1]["agent_id"] == 2
    # The same document, field by field: the product's answer for agent 2 now
    # is exactly what the floor answered (a full agent: the fast path).
    again = product.get("/api/agent/tickets/assign/", headers=agent2).get_json()
    assert again == f
    assert _events(seeded, "assigned") == [(29, 1), (30, 2)]

    # A sale through the floor, then the top-up it leaves room for.
    sold = floor_client.post("/api/agent/tickets/sell/15/", headers=agent2)
    assert sold.status_code == 200
    assert sold.get_json()["status"] == "sold" and sold.get_json()["sold_at"]
    assert floor_client.post("/api/agent/tickets/sell/15/", headers=agent2).status_code == 404
    topped = floor_client.get("/api/agent/tickets/assign/", headers=agent2).get_json()
    assert [t["id"] for t in topped["tickets"]] == [*range(16, 29), 30, 31]
    assert _events(seeded, "sold") == [(15, 2)]
    assert _events(seeded, "assigned") == [(29, 1), (30, 2), (31, 2)]
    assert seeded.queue.held(2) == set(range(16, 29)) | {30, 31}
    # Other agents' tokens are refused for sales of tickets they do not hold.
    assert floor_client.post("/api/agent/tickets/sell/16/", headers=agent1).status_code == 404
    # What the floor left in PostgreSQL and Redis is what the product's audit expects.
    by, violations = audit.audit_product(seeded.app)
    assert violations == [], (by, violations)
    assert seeded.queue_depth()[0] == 100 - 3


def test_floor_and_product_top_up_across_queues(routed, floor):
    from scripts.bench import audit

    product = routed.app.test_client()
    floor_client = floor.app.test_client()
    agent1, agent2 = _token(routed.app, 1), _token(routed.app, 2)
    # Agent a is in queues q(a) and q(a + 2) (of 4); ticket g is in q(g % 4), its
    # held ones in its first queue. Agent 1 holds 1..14 and takes from q01 and
    # q03 (29, 31, 33, ...); agent 2 holds 15..28 and takes from q02 and q00
    # (30, 32, 34, ...).
    with routed.app.app_context():
        from service.extensions import db

        memberships = db.session.execute(
            sa.text("SELECT agent_id, queue FROM agent_queues ORDER BY 1, 2")
        ).all()
        db.session.rollback()
    assert [tuple(m) for m in memberships] == [(1, "q01"), (1, "q03"), (2, "q00"), (2, "q02")]
    p = product.get("/api/agent/tickets/assign/", headers=agent1).get_json()
    f = floor_client.get("/api/agent/tickets/assign/", headers=agent2).get_json()
    assert [t["id"] for t in p["tickets"]] == [*range(1, 15), 29]
    assert [t["id"] for t in f["tickets"]] == [*range(15, 29), 30]
    assert {t["queue"] for t in p["tickets"]} == {"q01"}
    assert {t["queue"] for t in f["tickets"]} == {"q02"}
    # A sale each, then the top-up: the best of the agent's two queues.
    assert floor_client.post("/api/agent/tickets/sell/15/", headers=agent2).status_code == 200
    assert product.post("/api/agent/tickets/sell/1/", headers=agent1).status_code == 200
    f = floor_client.get("/api/agent/tickets/assign/", headers=agent2).get_json()
    p = product.get("/api/agent/tickets/assign/", headers=agent1).get_json()
    assert [(t["id"], t["queue"]) for t in f["tickets"][-2:]] == [(30, "q02"), (32, "q00")]
    assert [(t["id"], t["queue"]) for t in p["tickets"][-2:]] == [(29, "q01"), (31, "q03")]
    # The product's answer for agent 2 is the floor's (a full agent: the fast path).
    assert product.get("/api/agent/tickets/assign/", headers=agent2).get_json() == f
    assert _events(routed, "assigned") == [(29, 1), (30, 2), (31, 1), (32, 2)]
    by, violations = audit.audit_product(routed.app)
    assert violations == [], (by, violations)
    assert routed.queue_depth()[0] == 100 - 4


def test_hot_path_probe_runs():
    done = _bench("scripts.bench.hotpath", "--requests=20", timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "product: fast path, depth" in done.stdout
    assert "product: sell + top-up, depth" in done.stdout


def _compare_run(side: str, round_: int, fast_rps: float, cpu: float) -> dict[str, Any]:
    """A result.json as compare.py reads it, for one side's run of scenarios 1 and 2."""
    rows = [
        {
            "scenario": scenario,
            "rps": fast_rps / factor,
            "p50_ms": 10.0 * factor,
            "p99_ms": 50.0 * factor,
            "cpu_ms": {"total": cpu * factor},
            "workers_cpu": {"total_pct": 1.0},
            "audit": {"violations": []},
            "problems": [],
        }
        for scenario, factor in (("fast", 1), ("steady", 2))
    ]
    return {
        "meta": {"commit": "abc1234" if side == "ref" else "def5678+changes"},
        "results": rows,
        "compare": {
            "side": side,
            "round": round_,
            "label": f"{round_}-{side}",
            "returncode": 0,
            "seconds": 40.0,
            "load_average": "1.00, 1.00, 1.00",
        },
    }


def test_compare_summarises_alternating_runs():
    """compare.py's arithmetic, without running anything: the rounds' ratios, their
    median and range, best against best, and the 10% verdict."""
    from scripts.bench import compare

    runs = [
        _compare_run("ref", 1, 1000.0, 2.0),
        _compare_run("tree", 1, 900.0, 2.3),  # 0.90 of the req/s, 1.15 of the CPU
        _compare_run("tree", 2, 1000.0, 2.1),
        _compare_run("ref", 2, 1000.0, 2.0),  # 1.00 and 1.05
        _compare_run("ref", 3, 800.0, 2.0),
        _compare_run("tree", 3, 760.0, 2.2),  # 0.95 and 1.10
    ]
    summary = compare.summarize(runs, [1, 2])
    fast = {s["metric"]: s for s in summary if s["scenario"] == "fast"}
    assert fast["rps"]["ratios"] == [0.9, 1.0, 0.95]
    assert (fast["rps"]["ratio"], fast["rps"]["low"], fast["rps"]["high"]) == (0.95, 0.9, 1.0)
    assert fast["rps"]["best"] == 1.0 and fast["rps"]["cost"] == pytest.approx(1 / 0.95, 1e-3)
    assert fast["cpu_ms"]["ratio"] == 1.1 and fast["cpu_ms"]["best"] == 1.05
    lines = compare.verdict(summary)
    assert lines[0].startswith("- fast: this tree costs 1.053× (time, from req/s)")
    assert lines[0].endswith("within 10%")  # 1.10 is on the line
    meta = {
        "ref": "abc1234",
        "tree_commit": "def5678+changes",
        "command": "python -m scripts.bench.compare",
        "started": "now",
        "cpus": 2,
        "load_before": "1",
        "load_after": "1",
        "rounds": 3,
        "duration": 10.0,
        "agents": 1000,
        "connections": 32,
        "scenarios": [1, 2],
        "probe": 0,
    }
    text = compare.markdown(meta, summary, runs, [])
    assert "| 1 | tree | def5678+changes |" in text
    assert "| fast | req/s | 1,000.000 | 900.000 | 0.950 [0.900 – 1.000] | 1.000 | 1.053 |" in text
    with pytest.raises(SystemExit):
        compare.parse_args(
            ["--database-url=postgresql://x/a", "--ref-database-url=postgresql://x/a"]
        )
