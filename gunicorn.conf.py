"""gunicorn settings for production: ``gunicorn -c gunicorn.conf.py wsgi:app``.

Every value can be changed from the environment (listed in the README) and is
checked like the app's settings (service/config.py); a flag on the command line
overrides both.
"""

from __future__ import annotations

# gevent first, before anything else is imported (the preloaded app included):
# sockets, locks, sleeps and select become cooperative. psycopg2 waits through
# that select too (service/database.py, bound_waits). See service/serving.py for
# why the service is served by gevent workers.
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from dotenv import load_dotenv  # noqa: E402

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

# The settings below (and the embedded-mode decision) may come from .env too, as
# in service.config.load_env_file. Read here with python-dotenv directly: importing
# the service package now would load prometheus_client before the metrics
# directory below is set, and every worker would count on its own.
load_dotenv(ROOT / ".env")

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


# Refuse to start on a broken configuration, with one line naming the variable,
# before the app is loaded (a traceback from the import says it far less clearly).
from service.config import (  # noqa: E402
    ConfigError,
    ensure_open_files,
    load_config,
    refuse,
    serving_config,
)

try:
    _serving = serving_config(os.environ)
    load_config(Path(os.environ.get("INSTANCE_PATH") or ROOT / "instance"), os.environ)
    # Streams and waiting fetches hold their connections: each one a file.
    ensure_open_files(_serving.worker_connections)
except ConfigError as exc:
    refuse(exc)

bind = _serving.bind
# gevent workers (service/serving.py): each serves many connections at once, so
# a slow client, a long-poll or an event stream holds a greenlet, not a process.
worker_class = "service.serving.Worker"
workers = _serving.workers
worker_connections = _serving.worker_connections
# A worker whose event loop stops turning (stuck in CPU, not waiting) for this
# long is killed and replaced; a request waiting on a database is not stuck.
timeout = _serving.timeout
# On SIGTERM, requests in flight get this long to finish.
graceful_timeout = _serving.graceful_timeout
keepalive = _serving.keepalive
# Recycle workers now and then (bounds any slow leak); the jitter keeps them
# from all restarting at once.
max_requests = _serving.max_requests
max_requests_jitter = _serving.max_requests_jitter
# The heartbeat file lives in memory, not on a container's overlay disk.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None

# No access log by default: the app writes one JSON line per request already
# (with the request id, user, route and duration), and a second line per
# request only doubled the logging work. "-" sends gunicorn's own
# access log to stdout, a path to a file.
accesslog = _serving.access_log
errorlog = "-"
loglevel = _serving.log_level
# gunicorn 23+ opens a control socket by default; nothing here uses it.
control_socket_disable = True

# The master loads the app once and forks the workers from it: a worker that is
# recycled (max_requests) or replaced starts in milliseconds instead of
# importing the app anew, which took a core for most of a second and showed in
# the p99 latency. New code therefore needs a restart, not a HUP. Embedded mode
# does not preload: its Redis lives in the process and must not be copied.
preload_app = not _serving.embedded


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


def post_worker_init(worker: Any) -> None:
    """Embedded mode: the worker owns the in-process Redis; fill it from the SQLite
    file before the first request (and say once where the data lives), then run
    the background workers' loops beside it."""
    app = getattr(worker, "wsgi", None)
    if _serving.embedded and "ticket_queue" in getattr(app, "extensions", {}):
        from service import start_embedded
        from workers import run_in_background

        start_embedded(app)
        run_in_background(app)


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
    """A dead worker's counters stay in the sums, folded into one archive file, so
    the metrics directory does not grow with every recycled worker."""
    from service.metrics import fold_dead_process

    fold_dead_process(worker.pid)


def on_exit(server: Any) -> None:
    """Remove the metrics directory this configuration made up (not one it was given)."""
    if _OWN_METRICS_DIR:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
