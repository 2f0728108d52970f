"""The console: web pages for agents and admins at ``/console/``.

Server-rendered (Jinja templates in ``service/templates/console/``), with one
small script of the service's own (``service/assets/console.js``) for live
updates; everything a page loads comes from this origin, under the same strict
Content-Security-Policy as the API docs. Every page works without the script:
actions are plain forms that post, then redirect back with a message.

The views call the same domain functions as the API, and read forms with the
API's schemas (``forms.py``); signing in opens an API session kept in cookies
(``signin.py``).

Live updates: a page marks the parts that change with ``data-live``; the script
fetches the page again and replaces them. It does so on every message of the
service's event stream when the service has one (``/api/agent/events/``,
``/api/admin/events/``), and otherwise every few seconds.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple, ParamSpec, TypeVar
from urllib.parse import urlsplit

import redis.exceptions
from flask import (
    Blueprint,
    Flask,
    Request,
    Response,
    abort,
    current_app,
    flash,
    g,
    make_response,
    redirect,
    render_template,
    request,
    send_from_directory,
    url_for,
)
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import HTTPException

from .. import errors
from ..domain.events import EVENT_TYPES
from ..models import PRIORITIES, utcnow
from ..pages import CONTENT_SECURITY_POLICY, swagger_ui_url
from .forms import Failure, failure
from .signin import CsrfFailed, SignInRequired, Visitor, current_visitor, renew_cookie

bp = Blueprint("console", __name__, url_prefix="/console")

P = ParamSpec("P")
R = TypeVar("R")

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
ASSETS = {"console.css": "text/css", "console.js": "text/javascript"}

# The event streams the live parts follow when the service has them.
AGENT_STREAM = "/api/agent/events/"
ADMIN_STREAM = "/api/admin/events/"
# Seconds between two refreshes of the live parts when there is no stream, and
# beside one: ages and the chart move on, and a page stays live even when its
# stream silently stops delivering (a proxy that buffers). Beside a stream the
# refresh is slow: thousands of open pages each refreshing every few seconds
# would be a steady load of page renders for nothing.
POLL_SECONDS = 3
STREAM_POLL_SECONDS = 30


class NavLink(NamedTuple):
    endpoint: str
    title: str


AGENT_NAV = [NavLink("console.agent_home", "My tickets")]
ADMIN_NAV = [
    NavLink("console.dashboard", "Dashboard"),
    NavLink("console.tickets", "Tickets"),
    NavLink("console.queues", "Queues"),
    NavLink("console.users", "Users"),
    NavLink("console.webhooks", "Webhooks"),
]


def has_route(path: str) -> bool:
    """Whether this service answers GET ``path`` (an optional part, such as the event
    streams, is there or not)."""
    found: dict[str, bool] = current_app.extensions.setdefault("console_routes", {})
    if path not in found:
        try:
            current_app.url_map.bind("localhost").match(path, method="GET")
            found[path] = True
        except HTTPException:
            found[path] = False
    return found[path]


def requires(role: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """A signed-in visitor of ``role`` ("agent", "admin" or "any")."""

    def decorator(view: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(view)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            visitor = current_visitor()
            if role != "any" and visitor.user.role != role:
                raise errors.Forbidden(f"this page is for {role}s")
            return view(*args, **kwargs)

        return wrapper

    return decorator


def visitor() -> Visitor:
    return current_visitor()


def ticket_label(ticket: Any) -> str:
    """How the pages' messages name a ticket: #42 “Printer on fire”."""
    return f"#{ticket.id} “{ticket.title}”"


def see_other(url: str) -> Response:
    """A redirect after a form (303: the browser follows it with a GET)."""
    return make_response(redirect(url, code=303))


# -- what templates use ----------------------------------------------------------
def age(value: datetime | None, now: datetime | None = None) -> str:
    """How long ago, in a few characters: "40 s", "12 min", "3 h 5 min", "2 d 4 h"."""
    if value is None:
        return "never"
    now = now or utcnow()
    if value.tzinfo is None:
        value = value.replace(tzinfo=now.tzinfo)
    seconds = max(int((now - value).total_seconds()), 0)
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def when(value: datetime | None) -> str:
    """An absolute time, in UTC."""
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=utcnow().tzinfo)
    return value.astimezone(utcnow().tzinfo).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(value: datetime | None) -> str:
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=utcnow().tzinfo)
    return value.isoformat()


