"""Logging, configured in one place for the app, gunicorn and the workers.

Structured JSON, one object per line, on stderr; plain text when stderr is a
terminal (or ``LOG_FORMAT=text``). Every request writes one line with its id,
the user from the JWT (if any), the route, method, status and duration. The id
comes back in ``X-Request-ID``; a sane incoming ``X-Request-ID`` is kept, so a
request can be followed from the load balancer through the service.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any

from flask import Flask, Response, g, has_request_context, request

REQUEST_ID_HEADER = "X-Request-ID"
# Accepted as given: short and made of characters safe in a log and a header.
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_HANDLER_NAME = "service"

# Attributes every LogRecord has; anything else on a record came in `extra`.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id"}

request_log = logging.getLogger("service.request")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, and any extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """For a person at a terminal: the message, then the request id and extras."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {
            k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            extras = {"request_id": request_id, **extras}
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return line


class RequestIdFilter(logging.Filter):
    """Stamp every record logged while a request is served with that request's id."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = g.get("request_id") if has_request_context() else None
        return True


def configure_logging(
    env: Mapping[str, str] | None = None,
    stream: IO[str] | None = None,
    level: str | None = None,
) -> None:
    """Send every logger's records to ``stream`` (stderr) as JSON, or text on a terminal.

    ``LOG_LEVEL`` (default INFO; ``level`` overrides it) and ``LOG_FORMAT``
    (``json``, ``text`` or ``auto``, the default) tune it; a bad value raises
    ConfigError naming the variable. Safe to call more than once: it replaces
    only the handler it installed itself.
    """
    from .config import log_format, log_level

    env = os.environ if env is None else env
    stream = sys.stderr if stream is None else stream
    kind = log_format(env)  # ConfigError naming LOG_FORMAT, or LOG_LEVEL below
    if kind == "auto":
        kind = "text" if stream.isatty() else "json"
    level = (level or log_level(env)).strip().upper()

    handler = logging.StreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if kind == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def ensure_logging() -> None:
    """``configure_logging()``, unless this process already did (gunicorn.conf.py, the workers)."""
    if not any(h.get_name() == _HANDLER_NAME for h in logging.getLogger().handlers):
        configure_logging()


# -- per-request -------------------------------------------------------------
# The route of a request that matched no URL rule (a 404, a 405).
UNMATCHED_ROUTE = "<unmatched>"
_RULE_ARGUMENT = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


@functools.lru_cache(maxsize=1024)
def _rule_label(rule: str) -> str:
    return _RULE_ARGUMENT.sub(r"<\1>", rule)


def route_label() -> str:
    """The URL rule that matched, without its converters (``/api/admin/tickets/<ticket_id>/``),
    never the raw path: what the request log and the metrics call a route."""
    rule = request.url_rule
    return _rule_label(rule.rule) if rule is not None else UNMATCHED_ROUTE


def _request_id() -> str:
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    if SANE_REQUEST_ID.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


def _begin() -> None:
    g.request_id = _request_id()
    g.request_started = time.perf_counter()


def _user_id() -> int | None:
    claims = g.get("token")  # set once the request's token is verified (service/auth.py)
    return claims.user_id if claims is not None else None


def _finish(response: Response) -> Response:
    request_id = g.get("request_id")
    if request_id is None:  # a request that failed before our first hook
        request_id = g.request_id = _request_id()
    response.headers[REQUEST_ID_HEADER] = request_id
    started = g.get("request_started")
    duration_ms = round((time.perf_counter() - started) * 1000, 2) if started else None
    request_log.info(
        "%s %s %s",
        request.method,
        request.path,
        response.status_code,
        extra={
            "user_id": _user_id(),
            "route": route_label(),
            "method": request.method,
            "path": request.path,
            "client": request.remote_addr,
            "status": response.status_code,
            "duration_ms": duration_ms,
        },
    )
    return response


def init_app(app: Flask) -> None:
    """Give every request an id and write one line when it is answered."""
    app.before_request(_begin)
    app.after_request(_finish)
