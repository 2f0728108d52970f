"""The benchmark, end to end at its smallest scale, so it cannot rot.

Runs ``python -m scripts.bench`` for a second per scenario against its own
database (the test database's name + ``_bench``) and the test Redis db, then
checks that every scenario ran on every target it should (the floor on the fast
path, a paced steady state on the product), that the audit ran
and found nothing, and that the table and the plot were written. Also runs the
in-process hot-path probe for a few requests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import TEST_DATABASE_URL, TEST_REDIS_URL

ROOT = Path(__file__).resolve().parent.parent
BENCH_DATABASE_URL = (
    sa.engine.make_url(TEST_DATABASE_URL)
    .set(database=f"{sa.engine.make_url(TEST_DATABASE_URL).database}_bench")
    .render_as_string(hide_password=False)
)

pytestmark = pytest.mark.slow

if shutil.which("wrk") is None and not os.environ.get("CI"):
    pytest.skip("wrk is missing: apt-get update && apt-get install -y wrk", allow_module_level=True)


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
        f"--results={tmp_path}",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "latest"
    result = json.loads((out / "result.json").read_text())
    ran = {(r["scenario"], r["target"]) for r in result["results"]}
    assert ran == {
        ("fast", "ceiling"),
        ("fast", "floor"),
        ("fast", "product"),
        ("steady", "ceiling"),
        ("steady", "product"),
        ("steady-paced", "product"),
        ("steady", "baseline"),
        ("cold", "ceiling"),
        ("cold", "product"),
        ("cold", "baseline"),
        ("deep-fast", "product"),
        ("deep-topup", "product"),
    }
    assert sorted(r["depth"] for r in result["results"] if r["scenario"] == "deep-fast") == [
        100,
        1000,
    ]
    for row in result["results"]:
        assert row["rps"] > 0 and row["p99_ms"] > 0, row
        assert not row["problems"], row
        if row["target"] in ("ceiling", "floor"):
            assert row["audit"] is None  # they change nothing
        else:
            assert row["audit"]["violations"] == [], row
        if row["scenario"] == "steady-paced":
            # Each connection pauses between requests: part of the maximum.
            assert row["think_ms"] > 0 and row["vs_ceiling"] is None, row
            assert row["of_max"] > 0, row
        elif row["target"] != "ceiling":
            assert row["vs_ceiling"] is not None
        if row["scenario"] in ("steady", "steady-paced", "deep-topup"):
            # Every cycle is a sale and a fetch that tops up.
            assert row["load"]["sells"] > 0 and row["load"]["fetches"] > 0, row
        if row["scenario"] == "cold":
            assert row["load"]["fetches"] == 20, row
    table = (out / "table.md").read_text()
    assert "| 3 cold fill | baseline | 20 |" in table
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("tokens-*")), "tokens must not be left behind"


def test_hot_path_probe_runs():
    done = _bench("scripts.bench.hotpath", "--requests=20", timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "product: fast path, depth" in done.stdout
    assert "product: sell + top-up, depth" in done.stdout
