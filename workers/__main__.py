"""``python -m workers``: relay, reaper, reconcile and rebuild-after-wipe in one process.

Exits 0 after SIGTERM or SIGINT (the step in progress finishes first) and 2 on
a bad configuration. An outage of PostgreSQL or Redis is logged and retried
with backoff; it never ends the process.
"""

from __future__ import annotations

import logging
import signal
import sys

# A stop asked for while the process still imports and starts up (an
# orchestrator may send SIGTERM at any moment) is remembered, not fatal: the
# loop ends as soon as it exists, and the exit status is still 0.
_early_stop: list[int] = []
signal.signal(signal.SIGTERM, lambda signum, frame: _early_stop.append(signum))
signal.signal(signal.SIGINT, lambda signum, frame: _early_stop.append(signum))

from service.config import ConfigError, refuse  # noqa: E402 - after the handlers, on purpose

log = logging.getLogger("workers")


def main() -> int:
    from service.config import load_env_file
    from service.logging import configure_logging

    load_env_file()  # before any setting is read, the log settings included
    try:
        configure_logging()
        return run()
    except ConfigError as exc:
        refuse(exc)  # one line naming the variable, exit status 2


def run() -> int:
    from service import create_app, metrics

    from . import build_runner

    app = create_app()
    if app.config["EMBEDDED"]:
        raise ConfigError(
            "the workers need DATABASE_URL and REDIS_URL: embedded mode runs them inside "
            "the server, beside its in-process Redis"
        )
    # The reaper's counter and the rest of this process's metrics, when asked for.
    metrics.start_worker_exporter()
    with app.app_context():
        runner = build_runner(app)
        signal.signal(signal.SIGTERM, runner.stop)
        signal.signal(signal.SIGINT, runner.stop)
        if _early_stop:
            runner.stop()
        runner.run()
    log.info("workers stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
