"""Authentication: tokens, sessions, revocation and role checks.

A login opens a *session*: an access and a refresh token that share a session
id (``sid``), and every access token later refreshed from that refresh token
carries it too. Logout revokes the session, so it ends all of them at once.

Every token also carries the account's *token version* (``ver``). Changing a
password or deactivating the account bumps the version in the user's row, so
every token issued before stops working, and reactivation does not bring them
back. The check costs no extra round trip: every route already reads the
user's row (the agent routes inside the one query they run anyway), and the
role in the token must match the row too.

A bearer token is decoded once per request, with PyJWT, and its claims are
checked strictly (``exp``, ``jti``, ``type``, ``sub``, ``role``, ``ver`` and
``sid`` are required, each of the right type). flask-jwt-extended issues the
tokens.

Revoked sessions are kept in Redis, where every process sees them at once,
with a durable copy in PostgreSQL: if Redis is unreachable, or lost its data
since the last rebuild, the check falls back to PostgreSQL, so a revoked
session never comes back to life.
"""

from __future__ import annotations

import functools
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ParamSpec, Protocol, TypeVar

import jwt
import redis.exceptions
from flask import current_app, g, request
from flask_jwt_extended import create_access_token, create_refresh_token
from sqlalchemy import bindparam, delete, func, select

from . import errors, notify
from .database import autocommit
from .extensions import db
from .models import ROLES, RevokedSession, User
from .passwords import hash_password, verify_password
from .state import ticket_queue

__all__ = ["hash_password", "verify_password"]

P = ParamSpec("P")
R = TypeVar("R")

# Claims every token must carry; a token without one of them is refused.
REQUIRED_CLAIMS = ("exp", "iat", "jti", "type", "sub", "role", "ver", "sid")
ALGORITHM = "HS256"
MAX_ID = 2**31 - 1  # users.id is a 32-bit integer
_SESSION_ID = re.compile(r"[0-9a-f]{32}")
_USER_ID = re.compile(r"[1-9][0-9]{0,9}")

INVALID_TOKEN = "the token is malformed, or its signature is not this service's"
AGENT_ROUTES = "/api/agent/"


@dataclass(frozen=True)
class Claims:
    """What a verified token says: who, which role, which token version, which session."""

    user_id: int
    role: str
    version: int
    session: str
    type: str  # "access" or "refresh"
    expires: int  # unix seconds


class Account(Protocol):
    """The columns of a user's row that decide whether a token still speaks for it."""

    is_active: bool
    role: str
    token_version: int


# -- issuing -----------------------------------------------------------------
def new_session() -> str:
    return secrets.token_hex(16)


def _claims_of(role: str, version: int, session: str, csrf: str | None) -> dict[str, Any]:
    claims: dict[str, Any] = {"role": role, "ver": version, "sid": session}
    if csrf is not None:
        claims["csrf"] = csrf  # else flask-jwt-extended draws one per token
    return claims


def access_token(
    user_id: int, role: str, version: int, session: str, *, csrf: str | None = None
) -> str:
    """An access token for the account, in ``session`` (inside an app context).
    ``csrf``: the session's double-submit value, for a token kept in a cookie."""
    claims = _claims_of(role, version, session, csrf)
    return create_access_token(identity=str(user_id), additional_claims=claims)


def refresh_token(
    user_id: int, role: str, version: int, session: str, *, csrf: str | None = None
) -> str:
    claims = _claims_of(role, version, session, csrf)
    return create_refresh_token(identity=str(user_id), additional_claims=claims)


def _expires_in() -> int:
    return int(current_app.config["JWT_ACCESS_TOKEN_EXPIRES"].total_seconds())


def issue_tokens(user: User) -> dict[str, Any]:
    """Open a session: an access and a refresh token sharing a new session id."""
    session = new_session()
    return {
        "access_token": access_token(user.id, user.role, user.token_version, session),
        "refresh_token": refresh_token(user.id, user.role, user.token_version, session),
        "token_type": "Bearer",
        "expires_in": _expires_in(),
    }


def refresh_access_token(user: User, claims: Claims) -> dict[str, Any]:
    """A new access token in the refresh token's session."""
    token = access_token(user.id, user.role, user.token_version, claims.session)
    return {"access_token": token, "expires_in": _expires_in()}


