"""Real processes for concurrency and crash tests: a gunicorn server on a free port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_serving(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before serving")
        try:
            if requests.get(f"{url}/healthz", timeout=0.5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server at {url} did not come up in {timeout}s")


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]


@contextmanager
def gunicorn(
    env: dict[str, str],
    workers: int = 2,
    graceful_timeout: int | None = 5,
    log_path: Path | None = None,
    log_level: str = "warning",
) -> Iterator[Server]:
    """Run ``wsgi:app`` under gunicorn with ``env``; yield its URL and process; stop it after.

    ``graceful_timeout=None`` leaves it to gunicorn.conf.py; ``log_path`` gets the
    server's output instead of the test's.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        # The production settings (metrics directory, startup checks, logging);
        # the flags below override what a test needs smaller.
        "-c",
        str(ROOT / "gunicorn.conf.py"),
        "wsgi:app",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--no-control-socket",
        "--log-level",
        log_level,
    ]
    if graceful_timeout is not None:
        argv += ["--graceful-timeout", str(graceful_timeout)]
    log = open(log_path, "w") if log_path is not None else None  # noqa: SIM115 - closed below
    proc = subprocess.Popen(argv, cwd=ROOT, env=full_env, stdout=log, stderr=log)
    try:
        wait_until_serving(url, proc)
        yield Server(url, proc)
    finally:
        stop(proc, timeout=15)
        if log is not None:
            log.close()


def wait_for(
    check: Callable[[], object], what: str, timeout: float = 30.0, interval: float = 0.05
) -> None:
    """Poll ``check`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stop(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within ``timeout`` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def live_server(env: dict[str, str], workers: int = 2) -> Iterator[str]:
    """Run ``wsgi:app`` under gunicorn with ``env``; yield its base URL; stop it after."""
    with gunicorn(env, workers=workers) as server:
        yield server.url


class Workers:
    """One ``python -m workers`` process with its log in a file."""

    def __init__(self, log_path: Path, env: dict[str, str]) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "workers"],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._log.close()
