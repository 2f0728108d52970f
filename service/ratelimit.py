"""The login attempt limit, counted in Redis by ``limits`` (the library Flask-Limiter is built on).

Only login is limited. Flask-Limiter 4 checks its limits in an app-wide
``before_request`` hook, which every request paid for, the agent hot path
included (5-9% of its CPU, measured with scripts/bench/hotpath.py); here the
check runs on the login route alone. Attempts are counted per client address
and username in fixed windows, with the service's key prefix. If the storage
is unreachable the attempt is let through: logging in needs only PostgreSQL.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from flask import Flask, current_app, request
from limits import RateLimitItem, parse_many
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter
from werkzeug.exceptions import TooManyRequests

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


class LoginLimit:
    def __init__(self, app: Flask) -> None:
        config = app.config
        self.items: list[RateLimitItem] = parse_many(config["LOGIN_RATE_LIMIT"])
        storage = storage_from_string(
            config["RATELIMIT_STORAGE_URI"], **config["RATELIMIT_STORAGE_OPTIONS"]
        )
        self.limiter = FixedWindowRateLimiter(storage)
        self.prefix = config["RATELIMIT_KEY_PREFIX"]

    def hit(self, key: str) -> float | None:
        """Count one attempt; the seconds to wait if it is one too many, else None."""
        identity = f"{self.prefix}:{key}"
        try:
            for item in self.items:
                if not self.limiter.hit(item, identity):
                    reset_at = self.limiter.get_window_stats(item, identity).reset_time
                    return max(reset_at - time.time(), 1.0)
        except Exception as exc:  # noqa: BLE001 - any storage failure: let the attempt through
            log.warning("login limit not enforced: its storage failed (%s)", exc)
        return None


def init_app(app: Flask) -> None:
    app.extensions["login_limit"] = LoginLimit(app)


def _attempt_key() -> str:
    """Attempts are counted per client address and username, so one client guessing
    one account is slowed while other users behind the same address log in."""
    body = request.get_json(silent=True)
    username = body.get("username") if isinstance(body, dict) else None
    return f"{request.remote_addr or ''}|{username[:64] if isinstance(username, str) else ''}"


def limit_login_attempts(view: Callable[P, R]) -> Callable[P, R]:
    """Answer 429 with Retry-After once an address and username used up their attempts."""

    @functools.wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        limit: LoginLimit = current_app.extensions["login_limit"]
        wait = limit.hit(_attempt_key())
        if wait is not None:
            raise TooManyRequests(
                "too many login attempts; retry later", retry_after=math.ceil(wait)
            )
        return view(*args, **kwargs)

    return wrapper
