"""Sign-in and sign-out pages."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Response, flash, make_response, render_template, request, url_for
from marshmallow import ValidationError
from werkzeug.exceptions import TooManyRequests

from .. import auth, errors
from ..ratelimit import count_login_attempt
from ..schemas import LoginSchema
from . import _safe_next, bp, see_other
from .forms import Form, field_errors
from .signin import SignInRequired, current_visitor, sign_in, sign_out


def _login_page(form: Form, status: int, next_path: str | None) -> tuple[str, int]:
    return render_template("console/login.html", form=form, next_path=next_path), status


def _same_site_post() -> bool:
    """A sign-in posted by a page of this site (a browser sends Origin with a POST).
    Another site's form could otherwise sign a visitor in to an account of its
    choosing (login CSRF); before a sign-in there is no session to double-submit."""
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return origin is None  # no Origin: not a browser's cross-site form
    return urlsplit(origin).netloc == request.host


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response | tuple[str, int]:
    next_path = _safe_next(request.values.get("next"))
    if request.method == "GET":
        try:
            current_visitor()
        except SignInRequired:
            return _login_page(Form(), 200, next_path)
        return see_other(next_path or url_for("console.index"))

    username = request.form.get("username", "")
    typed = Form({"username": username})
    if not _same_site_post():
        typed.message = "This sign-in did not come from this console's page; nothing was done."
        return _login_page(typed, 403, next_path)
    try:
        # Counted as the API's login counts, before anything else is looked at.
        count_login_attempt(username)
    except TooManyRequests as exc:
        wait = exc.retry_after
        typed.message = (
            "Too many sign-in attempts from here or for this username. "
            f"Wait {wait} seconds, then try again."
            if wait
            else "Too many sign-in attempts. Wait a minute, then try again."
        )
        return _login_page(typed, 429, next_path)
    try:
        credentials = LoginSchema().load(
            {"username": username, "password": request.form.get("password", "")}
        )
    except ValidationError as exc:
        typed.errors = field_errors(exc)
        typed.message = "Enter your username and password."
        return _login_page(typed, 400, next_path)
    try:
        user = auth.login(credentials["username"], credentials["password"])
    except errors.Unauthorized:
        typed.message = "Wrong username or password."
        return _login_page(typed, 401, next_path)
    home = "console.dashboard" if user.role == "admin" else "console.agent_home"
    response = see_other(next_path or url_for(home))
    sign_in(response, user)
    return response


@bp.post("/logout")
def logout() -> Response:
    visitor = current_visitor()
    response = make_response(see_other(url_for("console.login")))
    sign_out(response, visitor)
    flash("You are signed out.", "done")
    return response
