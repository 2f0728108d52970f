"""Login, refresh, logout."""

from __future__ import annotations

from typing import Any

from flask import g

from .. import auth, errors
from ..ratelimit import limit_login_attempts
from ..schemas import AccessTokenSchema, ErrorSchema, LoginSchema, TokenSchema
from . import RETRY_AFTER, Blueprint

blp = Blueprint("auth", __name__, url_prefix="/api/auth", description="Tokens")


@blp.route("/token/", methods=["POST"])
@limit_login_attempts
@blp.arguments(LoginSchema)
@blp.response(200, TokenSchema)
@blp.alt_response(401, schema=ErrorSchema, description="Wrong username or password")
@blp.alt_response(
    429,
    schema=ErrorSchema,
    description="Too many attempts for this username from this address",
    headers=RETRY_AFTER,
)
def login(credentials: dict[str, str]) -> dict[str, Any]:
    """Exchange a username and password for an access and a refresh token."""
    user = auth.find_user_by_name(credentials["username"])
    if (
        user is None
        or not user.is_active
        or not auth.verify_password(user.password_hash, credentials["password"])
    ):
        raise errors.Unauthorized("wrong username or password", code="invalid_credentials")
    return auth.issue_tokens(user)


@blp.route("/refresh/", methods=["POST"])
@blp.response(200, AccessTokenSchema)
@auth.role_required("any", token="refresh")
def refresh() -> dict[str, Any]:
    """Exchange a refresh token (as bearer) for a new access token."""
    return auth.refresh_access_token(g.user)


@blp.route("/logout/", methods=["POST"])
@blp.response(204)
@auth.role_required("any", token="any")
def logout() -> None:
    """Revoke the presented token (access or refresh) at once, in every process."""
    auth.revoke_current_token()
