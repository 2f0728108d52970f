"""Login attempt limits, counted in Redis by ``limits`` (the library Flask-Limiter is built on).

Three limits, each in fixed windows under the service's key prefix, checked
before the password is (every check costs a tenth of a second of CPU):

* per client address and username (``LOGIN_RATE_LIMIT``): one client guessing
  one account is slowed, while other users behind the same address log in;
* per client address, across usernames (``LOGIN_ADDRESS_RATE_LIMIT``): a
  password spray from one address is bounded, and so is the CPU it costs;
* per username, across addresses (``LOGIN_ACCOUNT_RATE_LIMIT``): one account
  guessed from many addresses is bounded too.

Every attempt counts, before the password check, so concurrent attempts cannot
slip past a limit. Only login is limited: an app-wide hook would cost every
request. If the storage is unreachable the attempt is let through: logging in
needs only PostgreSQL.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from flask import Flask, current_app, request
from limits import RateLimitItem, parse_many
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter
from werkzeug.exceptions import TooManyRequests

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

# (config key, what the limit counts by): the order they are checked in.
LIMITS = (
    ("LOGIN_RATE_LIMIT", "address and username"),
    ("LOGIN_ADDRESS_RATE_LIMIT", "address"),
    ("LOGIN_ACCOUNT_RATE_LIMIT", "username"),
)


@dataclass(frozen=True)
class Limit:
    scope: str  # "address and username", "address" or "username"
    items: list[RateLimitItem]


class LoginLimit:
    def __init__(self, app: Flask) -> None:
        config = app.config
        self.limits = [Limit(scope, parse_many(config[key])) for key, scope in LIMITS]
        storage = storage_from_string(
            config["RATELIMIT_STORAGE_URI"], **config["RATELIMIT_STORAGE_OPTIONS"]
        )
        self.limiter = FixedWindowRateLimiter(storage)
        self.prefix = config["RATELIMIT_KEY_PREFIX"]

    def hit(self, address: str, username: str) -> tuple[str, float] | None:
        """Count one attempt under every limit; (the limit's scope, seconds to wait)
        for the first one it is one too many for, else None."""
        keys = {
            "address and username": f"pair:{address}|{username}",
            "address": f"address:{address}",
            "username": f"account:{username}",
        }
        try:
            for limit in self.limits:
                identity = f"{self.prefix}:{keys[limit.scope]}"
                for item in limit.items:
                    if not self.limiter.hit(item, identity):
                        reset_at = self.limiter.get_window_stats(item, identity).reset_time
                        return limit.scope, max(reset_at - time.time(), 1.0)
        except Exception as exc:  # noqa: BLE001 - any storage failure: let the attempt through
            log.warning("login limit not enforced: its storage failed (%s)", exc)
        return None


def init_app(app: Flask) -> None:
    app.extensions["login_limit"] = LoginLimit(app)


def _attempt() -> str | None:
    """The username of a login's JSON body, if it has one."""
    body = request.get_json(silent=True)
    username = body.get("username") if isinstance(body, dict) else None
    return username if isinstance(username, str) else None


def count_login_attempt(username: str | None) -> None:
    """Count one login attempt of the request's client for ``username``; 429 with
    Retry-After (TooManyRequests) once it is one too many for a limit. The API's
    login and the console's sign-in count through here."""
    limit: LoginLimit = current_app.extensions["login_limit"]
    # Matched in lower case, at most 64 characters.
    name = username[:64].lower() if username is not None else ""
    refused = limit.hit(request.remote_addr or "", name)
    if refused is not None:
        scope, wait = refused
        raise TooManyRequests(
            f"too many login attempts for this {scope}; retry later",
            retry_after=math.ceil(wait),
        )


def limit_login_attempts(view: Callable[P, R]) -> Callable[P, R]:
    """Answer 429 with Retry-After once an attempt is one too many for a limit."""

    @functools.wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        count_login_attempt(_attempt())
        return view(*args, **kwargs)

    return wrapper