def priority_name(value: Any) -> str:
    return PRIORITIES[value] if isinstance(value, int) else str(value)


def asset(name: str) -> str:
    return url_for("console.asset_file", name=name)


@bp.context_processor
def template_helpers() -> dict[str, Any]:
    current: Visitor | None = g.get("console_visitor")
    nav = []
    if current is not None:
        nav = ADMIN_NAV if current.user.role == "admin" else AGENT_NAV
    return {
        "visitor": current,
        "csrf_token": current.csrf if current is not None else "",
        "nav": nav,
        "age": age,
        "when": when,
        "iso": iso,
        "priority_name": priority_name,
        "asset": asset,
        "favicon": swagger_ui_url("favicon-32x32.png"),
        "priorities": PRIORITIES,
        "event_types": " ".join(EVENT_TYPES),
        "title": current_app.config["API_TITLE"],
    }


def live(stream_path: str | None) -> dict[str, Any]:
    """What a page with live parts tells the script: the stream to follow, if the
    service has it, and how often to refresh anyway."""
    stream = stream_path if stream_path and has_route(stream_path) else None
    return {
        "live_stream": stream,
        "live_poll": STREAM_POLL_SECONDS if stream else POLL_SECONDS,
    }


# -- answers -----------------------------------------------------------------------
@bp.after_request
def _protect(response: Response) -> Response:
    """The pages load nothing from elsewhere and run no inline script."""
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["Referrer-Policy"] = "same-origin"
    return renew_cookie(response)


def _safe_next(target: str | None) -> str | None:
    """A console path to come back to after signing in; nothing off this site."""
    if not target:
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/console/"):
        return None
    if "\\" in target or target.startswith("//"):
        return None
    return target


def _sign_in_required(exc: SignInRequired) -> Response:
    from .signin import forget_cookies

    if exc.reason:
        flash(exc.reason, "problem")
    target = request.full_path if request.method == "GET" else None
    if target is not None and target.endswith("?"):
        target = target[:-1]
    response = see_other(url_for("console.login", next=_safe_next(target)))
    forget_cookies(response)
    return response


def _csrf_failed(_: CsrfFailed) -> tuple[str, int]:
    problem = Failure(
        403,
        "csrf_failed",
        "This form could not be checked as coming from this console (it may be stale, or"
        " from another site). Nothing was changed. Reload the page and try again.",
    )
    return render_template("console/error.html", problem=problem), 403


def _failed(exc: Exception) -> tuple[str, int]:
    """The API's answer to ``exc`` (its handlers log as they do for the API), as a page."""
    problem = failure(exc)
    return render_template("console/error.html", problem=problem), problem.status


# The classes the app's JSON handlers are registered for: Flask looks a handler up
# class by class, the blueprint's before the app's, so each needs the blueprint's own.
for _kind in (
    Exception,
    HTTPException,
    errors.ServiceError,
    DBAPIError,
    PoolTimeoutError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.ResponseError,
    Failure,
):
    bp.register_error_handler(_kind, _failed)
bp.register_error_handler(SignInRequired, _sign_in_required)
bp.register_error_handler(CsrfFailed, _csrf_failed)


class ConsoleSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie session (the console's one-time messages), opened on
    the console's pages only: its cookie is scoped to them, and an API request
    would otherwise pay for a signing serializer it never uses."""

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if not request.path.startswith(bp.url_prefix or "/console"):
            return self.make_null_session(app)
        return super().open_session(app, request)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    app.session_interface = ConsoleSessions()


@bp.get("/assets/<name>")
def asset_file(name: str) -> Response:
    mimetype = ASSETS.get(name)
    if mimetype is None:
        abort(404)
    return send_from_directory(ASSETS_DIR, name, mimetype=mimetype, max_age=0)


@bp.get("/")
def index() -> Response:
    """The console's door: each role's home, or the sign-in page."""
    try:
        current = current_visitor()
    except SignInRequired:
        return see_other(url_for("console.login"))
    home = "console.dashboard" if current.user.role == "admin" else "console.agent_home"
    return see_other(url_for(home))


# The pages: each module adds its routes to ``bp``.
from . import admin, agent, session_views, tickets, users  # noqa: E402, F401