def login(username: str, password: str) -> User:
    """The account these credentials open, or 401 ``invalid_credentials``.

    Every failed login costs one password check, whether or not the username
    exists and whether or not the account is active: the timing tells nothing.
    """
    user = find_user_by_name(username)
    usable = user is not None and user.is_active
    matched = verify_password(user.password_hash if usable and user else None, password)
    if not (matched and user is not None):
        raise errors.Unauthorized("wrong username or password", code="invalid_credentials")
    return user


def find_user_by_name(username: str) -> User | None:
    """Usernames are unique regardless of case, and found regardless of case."""
    return db.session.scalar(select(User).where(func.lower(User.username) == username.lower()))


# -- verifying -----------------------------------------------------------------
def _wants_event_stream() -> bool:
    """An EventSource's request: a GET asking for ``text/event-stream``. A browser sends
    that Accept header only from script on the page's own origin (a cross-site page
    could only navigate, which asks for HTML), so a stream may read the console's
    cookie without a CSRF check: it changes nothing."""
    return request.method == "GET" and "text/event-stream" in request.headers.get("Accept", "")


def _token(cookie: bool) -> str:
    """The request's token: the bearer header; or, on a route that allows it
    (``cookie``: the event streams) and for an EventSource's request, the console's
    access cookie. Every other API route needs the header, so a cookie never
    authorises a change through the API."""
    if cookie and "Authorization" not in request.headers and _wants_event_stream():
        value = request.cookies.get(current_app.config["JWT_ACCESS_COOKIE_NAME"])
        if value:
            return value
    return _bearer()


def _bearer() -> str:
    header = request.headers.get("Authorization")
    if not header:
        raise errors.Unauthorized(
            "an Authorization: Bearer <token> header is required", code="missing_token"
        )
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise errors.Unauthorized(
            "the Authorization header must read 'Bearer <token>'", code="invalid_token"
        )
    return token.strip()


def decode(token: str) -> Claims:
    """Verify ``token``'s signature and expiry and read its claims: one decode."""
    try:
        payload = jwt.decode(
            token,
            current_app.config["JWT_SECRET_KEY"],
            algorithms=[ALGORITHM],
            options={"require": list(REQUIRED_CLAIMS)},
        )
    except jwt.ExpiredSignatureError:
        raise errors.Unauthorized("the token has expired", code="token_expired") from None
    except jwt.InvalidTokenError:
        raise errors.Unauthorized(INVALID_TOKEN, code="invalid_token") from None
    return _claims(payload)


def _claims(payload: dict[str, Any]) -> Claims:
    sub, role, ver, sid = payload["sub"], payload["role"], payload["ver"], payload["sid"]
    kind, exp = payload["type"], payload["exp"]
    if not (
        isinstance(sub, str)
        and _USER_ID.fullmatch(sub)
        and int(sub) <= MAX_ID
        and role in ROLES
        and isinstance(ver, int)
        and not isinstance(ver, bool)
        and 0 <= ver <= MAX_ID
        and isinstance(sid, str)
        and _SESSION_ID.fullmatch(sid)
        and kind in ("access", "refresh")
        and isinstance(exp, int)
    ):
        raise errors.Unauthorized(INVALID_TOKEN, code="invalid_token")
    return Claims(int(sub), role, ver, sid, kind, exp)


_REVOKED = select(RevokedSession.sid).where(RevokedSession.sid == bindparam("sid"))


def _revoked_in_database(session: str) -> bool:
    """PostgreSQL's copy, read on a connection of its own that is given back at once:
    the request's ORM session must not hold a connection while the view takes another
    (under gevent, many requests doing that at once would empty the pool)."""
    with db.engine.connect() as conn, autocommit(conn):
        return conn.scalar(_REVOKED, {"sid": session}) is not None


def session_revoked(session: str, seen_agent: int | None = None) -> bool:
    """Whether ``session`` was logged out: Redis, or PostgreSQL when Redis cannot be
    trusted. ``seen_agent`` is noted as seen now, on the same round trip."""
    try:
        revoked, trustworthy, streaming = ticket_queue().check_session(session, seen_agent)
    except redis.exceptions.RedisError:
        # Sell and the admin writes keep working on PostgreSQL alone.
        g.redis_unavailable = True
        return _revoked_in_database(session)
    # Whether this request's writes of events should tell the event streams
    # (service/notify.py): learnt on the round trip made anyway.
    g.streams_open = streaming
    if revoked:
        return True
    return False if trustworthy else _revoked_in_database(session)


