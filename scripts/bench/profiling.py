"""Sample the product's gunicorn workers with py-spy and say where the time goes.

``py-spy record --subprocesses --idle`` samples every worker's Python stack
(waiting on a socket included), so the share of samples in each step is the
share of wall-clock time a worker spends there. Samples of a worker waiting
for a connection are counted apart, as idle.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

RATE = 200  # samples per second per process

# The step a sample belongs to: the innermost frame that matches a rule's
# (function, part of the file path).
STEPS: list[tuple[str, str, str]] = [
    ("revocation check (one Redis script)", "session_revoked", "service/auth.py"),
    ("JWT decode and checks", "authenticate", "service/auth.py"),
    ("holding SELECT", "holding", "service/domain/assignment.py"),
    ("reserve.lua", "reserve", "service/queue.py"),
    ("confirm transaction", "confirm", "service/domain/assignment.py"),
    ("settle.lua (refused ids only)", "settle", "service/queue.py"),
    ("stale reservations check", "stale_reservations", "service/domain/assignment.py"),
    ("sell transaction", "sell", "service/domain/assignment.py"),
    (
        "sell: held and reservation cleanup",
        "forget_held_best_effort",
        "service/domain/assignment.py",
    ),
    ("serialise (marshmallow)", "_prepare_response_content", "flask_smorest/response.py"),
    ("serialise (marshmallow)", "dump", "marshmallow/schema.py"),
    ("serialise (agent routes)", "holding_json", "service/schemas.py"),
    ("session teardown (ROLLBACK, return to pool)", "shutdown_session", "flask_sqlalchemy/"),
    ("session teardown (ROLLBACK, return to pool)", "remove", "sqlalchemy/orm/scoping.py"),
    ("JSON encoding", "response", "service/json_provider.py"),
    ("closing the connection", "close_graceful", "gunicorn/util.py"),
]
# What the innermost frame is doing, whatever the step.
LEAVES: list[tuple[str, str]] = [
    ("PostgreSQL: statements", "sqlalchemy/engine/default.py:do_execute"),
    ("PostgreSQL: ROLLBACK", ":do_rollback"),
    ("PostgreSQL: COMMIT", ":do_commit"),
    ("PostgreSQL: connect", "psycopg2"),
    ("Redis round trips", "redis/"),
    ("SQLAlchemy", "sqlalchemy/"),
    ("marshmallow", "marshmallow/"),
    ("JWT (PyJWT, crypto)", "jwt/"),
    ("logging", "logging/"),
    ("metrics", "prometheus_client/"),
    ("Flask / werkzeug", "werkzeug/"),
    ("Flask / werkzeug", "flask/"),
    ("gunicorn", "gunicorn/"),
]


def py_spy() -> str:
    local = Path(sys.executable).parent / "py-spy"
    found = str(local) if local.exists() else shutil.which("py-spy")
    if found is None:
        raise RuntimeError("py-spy is missing: pip install -r requirements-dev.txt")
    return found


def record(pid: int, out: Path, seconds: float) -> subprocess.Popen[bytes]:
    """Start sampling gunicorn ``pid`` and its workers for ``seconds``; raw stacks to ``out``."""
    argv = [
        py_spy(),
        "record",
        "--pid",
        str(pid),
        "--subprocesses",
        "--idle",
        "--nonblocking",
        "--rate",
        str(RATE),
        "--format",
        "raw",
        "--output",
        str(out),
        "--duration",
        str(math.ceil(seconds)),
    ]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _frames(stack: str) -> list[tuple[str, str]]:
    """``Class.func (file:line);...`` -> [(func, file), ...], outermost first."""
    frames = []
    for frame in stack.split(";"):
        func, _, rest = frame.partition(" (")
        # py-spy qualifies methods ("TicketQueue.reserve"); the rules name functions.
        frames.append((func.strip().rsplit(".", 1)[-1], rest.rsplit(":", 1)[0]))
    return frames


def _in_request(frames: list[tuple[str, str]]) -> bool:
    """A gunicorn worker between accepting a connection and closing it, or any
    process inside Flask (the in-process probe): not waiting for a request."""
    return any(
        (func == "handle" and "gunicorn/workers/" in f) or (func == "wsgi_app" and "flask/" in f)
        for func, f in frames
    )


def summarize(raw: Path) -> dict[str, Any]:
    """Shares of busy worker time per step and per innermost library, in percent."""
    steps: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    busy = idle = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = _frames(stack)
        if not _in_request(frames):
            idle += count
            continue
        busy += count
        step = next(
            (
                name
                for func, file in reversed(frames)
                for name, want_func, want_file in STEPS
                if func == want_func and want_file in file
            ),
            "Flask, routing, gunicorn, the rest",
        )
        steps[step] += count
        leaf_func, leaf_file = frames[-1]
        leaf_key = f"{leaf_file}:{leaf_func}"
        leaves[next((n for n, part in LEAVES if part in leaf_key), "other")] += count
        functions[f"{leaf_func} ({leaf_file})"] += count

    def share(counter: Counter[str]) -> dict[str, float]:
        return {k: round(100 * v / busy, 1) for k, v in counter.most_common()} if busy else {}

    return {
        "samples_busy": busy,
        "samples_idle": idle,
        "busy_percent": round(100 * busy / (busy + idle), 1) if busy + idle else 0.0,
        "steps": share(steps),
        "leaves": share(leaves),
        "top_functions": dict(list(share(functions).items())[:15]),
    }


if __name__ == "__main__":
    import json

    for name in sys.argv[1:]:
        print(name, json.dumps(summarize(Path(name)), indent=2))
