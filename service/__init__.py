"""The ticket assignment service: a Flask app factory."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from logging import getLogger
from pathlib import Path
from typing import Any

from flask import Flask, Response, request
from sqlalchemy import inspect
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix

from . import metrics, notify, ratelimit
from .config import ConfigError, load_config, load_env_file, refuse
from .database import bound_waits, replace_closed_connections, serialise_sqlite
from .extensions import db, jwt, migrate
from .json_provider import OrjsonProvider
from .live import Live
from .logging import ensure_logging
from .logging import init_app as init_request_logging
from .queue import TicketQueue, make_redis

# `logging` here would name service.logging, the package's own module.
log = getLogger(__name__)


def create_app(env: Mapping[str, str] | None = None, **overrides: Any) -> Flask:
    """Build the app from the environment (or ``env``), then apply ``overrides``.

    Built from the process's environment (a server, the flask CLI, the workers, a
    script), a bad setting stops the process with one line naming the variable
    and exit status 2; built from ``env`` (tests), it raises ConfigError.
    """
    if env is None:
        load_env_file()
        try:
            # A process of its own (the flask CLI, another WSGI server, a
            # script) logs like the rest of the service.
            ensure_logging()
            return _create_app(os.environ, **overrides)
        except ConfigError as exc:
            refuse(exc)
    return _create_app(env, **overrides)


def _create_app(source: Mapping[str, str], **overrides: Any) -> Flask:
    instance = source.get("INSTANCE_PATH") or Path(__file__).resolve().parent.parent / "instance"
    app = Flask(__name__, instance_path=str(Path(instance).resolve()))
    app.config.update(load_config(Path(app.instance_path), source))
    app.config.update(
        API_TITLE="Ticket assignment service",
        API_VERSION="1.0.0",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/api",
        OPENAPI_JSON_PATH="openapi.json",
        # No OPENAPI_SWAGGER_UI_*: the docs at /api/docs are service/pages.py's,
        # served from this origin.
    )
    app.config.update(overrides)
    app.json = OrjsonProvider(app)
    app.json.sort_keys = False
    # Every route answers with and without its trailing slash, no redirect.
    app.url_map.strict_slashes = False
    if app.config["TRUSTED_PROXY_HOPS"]:
        # Behind a load balancer, the client's address (login limit, logs) is in
        # X-Forwarded-For; trusted only from that many proxies, or a client could
        # pick any address it likes.
        hops = app.config["TRUSTED_PROXY_HOPS"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]

    register_extensions(app)
    register_body_limit(app)
    register_security_headers(app)
    register_blueprints(app)
    register_errorhandlers(app)
    register_commands(app)
    return app


def register_extensions(app: Flask) -> None:
    db.init_app(app)
    migrate.init_app(app, db, directory=str(Path(__file__).resolve().parent.parent / "migrations"))
    # Before the other request hooks, so every request is timed and logged
    # whatever a later hook does.
    init_request_logging(app)
    metrics.init_app(app)
    # flask-jwt-extended issues the tokens; service/auth.py verifies them.
    jwt.init_app(app)
    ratelimit.init_app(app)
    client = make_redis(
        app.config["REDIS_URL"], app.config["REDIS_CLUSTER"], app.config["REDIS_TIMEOUT_SECONDS"]
    )
    app.extensions["ticket_queue"] = TicketQueue(client, app.config["REDIS_KEY_PREFIX"])
    # Long-polls and event streams (service/live.py): started in a process on first use.
    app.extensions["live"] = Live(app)
    with app.app_context():
        notify.watch_event_commits(db.engine, app.extensions["ticket_queue"])
        if db.engine.dialect.name == "sqlite":
            serialise_sqlite(db.engine)
        elif db.engine.dialect.name == "postgresql":
            replace_closed_connections(db.engine)
            bound_waits(
                app.config["DB_CONNECT_TIMEOUT"],
                # PostgreSQL ends a statement at its timeout; this is for one that
                # hangs, so it gives PostgreSQL its chance first.
                app.config["DB_STATEMENT_TIMEOUT_MS"] / 1000 + 1.0,
            )


def register_body_limit(app: Flask) -> None:
    """A chunked body (no Content-Length) over ``MAX_BODY_BYTES`` is a 413 too.

    werkzeug stops reading a stream at the limit and hands on what it read, so
    an oversized chunked body reached the views cut short and answered 400
    (malformed JSON). Reading it here, one byte past the limit, tells the two
    apart; what fits is handed on with its length, like any other body.
    """

    @app.before_request
    def _bounded_chunked_body() -> None:
        environ = request.environ
        if request.content_length is not None or "chunked" not in (
            request.headers.get("Transfer-Encoding", "").lower()
        ):
            return
        limit = app.config["MAX_CONTENT_LENGTH"]
        body = environ["wsgi.input"].read(limit + 1)
        if len(body) > limit:
            raise RequestEntityTooLarge()
        environ.update({"wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body))})


def register_security_headers(app: Flask) -> None:
    """Headers every response carries: no content sniffing, and no caching of what
    the API answers (tokens, tickets) unless a route says otherwise (static assets)."""

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers.setdefault("Cache-Control", "no-store")
        return response


def register_blueprints(app: Flask) -> None:
    from . import console
    from .api import register_blueprints as register
    from .pages import bp as pages

    register(app)
    # Pages for a browser, not API operations: on the app itself, so flask-smorest
    # leaves them out of the OpenAPI document.
    app.register_blueprint(pages)
    console.init_app(app)


def register_errorhandlers(app: Flask) -> None:
    from .errors import register_errorhandlers as register

    register(app)


def register_commands(app: Flask) -> None:
    from .cli import register_commands as register

    register(app)


def start_embedded(app: Flask) -> None:
    """Embedded mode's server start: fill the in-process Redis from the SQLite file,
    which outlives it, and say once where the data lives (gunicorn.conf.py calls
    this in the one worker; the CLI's commands leave Redis alone)."""
    from .domain.rebuild import rebuild

    path = app.config["SQLALCHEMY_DATABASE_URI"].removeprefix("sqlite:///")
    log.warning(
        "embedded mode: the data is in %s and Redis is inside this one process; "
        "for production set DATABASE_URL (PostgreSQL) and REDIS_URL (Redis)",
        path,
    )
    with app.app_context():
        if not inspect(db.engine).has_table("tickets"):
            log.warning("embedded mode: %s has no tables; run `flask --app wsgi db upgrade`", path)
            return
        rebuild(db.session, app.extensions["ticket_queue"])
