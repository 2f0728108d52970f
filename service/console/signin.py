"""Signing in to the console: the API's accounts and sessions, kept in cookies.

flask-jwt-extended's cookie mode: a sign-in opens a session exactly as the API's
login does (service/auth.py), and puts its access token in an HttpOnly cookie
(path ``/``: the pages and the event streams read it) and its refresh token in
another (path ``/console/``: only the console renews with it). No token is ever
in the page or its script.

CSRF protection is flask-jwt-extended's double submit: both tokens carry the
session's ``csrf`` claim, which the page repeats in every form (``csrf_token``)
or in an ``X-CSRF-TOKEN`` header; a state-changing request without the match is
refused. The value stays the same for the whole session, so a form rendered
before the access token was renewed still submits.

Every request checks the session as an API request does: the signature and
expiry, the revocation (a sign-out, or the API's logout, ends it everywhere),
and that the account is still active, of the token's role and version.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import jwt
from flask import Response, current_app, g, request
from flask_jwt_extended import (
    get_jwt,
    set_access_cookies,
    set_refresh_cookies,
    unset_jwt_cookies,
    verify_jwt_in_request,
)
from flask_jwt_extended.exceptions import CSRFError, JWTExtendedException, NoAuthorizationError

from .. import auth, errors
from ..auth import Claims
from ..extensions import db
from ..models import User


class SignInRequired(Exception):
    """No usable session: the visitor signs in (again); ``reason`` says why, if it
    is worth saying (an expired or ended session)."""

    def __init__(self, reason: str | None = None) -> None:
        super().__init__(reason or "sign in")
        self.reason = reason


class CsrfFailed(Exception):
    """A state-changing request without the session's CSRF value."""


@dataclass(frozen=True)
class Visitor:
    """Who is signed in: the session's claims, the account, and the CSRF value its
    forms repeat."""

    claims: Claims
    user: User
    csrf: str


ENDED = "Your session has ended. Sign in again."


def sign_in(response: Response, user: User) -> None:
    """Open a session for ``user`` (as the API's login does) and set its cookies."""
    session, csrf = auth.new_session(), secrets.token_urlsafe(24)
    version = user.token_version
    access = auth.access_token(user.id, user.role, version, session, csrf=csrf)
    refresh = auth.refresh_token(user.id, user.role, version, session, csrf=csrf)
    set_access_cookies(response, access)
    set_refresh_cookies(response, refresh)


def sign_out(response: Response, visitor: Visitor) -> None:
    """End the session as the API's logout does (at once, in every process), and
    drop the cookies. If Redis is down this raises, and the session stays."""
    auth.revoke_session(visitor.claims)
    unset_jwt_cookies(response)


def forget_cookies(response: Response) -> None:
    unset_jwt_cookies(response)


def _verified(refresh: bool) -> tuple[str, str]:
    """flask-jwt-extended's check of one cookie (signature, expiry, and on a
    state-changing request the CSRF double submit); the token and its CSRF value."""
    try:
        verify_jwt_in_request(locations=["cookies"], refresh=refresh)
    except CSRFError:
        raise CsrfFailed() from None
    except NoAuthorizationError:
        # The cookie is there (the caller looked), so what is missing is the CSRF value.
        raise CsrfFailed() from None
    config = current_app.config
    name = config["JWT_REFRESH_COOKIE_NAME" if refresh else "JWT_ACCESS_COOKIE_NAME"]
    return request.cookies[name], str(get_jwt().get("csrf", ""))


def current_visitor() -> Visitor:
    """The signed-in visitor of this request, checked once per request."""
    visitor: Visitor | None = g.get("console_visitor")
    if visitor is not None:
        return visitor
    config = current_app.config
    access = request.cookies.get(config["JWT_ACCESS_COOKIE_NAME"])
    has_refresh = config["JWT_REFRESH_COOKIE_NAME"] in request.cookies
    if not access and not has_refresh:
        raise SignInRequired()
    token = csrf = None
    try:
        if access:
            try:
                token, csrf = _verified(refresh=False)
            except jwt.ExpiredSignatureError:
                if not has_refresh:
                    raise
        if token is None:
            # The access token expired (or its cookie is gone): renew it with the
            # refresh token, in the same session, with the same CSRF value.
            refresh_token, csrf = _verified(refresh=True)
            renewing = auth.decode(refresh_token)
            if renewing.type != "refresh":
                raise SignInRequired()
            token = auth.access_token(
                renewing.user_id, renewing.role, renewing.version, renewing.session, csrf=csrf
            )
            g.console_renewed = token
        claims = auth.decode(token)
    except jwt.ExpiredSignatureError:
        raise SignInRequired(ENDED) from None
    except (jwt.InvalidTokenError, JWTExtendedException, errors.Unauthorized):
        raise SignInRequired() from None
    if claims.type != "access" or not csrf:
        raise SignInRequired()
    # A page of an agent is its sign of life, as a request on an agent route is.
    seen = claims.user_id if claims.role == "agent" else None
    if auth.session_revoked(claims.session, seen):
        raise SignInRequired(ENDED)
    user = db.session.get(User, claims.user_id)
    try:
        auth.ensure_current(user, claims)
    except errors.Unauthorized:
        raise SignInRequired(ENDED) from None
    assert user is not None  # (ensure_current raised otherwise)
    # End the read's transaction: the agent's pages then run the domain's calls as
    # the API's agent routes do, on connections of their own (in embedded mode a
    # transaction left open would hold SQLite's one writer lock meanwhile).
    db.session.commit()
    g.token = claims  # the request's log line names the user, as for the API
    g.user = user
    visitor = Visitor(claims, user, csrf)
    g.console_visitor = visitor
    return visitor


def renew_cookie(response: Response) -> Response:
    """Set the access token renewed during this request, if one was."""
    renewed = g.get("console_renewed")
    if renewed is not None:
        set_access_cookies(response, renewed)
    return response
