"""Start an app under gunicorn with the production settings, on a free local port;
start the product's background workers (``python -m workers``) beside it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .cpu import WORKERS_APP
from .seed import ROOT, with_application_name

CONFIG_FILE = ROOT / "gunicorn.conf.py"

# The apps the benchmark serves, by target name.
APPS = {
    "product": "wsgi:app",
    "ceiling": "scripts.bench.ceiling_app:app",
    "baseline": "scripts.bench.baseline_app:app",
    "floor": "scripts.bench.floor_app:app",
}


def gunicorn_settings() -> list[str]:
    """The production gunicorn settings: the project's config file once it exists.

    Until then, the flags it is expected to hold: one sync worker per core
    and one more, as gunicorn's documentation suggests.
    """
    if CONFIG_FILE.exists():
        return ["--config", str(CONFIG_FILE)]
    workers = 2 * (os.cpu_count() or 1) + 1
    return [
        "--workers",
        str(workers),
        "--worker-class",
        "sync",
        "--timeout",
        "30",
        "--graceful-timeout",
        "5",
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Server:
    url: str
    pid: int  # gunicorn's master


def _wait_until_serving(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {proc.returncode} before serving {url}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=0.5) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {timeout}s")


@contextmanager
def serve(target: str, env: dict[str, str], log_path: Path) -> Iterator[Server]:
    """Run ``target``'s app under gunicorn; yield it serving; stop it after."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        *gunicorn_settings(),
        # Command-line settings win over the config file's.
        "--bind",
        f"127.0.0.1:{port}",
        APPS[target],
    ]
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    with log_path.open("ab") as log:
        log.write(f"$ {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(argv, cwd=ROOT, env=full_env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_serving(url, proc, timeout=30)
        yield Server(url, proc.pid)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# What the workers log once their loops run (workers/__main__.py).
WORKERS_STARTED = b"workers started"


@dataclass
class Workers:
    """A running ``python -m workers``."""

    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def problem(self) -> str | None:
        """Why the workers did not run (or stop) as they should; None if they did."""
        code = self.proc.poll()
        return None if code in (None, 0) else f"the workers exited with {code}"


def _wait_for_line(
    log_path: Path, offset: int, line: bytes, proc: subprocess.Popen[bytes], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with log_path.open("rb") as log:
            log.seek(offset)
            if line in log.read():
                return
        if proc.poll() is not None:
            raise RuntimeError(f"the workers exited with {proc.returncode} (see {log_path})")
        time.sleep(0.1)
    raise RuntimeError(f"the workers did not start in {timeout}s (see {log_path})")


@contextmanager
def workers(env: dict[str, str], log_path: Path, stop_timeout: float = 120) -> Iterator[Workers]:
    """Run ``python -m workers`` with the product's environment; yield it once its
    loops run; stop it after (SIGTERM: the step in progress finishes first).

    Its PostgreSQL connections carry ``application_name=tq-workers``, so the CPU
    meter can tell its backends from the API's; nothing else differs.
    """
    argv = [sys.executable, "-m", "workers"]
    full_env = {
        **os.environ,
        **env,
        "DATABASE_URL": with_application_name(env["DATABASE_URL"], WORKERS_APP),
        "PYTHONUNBUFFERED": "1",
    }
    with log_path.open("ab") as log:
        log.write(f"$ {' '.join(argv)}\n".encode())
        log.flush()
        offset = log.tell()
        proc = subprocess.Popen(argv, cwd=ROOT, env=full_env, stdout=log, stderr=log)
    running = Workers(proc, log_path)
    try:
        _wait_for_line(log_path, offset, WORKERS_STARTED, proc, timeout=60)
        yield running
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
