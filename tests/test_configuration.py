"""A bad setting stops every entry point with one line naming the variable, exit status 2.

gunicorn, the flask CLI, the workers and the scripts all read the same settings
(service/config.py); none of them may answer a typo with a traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import service_env
from live import ROOT, free_port

pytestmark = pytest.mark.slow

ENTRY_POINTS = {
    "gunicorn": ["-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
    "flask db upgrade": ["-m", "flask", "--app", "wsgi", "db", "upgrade"],
    "flask users create": [
        "-m",
        "flask",
        "--app",
        "wsgi",
        "users",
        "create",
        "x",
        "--role",
        "admin",
    ],
    "flask serve": ["-m", "flask", "--app", "wsgi", "serve", "--port", "0"],
    "workers": ["-m", "workers"],
    "rebuild script": ["scripts/rebuild_queue.py", "--dry-run"],
    "seed script": ["scripts/seed.py", "1"],
}
BAD_SETTINGS = [
    ("ACCESS_TOKEN_MINUTES", "abc"),
    ("REDIS_CLUSTER", "maybe"),
    ("LOG_LEVEL", "loud"),
    ("LOG_FORMAT", "xml"),
    ("DB_POOL_SIZE", "-1"),
]


def run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("WEB_", "GUNICORN_"))}
    full.update(service_env(BIND=f"127.0.0.1:{free_port()}", **env))
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def assert_refused(result: subprocess.CompletedProcess[str], variable: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("configuration error: "), lines[0]
    assert variable in lines[0], lines[0]
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize(("variable", "value"), BAD_SETTINGS, ids=[v for v, _ in BAD_SETTINGS])
@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=list(ENTRY_POINTS))
def test_a_bad_setting_is_one_line_and_exit_2(entry: str, variable: str, value: str) -> None:
    assert_refused(run(ENTRY_POINTS[entry], **{variable: value}), variable)


@pytest.mark.parametrize("value", ["abc", "0"])
def test_a_bad_worker_count_is_refused_by_flask_serve(value: str) -> None:
    """gunicorn parses WEB_CONCURRENCY itself, with a traceback, before reading
    gunicorn.conf.py: `flask --app wsgi serve` checks it first."""
    assert_refused(run(ENTRY_POINTS["flask serve"], WEB_CONCURRENCY=value), "WEB_CONCURRENCY")


@pytest.mark.parametrize("entry", ["gunicorn", "flask serve"])
def test_a_bad_gunicorn_setting_is_refused(entry: str) -> None:
    assert_refused(
        run(ENTRY_POINTS[entry], GUNICORN_CLIENT_TIMEOUT="soon"), "GUNICORN_CLIENT_TIMEOUT"
    )


def test_more_connections_than_files_is_refused() -> None:
    """Every stream and waiting fetch holds a socket: gunicorn raises its open files
    limit to what GUNICORN_WORKER_CONNECTIONS needs, or refuses to start."""
    assert_refused(
        run(ENTRY_POINTS["gunicorn"], GUNICORN_WORKER_CONNECTIONS="50000000"),
        "GUNICORN_WORKER_CONNECTIONS",
    )
