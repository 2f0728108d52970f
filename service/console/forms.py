"""Forms: read with the API's own schemas, failures told in words, input kept.

A console form is loaded by the same marshmallow schema as the API's body for
the same change (``TicketCreateSchema``, ``UserPatchSchema``...), so no rule is
written twice; the form's strings are only turned into the JSON types first.
A failure of any kind (a field the schema refuses, a domain error, PostgreSQL
or Redis unavailable) becomes a ``Failure`` with the API's status and code and a
sentence for a person; the page is rendered again with what was typed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis.exceptions
from flask import Response
from marshmallow import Schema, ValidationError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import HTTPException

from .. import errors

T = TypeVar("T")

# What a person reads for each of the API's error codes. A code not listed here
# is told by the API's own message, which is written to be read.
READABLE = {
    "validation_error": "Some fields need a change; see below.",
    "invalid_credentials": "Wrong username or password.",
    "unauthorized": "Your session has ended. Sign in again.",
    "token_expired": "Your session has expired. Sign in again.",
    "token_revoked": "Your session has ended. Sign in again.",
    "token_outdated": "Your password or account changed since you signed in. Sign in again.",
    "cannot_deactivate_self": "You cannot deactivate your own account.",
    "last_admin": "The last active admin cannot be deactivated.",
    "duplicate": "A queue with that name already exists.",
    "redis_unavailable": "The service cannot reach Redis just now; nothing was changed."
    " Try again in a moment.",
    "database_unavailable": "The service cannot reach its database just now; nothing was"
    " changed. Try again in a moment.",
    "payload_too_large": "The form is larger than the service accepts.",
    "rate_limited": "Too many attempts. Wait a moment, then try again.",
    "internal_error": "Something went wrong on the server. Try again; if it goes on, tell"
    " an operator.",
}
# Codes whose API message says the particulars: the sentence, then the message.
PREFIXED = {
    "agent_full": "That agent holds as many tickets as its capacity allows",
    "queue_in_use": "Only an empty queue can be deleted",
    "not_assigned": "Only a ticket an agent holds can be released",
    "already_sold": "A sold ticket stays with the agent who sold it",
}
# marshmallow's wording, where a shorter one reads better next to a field.
FIELD_WORDS = {
    "Missing data for required field.": "Required.",
    "Not a valid integer.": "Enter a whole number.",
    "Field may not be null.": "Required.",
}


def sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


@dataclass
class Failure(Exception):
    """Why a request failed: the API's status, code and message, in words."""

    status: int
    code: str
    message: str
    fields: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message


def readable(code: str, message: str) -> str:
    if code in PREFIXED:
        return f"{PREFIXED[code]}: {sentence(message)}"
    return READABLE.get(code) or sentence(message)


def _api_response(exc: Exception) -> Response:
    """The API's answer to ``exc``: the same handlers, so the same status and code."""
    if isinstance(exc, errors.ServiceError):
        return errors.handle_service_error(exc)
    if isinstance(exc, DBAPIError | PoolTimeoutError):
        return errors.handle_database_error(exc)
    if isinstance(
        exc,
        redis.exceptions.ConnectionError
        | redis.exceptions.TimeoutError
        | redis.exceptions.ClusterDownError,
    ):
        return errors.handle_redis_error(exc)
    if isinstance(exc, redis.exceptions.ResponseError):
        return errors.handle_redis_refusal(exc)
    if isinstance(exc, HTTPException):
        return errors.handle_http_exception(exc)
    return errors.handle_unexpected(exc)


def failure(exc: Exception) -> Failure:
    """``exc`` as a Failure: what the API would answer, in words."""
    if isinstance(exc, Failure):
        return exc
    if isinstance(exc, ValidationError):
        return Failure(400, "validation_error", READABLE["validation_error"], field_errors(exc))
    answer = _api_response(exc)
    body = answer.get_json()["error"]
    fields = {name: sentence(text) for name, text in (body.get("fields") or {}).items()}
    message = readable(body["code"], body["message"])
    return Failure(answer.status_code, body["code"], message, fields)


# Failures a form shows; anything else is a bug, and the error page says so.
EXPECTED = (
    ValidationError,
    errors.ServiceError,
    DBAPIError,
    PoolTimeoutError,
    redis.exceptions.RedisError,
)


def attempt(action: Callable[[], T]) -> T:
    """Run ``action`` (a domain call); any failure a person can act on becomes a Failure."""
    try:
        return action()
    except Failure:
        raise
    except EXPECTED as exc:
        raise failure(exc) from exc


def field_errors(exc: ValidationError) -> dict[str, str]:
    messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
    found: dict[str, str] = {}
    for name, texts in messages.items():
        if isinstance(texts, dict):  # a list field: {index: [messages]}
            texts = [t for inner in texts.values() for t in inner]
        words = [FIELD_WORDS.get(t, t) for t in texts] if isinstance(texts, list) else [texts]
        found["form" if name == "_schema" else str(name)] = " ".join(
            sentence(str(w)) for w in words
        )
    return found


def load(schema: Schema, data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` through the API's schema; a ValidationError names each bad field."""
    loaded: dict[str, Any] = schema.load(dict(data))
    return loaded


def integer(text: str | None) -> Any:
    """A form's number as JSON would send it: an int when it reads as one, else the
    text (the schema refuses it with its own words); empty is None."""
    if text is None or not text.strip():
        return None
    stripped = text.strip()
    return int(stripped) if stripped.isdigit() and len(stripped) < 12 else stripped


@dataclass
class Form:
    """A form as typed, and what is wrong with it: a page renders it again after a
    failure, with every value kept (never a password)."""

    values: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    message: str | None = None

    @classmethod
    def failed(cls, values: Mapping[str, Any], problem: Failure) -> Form:
        return cls(dict(values), dict(problem.fields), problem.message)

    def value(self, name: str, default: Any = "") -> Any:
        value = self.values.get(name)
        return default if value is None else value

    def error(self, name: str) -> str | None:
        return self.errors.get(name)

    def has(self, name: str, option: str, default: Iterable[str] = ()) -> bool:
        """Whether a multiple choice (checkboxes) includes ``option``."""
        chosen = self.values.get(name)
        return option in (chosen if chosen is not None else default)
