"""Authentication: password hashing, token issue and revocation, role checks.

Tokens carry the user id (``sub``) and the role (``role`` claim). Revocation is
kept in Redis for every process to see, with a durable copy in PostgreSQL: if
Redis is unreachable, or lost its data since the last rebuild, the check falls
back to PostgreSQL, so a revoked token never comes back to life.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

import redis.exceptions
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerifyMismatchError
from flask import Flask, current_app, g
from flask_jwt_extended import (
    create_access_token,
    create_refresh_token,
    get_jwt,
    verify_jwt_in_request,
)
from sqlalchemy import select

from . import errors
from .extensions import db, jwt
from .models import RevokedToken, User
from .state import ticket_queue

_hasher = PasswordHasher()

P = ParamSpec("P")
R = TypeVar("R")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, InvalidHashError):
        return False


def issue_tokens(user: User) -> dict[str, Any]:
    claims = {"role": user.role}
    expires = current_app.config["JWT_ACCESS_TOKEN_EXPIRES"]
    return {
        "access_token": create_access_token(identity=str(user.id), additional_claims=claims),
        "refresh_token": create_refresh_token(identity=str(user.id), additional_claims=claims),
        "token_type": "Bearer",
        "expires_in": int(expires.total_seconds()),
    }


def refresh_access_token(user: User) -> dict[str, Any]:
    expires = current_app.config["JWT_ACCESS_TOKEN_EXPIRES"]
    token = create_access_token(identity=str(user.id), additional_claims={"role": user.role})
    return {"access_token": token, "expires_in": int(expires.total_seconds())}


def revoke_current_token() -> None:
    """Revoke the presented token at once, in every process.

    Redis first: if it is down the request fails with 503 and nothing changed.
    The PostgreSQL copy survives a Redis wipe.
    """
    claims = get_jwt()
    expires_at = datetime.fromtimestamp(claims["exp"], UTC)
    ttl = int((expires_at - datetime.now(UTC)).total_seconds()) + 1
    ticket_queue().revoke(claims["jti"], ttl)
    db.session.merge(RevokedToken(jti=claims["jti"], expires_at=expires_at))
    db.session.commit()


def _revoked_in_database(jti: str) -> bool:
    return db.session.get(RevokedToken, jti) is not None


def is_token_revoked(jwt_header: dict[str, Any], jwt_payload: dict[str, Any]) -> bool:
    jti = jwt_payload["jti"]
    try:
        revoked, trustworthy = ticket_queue().revocation(jti)
    except redis.exceptions.RedisError:
        # Sell and the admin writes keep working on PostgreSQL alone.
        g.redis_unavailable = True
        return _revoked_in_database(jti)
    if revoked:
        return True
    return False if trustworthy else _revoked_in_database(jti)


def ensure_active(user: User | None) -> User:
    """The one rule for a deactivated or deleted account: its tokens stop working."""
    if user is None or not user.is_active:
        raise errors.Unauthorized("the account is inactive or no longer exists")
    return user


def current_user_id() -> int:
    return int(get_jwt()["sub"])


def load_current_user() -> User:
    return ensure_active(db.session.get(User, current_user_id()))


def role_required(
    role: str, *, token: str = "access", load_user: bool = True
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Require a valid, unrevoked ``token`` ("access", "refresh" or "any") of ``role``
    ("admin", "agent", or "any" for either role).

    ``load_user=False`` leaves the active-account check to the view, for the
    hot agent paths that fold it into the query they run anyway.
    """

    def decorator(view: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(view)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            verify_jwt_in_request(refresh=token == "refresh", verify_type=token != "any")
            if role != "any" and get_jwt().get("role") != role:
                raise errors.Forbidden(f"this route needs the {role} role")
            if load_user:
                g.user = load_current_user()
            return view(*args, **kwargs)

        # Read by the API blueprint to document the bearer scheme and the 401/403.
        wrapper.auth_required = {"role": role}  # type: ignore[attr-defined]
        return wrapper

    return decorator


def register_jwt_callbacks(app: Flask) -> None:
    jwt.token_in_blocklist_loader(is_token_revoked)
    jwt.unauthorized_loader(lambda reason: errors.error_response(401, "missing_token", reason))
    jwt.invalid_token_loader(lambda reason: errors.error_response(401, "invalid_token", reason))
    jwt.expired_token_loader(
        lambda header, payload: errors.error_response(401, "token_expired", "the token has expired")
    )
    jwt.revoked_token_loader(
        lambda header, payload: errors.error_response(401, "token_revoked", "the token was revoked")
    )
    jwt.needs_fresh_token_loader(
        lambda header, payload: errors.error_response(
            401, "fresh_token_required", "a fresh token is required"
        )
    )


def find_user_by_name(username: str) -> User | None:
    return db.session.scalar(select(User).where(User.username == username))
