"""Login, refresh, logout."""

from __future__ import annotations

from typing import Any

from flask import g

from .. import auth, errors
from ..schemas import AccessTokenSchema, LoginSchema, TokenSchema
from . import Blueprint

blp = Blueprint("auth", __name__, url_prefix="/api/auth", description="Tokens")


@blp.route("/token/", methods=["POST"])
@blp.arguments(LoginSchema)
@blp.response(200, TokenSchema)
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