def authenticate(kind: str = "access", cookie: bool = False) -> Claims:
    """Verify the request's bearer token (``kind``: "access", "refresh" or "any";
    ``cookie``: an EventSource may present the console's cookie instead) and its
    session; remember its claims for the request."""
    claims = decode(_token(cookie))
    if kind != "any" and claims.type != kind:
        raise errors.Unauthorized(f"this route needs an {kind} token", code="wrong_token_type")
    # A request on an agent route is the agent's sign of life (its last-seen time).
    agent_route = claims.role == "agent" and request.path.startswith(AGENT_ROUTES)
    if session_revoked(claims.session, claims.user_id if agent_route else None):
        raise errors.Unauthorized("the token was revoked", code="token_revoked")
    g.token = claims
    return claims


def current_claims() -> Claims:
    claims: Claims = g.token
    return claims


def current_user_id() -> int:
    return current_claims().user_id


def ensure_current(account: Account | None, claims: Claims) -> None:
    """The one rule for whether a verified token still speaks for its account: the
    account exists and is active, has the token's role, and has not changed its
    password nor been deactivated since the token was issued."""
    if account is None or not account.is_active:
        raise errors.Unauthorized("the account is inactive or no longer exists")
    if account.token_version != claims.version or account.role != claims.role:
        raise errors.Unauthorized(
            "the token was issued before the account's password changed or it was"
            " deactivated; log in again",
            code="token_outdated",
        )


def load_current_user() -> User:
    claims = current_claims()
    user = db.session.get(User, claims.user_id)
    ensure_current(user, claims)
    assert user is not None  # (ensure_current raised otherwise)
    return user


def role_required(
    role: str, *, token: str = "access", load_user: bool = True, cookie: bool = False
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Require a valid token of kind ``token`` ("access", "refresh" or "any") of
    ``role`` ("admin", "agent", or "any" for either role). ``cookie=True``: the
    route is an event stream, which the console's page opens with its cookie.

    ``load_user=False`` leaves the account check (``ensure_current``) to the view,
    for the hot agent paths that fold it into the query they run anyway.
    """

    def decorator(view: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(view)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            claims = authenticate(token, cookie=cookie)
            if role != "any" and claims.role != role:
                raise errors.Forbidden(f"this route needs the {role} role")
            if load_user:
                g.user = load_current_user()
            return view(*args, **kwargs)

        # Read by the API blueprint to document the bearer scheme and the 401/403.
        wrapper.auth_required = {"role": role}  # type: ignore[attr-defined]
        return wrapper

    return decorator


# -- ending sessions -------------------------------------------------------------
def revoke_session(claims: Claims) -> None:
    """Log the session out at once, in every process: the presented token, its
    refresh token and every access token refreshed from it.

    Redis first: if it is down the request fails with 503 and nothing changed.
    The PostgreSQL copy survives a Redis wipe. It is kept for as long as any
    token of the session could still be valid.
    """
    config = current_app.config
    lifetime = config["JWT_REFRESH_TOKEN_EXPIRES"] + config["JWT_ACCESS_TOKEN_EXPIRES"]
    expires_at = datetime.now(UTC) + lifetime
    ticket_queue().revoke(claims.session, int(lifetime.total_seconds()) + 1)
    db.session.merge(RevokedSession(sid=claims.session, expires_at=expires_at))
    db.session.commit()
    # Its open event streams and waiting fetches end now, in every process.
    notify.session_ended(ticket_queue(), claims.session)


def forget_expired_revocations(session: Any, limit: int = 1000) -> int:
    """Delete up to ``limit`` revoked sessions no token of which can be valid any more
    (the workers' housekeeping); how many. Redis's copies expire by themselves."""
    expired = (
        select(RevokedSession.sid)
        .where(RevokedSession.expires_at < datetime.now(UTC))
        .limit(limit)
        .scalar_subquery()
    )
    deleted = session.execute(delete(RevokedSession).where(RevokedSession.sid.in_(expired)))
    session.commit()
    return int(deleted.rowcount or 0)
