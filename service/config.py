"""Configuration read from the environment, with explicit coercion.

Every variable is listed in the README. With neither ``DATABASE_URL`` nor
``REDIS_URL`` set the service runs in *embedded mode*: a SQLite file and an
in-process Redis, so a laptop can serve the whole API with no services.
"""

from __future__ import annotations

import hashlib
import hmac
import multiprocessing
import os
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from dotenv import load_dotenv

MIN_SECRET_BYTES = 32


class ConfigError(RuntimeError):
    """Raised when the environment cannot produce a working configuration."""


# The exit status of every entry point (gunicorn, the flask CLI, the workers, the
# scripts) that refuses to start on a bad configuration.
EXIT_CONFIG = 2


def refuse(problem: str | ConfigError) -> NoReturn:
    """Stop the process with one line naming the problem, and exit status 2."""
    print(f"configuration error: {problem}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_CONFIG)


ENV_FILE = Path(__file__).resolve().parent.parent / ".env"


def load_env_file() -> None:
    """Read the repository's ``.env`` (if any) into the environment, without
    overriding what is already set. The app factory and the workers call it
    before they read a setting; gunicorn.conf.py reads the same file itself,
    before the metrics directory is set and this package may be imported."""
    load_dotenv(ENV_FILE)


def _bool(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    value = env.get(name)
    if value is None or value == "":
        return default
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    value = (env.get(name) or default).strip().lower()
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("auto", "json", "text")


def log_level(env: Mapping[str, str]) -> str:
    return _choice(env, "LOG_LEVEL", LOG_LEVELS, "info")


def log_format(env: Mapping[str, str]) -> str:
    return _choice(env, "LOG_FORMAT", LOG_FORMATS, "auto")


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def read_int(
    env: Mapping[str, str], name: str, default: int, minimum: int = 1, maximum: int | None = None
) -> int:
    """An integer setting from ``minimum`` to ``maximum``."""
    value = _int(env, name, default, minimum)
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be at most {maximum}, got {value}")
    return value


def _embedded_secret(instance_path: Path) -> str:
    """A signing key kept in the instance folder, so embedded tokens survive a restart."""
    path = instance_path / "jwt-secret"
    if path.exists():
        return path.read_text().strip()
    instance_path.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    path.write_text(key)
    path.chmod(0o600)
    return key


def load_config(instance_path: Path, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Build the Flask config mapping from ``env`` (``os.environ`` by default)."""
    env = os.environ if env is None else env
    database_url = env.get("DATABASE_URL") or None
    redis_url = env.get("REDIS_URL") or None
    if (database_url is None) != (redis_url is None):
        raise ConfigError(
            "set both DATABASE_URL and REDIS_URL (production) or neither (embedded mode)"
        )
    embedded = database_url is None

    secret = env.get("JWT_SECRET_KEY") or None
    if secret is None:
        if not embedded:
            raise ConfigError(
                "JWT_SECRET_KEY is required outside embedded mode (at least 32 bytes)"
            )
        secret = _embedded_secret(instance_path)
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(f"JWT_SECRET_KEY must be at least {MIN_SECRET_BYTES} bytes long")

    if embedded:
        instance_path.mkdir(parents=True, exist_ok=True)
        database_url = f"sqlite:///{instance_path / 'tickets.db'}"
        engine_options: dict[str, Any] = {}
    else:
        from .database import FairQueuePool

        connect_timeout = _int(env, "DB_CONNECT_TIMEOUT", 3)
        statement_timeout_ms = _int(env, "DB_STATEMENT_TIMEOUT_MS", 5000)
        engine_options = {
            "poolclass": FairQueuePool,
            # No pool_pre_ping: its SELECT 1 was a round trip on every request.
            # A connection the server closed is replaced on checkout by a
            # check of its socket instead (service/database.py).
            # A gevent worker serves many requests at once: enough kept connections
            # for its usual concurrency, so they are not opened and closed (a
            # PostgreSQL backend each) request after request.
            "pool_size": _int(env, "DB_POOL_SIZE", 10),
            "max_overflow": _int(env, "DB_MAX_OVERFLOW", 5, minimum=0),
            "pool_timeout": _int(env, "DB_POOL_TIMEOUT", 5),
            "connect_args": {
                "connect_timeout": connect_timeout,
                # A query stuck behind a lock fails instead of holding a request
                # forever (a server that hangs: service/database.py, bound_waits).
                "options": f"-c statement_timeout={statement_timeout_ms}"
                # Timestamps come back in UTC, as the API writes them.
                " -c timezone=UTC",
            },
        }

    return {
        "EMBEDDED": embedded,
        "DB_CONNECT_TIMEOUT": None if embedded else connect_timeout,
        "DB_STATEMENT_TIMEOUT_MS": None if embedded else statement_timeout_ms,
        "SQLALCHEMY_DATABASE_URI": database_url,
        "SQLALCHEMY_ENGINE_OPTIONS": engine_options,
        "REDIS_URL": redis_url,
        "REDIS_CLUSTER": _bool(env, "REDIS_CLUSTER"),
        # How long any Redis command may wait for a connection or an answer.
        "REDIS_TIMEOUT_SECONDS": read_seconds(env, "REDIS_TIMEOUT_SECONDS", 1.0, maximum=60),
        "LOG_LEVEL": log_level(env),
        "LOG_FORMAT": log_format(env),
        "REDIS_KEY_PREFIX": env.get("REDIS_KEY_PREFIX") or "{tq}",
        "JWT_SECRET_KEY": secret,
        "JWT_ACCESS_TOKEN_EXPIRES": timedelta(minutes=_int(env, "ACCESS_TOKEN_MINUTES", 60)),
        "JWT_REFRESH_TOKEN_EXPIRES": timedelta(days=_int(env, "REFRESH_TOKEN_DAYS", 7)),
        "TICKETS_PER_AGENT": _int(env, "TICKETS_PER_AGENT", 15),
        "RESERVATION_LEASE_SECONDS": _int(env, "RESERVATION_LEASE_SECONDS", 30),
        "MAX_CONTENT_LENGTH": _int(env, "MAX_BODY_BYTES", 64 * 1024),
        "TRUSTED_PROXY_HOPS": _int(env, "TRUSTED_PROXY_HOPS", 0, minimum=0),
        "READINESS_TIMEOUT_SECONDS": read_seconds(env, "READINESS_TIMEOUT_SECONDS", 1.0),
        "METRICS_TOKEN": _metrics_token(env),
        # Webhook URLs may name loopback, private and link-local hosts (service/outbound.py).
        "WEBHOOK_ALLOW_PRIVATE": _bool(env, "WEBHOOK_ALLOW_PRIVATE"),
        **_rate_limit_config(env, redis_url, _bool(env, "REDIS_CLUSTER")),
        **_console_cookies(env, secret, embedded),
        **_live_config(env),
    }


def _console_cookies(env: Mapping[str, str], secret: str, embedded: bool) -> dict[str, Any]:
    """The console's sign-in (service/console): flask-jwt-extended's cookie mode.

    The API reads bearer headers only (service/auth.py); the cookies serve the
    console's pages and, for an EventSource, the event streams. Both cookies are
    HttpOnly and SameSite=Lax; every state-changing console request must repeat
    the session's CSRF value (the double submit) in a form field or a header.
    """
    secure = _bool(env, "CONSOLE_COOKIE_SECURE", default=not embedded)
    return {
        "JWT_TOKEN_LOCATION": ["headers", "cookies"],
        "JWT_COOKIE_SECURE": secure,
        "JWT_COOKIE_SAMESITE": "Lax",
        "JWT_COOKIE_CSRF_PROTECT": True,
        "JWT_CSRF_CHECK_FORM": True,
        # The access token goes to the event streams too; the refresh token only
        # to the console, which renews the access token with it.
        "JWT_ACCESS_COOKIE_PATH": "/",
        "JWT_REFRESH_COOKIE_PATH": "/console/",
        "JWT_REFRESH_CSRF_COOKIE_PATH": "/console/",
        # Flask's session carries the console's one-time messages ("Sold #12").
        "SECRET_KEY": hmac.new(secret.encode(), b"console session", hashlib.sha256).hexdigest(),
        "SESSION_COOKIE_NAME": "console_session",
        "SESSION_COOKIE_PATH": "/console/",
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": secure,
    }


def _live_config(env: Mapping[str, str]) -> dict[str, Any]:
    """Long-polls and event streams (service/live.py): how many, how often."""
    return {
        # Open at once, per user and in all processes together (429 beyond).
        "LONG_POLLS_PER_USER": _int(env, "LONG_POLLS_PER_USER", 2),
        "LONG_POLLS_TOTAL": _int(env, "LONG_POLLS_TOTAL", 5000),
        "STREAMS_PER_USER": _int(env, "STREAMS_PER_USER", 4),
        "STREAMS_TOTAL": _int(env, "STREAMS_TOTAL", 5000),
        # A comment on every idle stream this often (proxies cut silent ones),
        # and the token checked again.
        "STREAM_KEEPALIVE_SECONDS": read_seconds(env, "STREAM_KEEPALIVE_SECONDS", 15.0, 300),
        # Events read again this often while streams are open, in case a
        # writer died between its commit and its message.
        "STREAM_RESCAN_SECONDS": read_seconds(env, "STREAM_RESCAN_SECONDS", 5.0, 300),
        # How long a dead process's connections still count against the limits.
        "CONNECTION_LEASE_SECONDS": read_seconds(env, "CONNECTION_LEASE_SECONDS", 60.0, 3600),
    }


def _metrics_token(env: Mapping[str, str]) -> str | None:
    """The bearer token /metrics asks of scrapers; unset, /metrics is off."""
    token = env.get("METRICS_TOKEN") or None
    if token is not None and len(token) < 16:
        raise ConfigError("METRICS_TOKEN must be at least 16 characters long")
    return token


def read_seconds(
    env: Mapping[str, str], name: str, default: float, maximum: float = 86_400
) -> float:
    """A positive number of seconds (fractions allowed), at most ``maximum``."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not 0 < value <= maximum:
        raise ConfigError(f"{name} must be above 0 and at most {maximum:g} seconds, got {raw!r}")
    return value


def _limit(env: Mapping[str, str], name: str, default: str) -> str:
    """A rate limit in the words of ``limits``: "10 per minute", "100/hour"."""
    from limits import parse_many

    value = env.get(name) or default
    try:
        parse_many(value)
    except ValueError:
        raise ConfigError(f"{name} must read like '10 per minute', got {value!r}") from None
    return value


def _rate_limit_config(
    env: Mapping[str, str], redis_url: str | None, cluster: bool
) -> dict[str, Any]:
    """The login limit's settings (service/ratelimit.py): counted in the service's Redis."""
    # The login limits (service/ratelimit.py): per address and username, per
    # address across usernames, per username across addresses.
    limits = {
        "LOGIN_RATE_LIMIT": _limit(env, "LOGIN_RATE_LIMIT", "10 per minute"),
        "LOGIN_ADDRESS_RATE_LIMIT": _limit(env, "LOGIN_ADDRESS_RATE_LIMIT", "30 per minute"),
        "LOGIN_ACCOUNT_RATE_LIMIT": _limit(env, "LOGIN_ACCOUNT_RATE_LIMIT", "20 per minute"),
    }
    # Bounded like every Redis call of the service (REDIS_TIMEOUT_SECONDS): a hung
    # Redis costs a login at most that long, then the attempt is let through.
    timeout = read_seconds(env, "REDIS_TIMEOUT_SECONDS", 1.0, maximum=60)
    options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if redis_url is None:
        options = {}
        storage = "memory://"  # embedded mode: one process, nothing to share
    elif cluster:
        # limits names a cluster by its nodes, without a database number.
        url = urlsplit(redis_url)
        storage = f"redis+cluster://{url.netloc}"
        if url.scheme == "rediss":
            options["ssl"] = True
    else:
        storage = redis_url
    return {
        **limits,
        "RATELIMIT_STORAGE_URI": storage,
        "RATELIMIT_STORAGE_OPTIONS": options,
        # Limiter keys carry the service's hash tag, like every other key.
        "RATELIMIT_KEY_PREFIX": f"{env.get('REDIS_KEY_PREFIX') or '{tq}'}:limits",
    }


@dataclass(frozen=True)
class Serving:
    """gunicorn's settings (gunicorn.conf.py), checked like the app's."""

    embedded: bool
    bind: str
    workers: int
    worker_connections: int
    client_timeout: float
    timeout: int
    graceful_timeout: int
    keepalive: int
    max_requests: int
    max_requests_jitter: int
    access_log: str | None
    log_level: str


# Files a worker needs beside its client connections: its PostgreSQL and Redis
# pools, the pub/sub connection, log and metrics files, gevent's own.
OPEN_FILES_MARGIN = 256


def ensure_open_files(connections: int) -> None:
    """Let each worker open a socket for every connection it serves: raise the
    soft limit of open files (inherited by the workers) up to the hard limit. A
    worker past its limit fails to accept, and its streams and waits with it."""
    import resource

    need = connections + OPEN_FILES_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    problem = ConfigError(
        f"GUNICORN_WORKER_CONNECTIONS={connections} needs {need} open files per worker;"
        f" the limit is {hard if hard != resource.RLIM_INFINITY else soft} (ulimit -n)"
    )
    if hard != resource.RLIM_INFINITY and hard < need:
        raise problem
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    except (OSError, ValueError):
        raise problem from None


def serving_config(env: Mapping[str, str] | None = None) -> Serving:
    """How gunicorn serves the app, from the environment.

    Embedded mode (no DATABASE_URL, no REDIS_URL) keeps Redis inside the
    process, so it is served by one process. Otherwise one gevent worker per
    core, plus one so a core is not idle while another waits on a database.
    """
    env = os.environ if env is None else env
    embedded = not env.get("DATABASE_URL") and not env.get("REDIS_URL")
    cores = multiprocessing.cpu_count()
    workers = _int(env, "WEB_CONCURRENCY", cores + 1)
    return Serving(
        embedded=embedded,
        bind=env.get("BIND") or f"0.0.0.0:{_int(env, 'PORT', 8000)}",
        workers=1 if embedded else workers,
        worker_connections=_int(env, "GUNICORN_WORKER_CONNECTIONS", 1000),
        client_timeout=read_seconds(env, "GUNICORN_CLIENT_TIMEOUT", 10.0),
        timeout=_int(env, "GUNICORN_TIMEOUT", 30),
        graceful_timeout=_int(env, "GUNICORN_GRACEFUL_TIMEOUT", 20),
        keepalive=_int(env, "GUNICORN_KEEPALIVE", 5),
        max_requests=_int(env, "GUNICORN_MAX_REQUESTS", 5000, minimum=0),
        max_requests_jitter=_int(env, "GUNICORN_MAX_REQUESTS_JITTER", 500, minimum=0),
        access_log=env.get("GUNICORN_ACCESS_LOG") or None,
        log_level=log_level(env),
    )
