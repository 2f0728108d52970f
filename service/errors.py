"""One error shape for every failure: ``{"error": {"code", "message", "fields"?}}``."""

from __future__ import annotations

import logging
from typing import Any

import redis.exceptions
import werkzeug.exceptions
from flask import Flask, Response, current_app, has_request_context, jsonify, request
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import HTTPException

from .extensions import db

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """A domain error that maps to one HTTP status and error code."""

    status = 400
    code = "bad_request"

    def __init__(
        self, message: str, *, fields: dict[str, str] | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields
        if code is not None:
            self.code = code


class ValidationFailed(ServiceError):
    status, code = 400, "validation_error"


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"


class Forbidden(ServiceError):
    status, code = 403, "forbidden"


class NotFound(ServiceError):
    status, code = 404, "not_found"


class Conflict(ServiceError):
    status, code = 409, "conflict"


class DependencyUnavailable(ServiceError):
    status, code = 503, "service_unavailable"


class RedisUnavailable(DependencyUnavailable):
    code = "redis_unavailable"

    def __init__(
        self, message: str = "Redis is unreachable; nothing was changed, retry later"
    ) -> None:
        super().__init__(message)


class DatabaseUnavailable(DependencyUnavailable):
    code = "database_unavailable"

    def __init__(
        self, message: str = "PostgreSQL is unreachable; nothing was changed, retry later"
    ) -> None:
        super().__init__(message)


class DatabaseGaveUp(DatabaseUnavailable):
    """PostgreSQL is up but ended the statement (a deadlock, the statement timeout)."""

    def __init__(
        self,
        message: str = "PostgreSQL gave up on the request (a lock conflict or a timeout);"
        " nothing was changed, retry later",
    ) -> None:
        super().__init__(message)


# Codes for the HTTP errors werkzeug raises on its own.
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
}


