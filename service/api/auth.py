"""Login, refresh, logout."""

from __future__ import annotations

from typing import Any

from flask import g

from .. import auth
from ..ratelimit import limit_login_attempts
from ..schemas import AccessTokenSchema, ErrorSchema, LoginSchema, TokenSchema
from . import RETRY_AFTER, Blueprint, link

blp = Blueprint("auth", __name__, url_prefix="/api/auth", description="Tokens")

CREDENTIALS = {"username": "alice", "password": "correct-horse"}
TOKENS = {
    "access_token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ0eXBlIjoiYWNjZXNzIn0.c2lnbmF0dXJl",
    "refresh_token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ0eXBlIjoicmVmcmVzaCJ9.c2lnbmF0dXJl",
    "token_type": "Bearer",
    "expires_in": 3600,
}

# Tokens must not be kept by a browser or a proxy cache.
NO_STORE = {"Cache-Control": "no-store"}


@blp.route("/token/", methods=["POST"])
@blp.links(
    200,
    refreshToken=link(
        "refreshToken", "A new access token: present `refresh_token` as the bearer token"
    ),
    logout=link("logout", "End the session: present either token as the bearer token"),
)
@limit_login_attempts
@blp.arguments(LoginSchema, example=CREDENTIALS)
@blp.response(200, TokenSchema, example=TOKENS)
@blp.alt_response(401, schema=ErrorSchema, description="Wrong username or password")
@blp.alt_response(
    429,
    schema=ErrorSchema,
    description="Too many attempts for this username from this address",
    headers=RETRY_AFTER,
)
def login(credentials: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Exchange a username and password for an access and a refresh token."""
    user = auth.login(credentials["username"], credentials["password"])
    return auth.issue_tokens(user), NO_STORE


@blp.route("/refresh/", methods=["POST"], operation_id="refreshToken")
@blp.response(200, AccessTokenSchema)
@auth.role_required("any", token="refresh")
def refresh() -> tuple[dict[str, Any], dict[str, str]]:
    """Exchange a refresh token (as bearer) for a new access token in the same session."""
    return auth.refresh_access_token(g.user, auth.current_claims()), NO_STORE


@blp.route("/logout/", methods=["POST"])
@blp.response(204)
@auth.role_required("any", token="any")
def logout() -> None:
    """End the session: the presented token, its refresh token and every access token
    refreshed from it stop working at once, in every process."""
    auth.revoke_session(auth.current_claims())
