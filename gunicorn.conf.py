"""gunicorn settings for production: ``gunicorn -c gunicorn.conf.py wsgi:app``.

Every value can be changed from the environment (listed in the README); a flag
on the command line overrides both.
"""

from __future__ import annotations

# gevent first, before anything else is imported (the preloaded app included):
# sockets, locks and sleeps become cooperative, and psycopg2 waits through
# gevent instead of blocking the process. See service/serving.py for why the
# service is served by gevent workers.
from gevent import monkey

monkey.patch_all()

from psycogreen.gevent import patch_psycopg  # noqa: E402

patch_psycopg()

import multiprocessing  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, NoReturn  # noqa: E402

from dotenv import load_dotenv  # noqa: E402

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

# The settings below (and the embedded-mode decision) may come from .env too, as
# in service.config.load_env_file. Read here with python-dotenv directly: importing
# the service package now would load prometheus_client before the metrics
# directory below is set, and every worker would count on its own.
load_dotenv(ROOT / ".env")


def _refuse(problem: str) -> NoReturn:
    """Stop with one line on stderr and exit code 2, as the workers do."""
    print(f"configuration error: {problem}", file=sys.stderr, flush=True)
    sys.exit(2)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        _refuse(f"{name} must be an integer, got {raw!r}")


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        _refuse(f"{name} must be a number of seconds, got {raw!r}")
    if value <= 0:
        _refuse(f"{name} must be above 0, got {raw!r}")
    return value


# Embedded mode (no DATABASE_URL, no REDIS_URL) keeps Redis inside the process,
# so it is served by one process.
EMBEDDED = not os.environ.get("DATABASE_URL") and not os.environ.get("REDIS_URL")

bind = os.environ.get("BIND") or f"0.0.0.0:{_env_int('PORT', 8000)}"
# gevent workers (service/serving.py): each serves many connections at once,
# so a slow client, a long-poll or an event stream holds a greenlet, not a
# process. The work is CPU between waits on PostgreSQL and Redis: one process
# per core, plus one so a core is not idle while another waits.
worker_class = "service.serving.Worker"
workers = 1 if EMBEDDED else _env_int("WEB_CONCURRENCY", multiprocessing.cpu_count() + 1)
# Connections one worker serves at once; more wait in the listen queue.
worker_connections = _env_int("GUNICORN_WORKER_CONNECTIONS", 1000)
# Checked here so a bad value stops the master with one line (the worker reads it).
_env_seconds("GUNICORN_CLIENT_TIMEOUT", 10.0)
# A request that takes longer than this is stuck (statement timeouts are 5 s);
# the worker is killed and replaced.
timeout = _env_int("GUNICORN_TIMEOUT", 30)
# On SIGTERM, requests in flight get this long to finish.
graceful_timeout = _env_int("GUNICORN_GRACEFUL_TIMEOUT", 20)
keepalive = _env_int("GUNICORN_KEEPALIVE", 5)
# Recycle workers now and then (bounds any slow leak); the jitter keeps them
# from all restarting at once.
max_requests = _env_int("GUNICORN_MAX_REQUESTS", 5000)
max_requests_jitter = _env_int("GUNICORN_MAX_REQUESTS_JITTER", 500)
# The heartbeat file lives in memory, not on a container's overlay disk.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None

# No access log by default: the app writes one JSON line per request already
# (with the request id, user, route and duration), and a second line per
# request only doubled the logging work. "-" sends gunicorn's own
# access log to stdout, a path to a file.
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
errorlog = "-"
loglevel = (os.environ.get("LOG_LEVEL") or "info").lower()
# gunicorn 23+ opens a control socket by default; nothing here uses it.
control_socket_disable = True

# Metrics: each worker writes its counters under PROMETHEUS_MULTIPROC_DIR and
# /metrics sums them. Set before any worker imports prometheus_client.
_OWN_METRICS_DIR = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _OWN_METRICS_DIR:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="tq-metrics-")
# Counters of an earlier run would be summed with this one's: clear them before
# anything (the preloaded app included) opens a file there.
_metrics_dir = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
if _metrics_dir.is_dir():
    for _child in _metrics_dir.iterdir():
        if _child.is_dir():
            shutil.rmtree(_child)
        else:
            _child.unlink()
else:
    _metrics_dir.mkdir(parents=True)


# Refuse to start on a broken configuration, with a message naming the variable,
# before the app is loaded (a traceback from the import says it far less clearly).
from service.config import ConfigError, load_config  # noqa: E402  (after the metrics dir)

try:
    load_config(Path(os.environ.get("INSTANCE_PATH") or ROOT / "instance"), os.environ)
except ConfigError as exc:
    _refuse(str(exc))

# The master loads the app once and forks the workers from it: a worker that is
# recycled (max_requests) or replaced starts in milliseconds instead of
# importing the app anew, which took a core for most of a second and showed in
# the p99 latency. New code therefore needs a restart, not a HUP. Embedded mode
# does not preload: its Redis lives in the process and must not be copied.
preload_app = not EMBEDDED


def post_fork(server: Any, worker: Any) -> None:
    """A forked worker must not share the master's database connections. The master
    opens none today; this keeps it so if app start-up ever does (a pool copied
    across a fork is never safe)."""
    app = getattr(server.app, "callable", None)
    # (Another app under this configuration, such as the benchmark's, may have no database.)
    if "sqlalchemy" in getattr(app, "extensions", {}):
        from service.extensions import db

        with app.app_context():
            db.engine.dispose(close=False)


def on_starting(server: Any) -> None:
    """Route gunicorn's log through the app's handler, at gunicorn's log level."""
    from service.logging import configure_logging

    configure_logging(level=server.cfg.loglevel)
    # gunicorn's own messages go through the same handler (JSON or text) as the
    # app's; the workers inherit all of it when they are forked.
    error_log = server.log.error_log
    for handler in list(error_log.handlers):
        error_log.removeHandler(handler)
    error_log.propagate = True


def child_exit(server: Any, worker: Any) -> None:
    """A dead worker's live gauges stop counting; its counters stay in the sums."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    """Remove the metrics directory this configuration made up (not one it was given)."""
    if _OWN_METRICS_DIR:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