def error_response(
    status: int,
    code: str,
    message: str,
    fields: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if fields:
        body["fields"] = fields
    response = jsonify(error=body)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _flatten(messages: Any, prefix: str = "") -> dict[str, str]:
    """Turn marshmallow's nested ``{"json": {"title": ["..."]}}`` into ``{"title": "..."}``."""
    fields: dict[str, str] = {}
    if isinstance(messages, dict):
        for key, value in messages.items():
            if (
                key in {"json", "query", "querystring", "form", "headers", "view_args"}
                and not prefix
            ):
                fields.update(_flatten(value, ""))
            else:
                name = "body" if key == "_schema" else str(key)
                fields.update(_flatten(value, f"{prefix}.{name}" if prefix else name))
    elif isinstance(messages, list):
        if messages and all(isinstance(m, str) for m in messages):
            fields[prefix or "body"] = "; ".join(messages)
        else:
            for index, value in enumerate(messages):
                fields.update(_flatten(value, f"{prefix}.{index}" if prefix else str(index)))
    else:
        fields[prefix or "body"] = str(messages)
    return fields


def _friendly(fields: dict[str, str]) -> dict[str, str]:
    if fields.get("body") == "Invalid input type.":
        fields["body"] = "must be a JSON object"
    if fields.get("body") == "Invalid JSON body.":
        fields["body"] = "malformed JSON"
    return fields


def _other_slash(exc: HTTPException) -> HTTPException:
    """A 404 where the path's other form (with or without its trailing slash, which
    every route accepts) has the route for another method: that 405 instead.
    Werkzeug's ``strict_slashes=False`` matches the other form for the right
    method only, and says 404 for a wrong one."""
    if not isinstance(exc, werkzeug.exceptions.NotFound) or not has_request_context():
        return exc
    path = request.path
    other = path.rstrip("/") if path.endswith("/") else path + "/"
    if not other or other == path:
        return exc
    try:
        current_app.url_map.bind_to_environ(request.environ).match(other, method=request.method)
    except werkzeug.exceptions.MethodNotAllowed as instead:
        return instead
    except HTTPException:
        pass
    return exc


def handle_http_exception(exc: HTTPException) -> Response:
    exc = _other_slash(exc)
    status = exc.code or 500
    data = getattr(exc, "data", None) or {}
    messages = data.get("messages") if isinstance(data, dict) else None
    headers = {
        k: v for k, v in exc.get_headers() if k.lower() not in {"content-type", "content-length"}
    }
    if messages and status in (400, 422):
        fields = _friendly(_flatten(messages))
        if list(fields) == ["body"] and fields["body"] == "malformed JSON":
            # `fields` names the body, like every other 400, so clients need one code path.
            return error_response(
                400, "malformed_json", "the body is not valid JSON", fields, headers
            )
        message = "; ".join(f"{name}: {text}" for name, text in fields.items())
        return error_response(400, "validation_error", message, fields, headers)
    code = _HTTP_CODES.get(status, "http_error" if status < 500 else "internal_error")
    message = (
        (data.get("message") if isinstance(data, dict) else None) or exc.description or exc.name
    )
    return error_response(status, code, message, headers=headers)


def handle_service_error(exc: ServiceError, cause: BaseException | None = None) -> Response:
    if exc.status >= 500:
        db.session.rollback()
        log.warning("dependency unavailable: %s (%s)", exc.message, cause or "reported")
    return error_response(exc.status, exc.code, exc.message, exc.fields)


def handle_database_error(exc: DBAPIError | PoolTimeoutError) -> Response:
    if isinstance(exc, DBAPIError) and not (
        exc.connection_invalidated or isinstance(exc, OperationalError)
    ):
        db.session.rollback()
        log.exception("database error")
        return error_response(500, "internal_error", "internal server error")
    return handle_service_error(DatabaseGaveUp() if _gave_up(exc) else DatabaseUnavailable(), exc)


# SQLSTATE classes of a statement PostgreSQL itself ended, the server still up:
# 40 (transaction rollback: deadlock, serialization) and 57014 (query canceled:
# the statement timeout). The transaction rolled back, so it changed nothing.
def _gave_up(exc: DBAPIError | PoolTimeoutError) -> bool:
    code = getattr(getattr(exc, "orig", None), "pgcode", None) or ""
    return code.startswith("40") or code == "57014"


def handle_redis_error(exc: redis.exceptions.RedisError) -> Response:
    return handle_service_error(RedisUnavailable(), exc)


# Refusals of a Redis that is up but cannot serve writes or commands for now: a
# replica after a failover (READONLY), out of memory, a failing snapshot
# (MISCONF), loading its data, busy with a script, a cluster moving slots.
_REDIS_CANNOT_SERVE = ("READONLY", "OOM", "MISCONF", "LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN")


def handle_redis_refusal(exc: redis.exceptions.ResponseError) -> Response:
    """A 503 for a Redis that cannot serve for now; any other error reply (a bug:
    a wrong type, a script error) stays a 500."""
    if isinstance(
        exc,
        redis.exceptions.ReadOnlyError
        | redis.exceptions.TryAgainError
        | redis.exceptions.MasterDownError,
    ) or str(exc).startswith(_REDIS_CANNOT_SERVE):
        return handle_redis_error(exc)
    return handle_unexpected(exc)


def handle_unexpected(exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        return handle_http_exception(exc)
    db.session.rollback()
    log.exception("unhandled error")
    return error_response(500, "internal_error", "internal server error")


def register_errorhandlers(app: Flask) -> None:
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(ServiceError, handle_service_error)
    app.register_error_handler(DBAPIError, handle_database_error)
    app.register_error_handler(PoolTimeoutError, handle_database_error)
    app.register_error_handler(redis.exceptions.ConnectionError, handle_redis_error)
    app.register_error_handler(redis.exceptions.TimeoutError, handle_redis_error)
    app.register_error_handler(redis.exceptions.ClusterDownError, handle_redis_error)
    app.register_error_handler(redis.exceptions.ResponseError, handle_redis_refusal)
    app.register_error_handler(Exception, handle_unexpected)
