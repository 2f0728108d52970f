"""Pages for a person with a browser: the home page and the API docs (Swagger UI); the
console is service/console.

Swagger UI's files come from the pinned ``flask-swagger-ui`` package and are served
from this origin, so the docs work without internet and no third-party script runs
here. The pages load nothing from elsewhere and run no inline script, and their
Content-Security-Policy makes the browser refuse anything else. They are registered
on the app, not on flask-smorest's Api: the OpenAPI document lists the API only.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path
from typing import Any, NamedTuple

import flask_swagger_ui
from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    render_template,
    send_from_directory,
    url_for,
)

bp = Blueprint("pages", __name__)

SWAGGER_UI_DIR = Path(flask_swagger_ui.__file__).resolve().parent / "dist"
SWAGGER_UI_VERSION = version("flask-swagger-ui")
# The files of swagger-ui's dist/ that the docs page loads, with their types; no
# other file there is served. Not oauth2-redirect.html in particular: a page with
# scripts of its own for OAuth2 logins, which this service does not offer.
SWAGGER_UI_FILES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "index.css": "text/css",
    "favicon-16x16.png": "image/png",
    "favicon-32x32.png": "image/png",
}
# Swagger UI's files change only with the pinned version, which their URLs carry
# (``?v=``), so a browser may keep them for a year.
SWAGGER_UI_MAX_AGE = 365 * 24 * 3600
# The service's own files for these pages; they change with any release, so a
# browser revalidates them (304 while unchanged).
ASSETS_DIR = Path(__file__).resolve().parent / "assets"

# Only this origin's files, and only the kinds Swagger UI needs (no fonts, frames,
# workers or plugins); checked in a real browser by tests/test_docs_ui.py.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        # swagger-ui-bundle.js and the file that starts it; no inline script.
        "script-src 'self'",
        # Swagger UI's stylesheets. No 'unsafe-inline': its components and its
        # syntax highlighter set styles through the DOM, which the policy allows.
        # (The one style attribute it writes as markup is a column alignment in a
        # Markdown table of a description; none of ours has one, and the browser
        # test would see the violation.)
        "style-src 'self'",
        # The favicon; swagger-ui.css draws its icons as data: SVG images.
        "img-src 'self' data:",
        # The OpenAPI document, and the requests "Try it out" sends to this API.
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        # No other site may frame these pages (clickjacking the "Try it out" buttons).
        "frame-ancestors 'none'",
    ]
)


class Link(NamedTuple):
    """A link on the home page: the endpoint it leads to, its text and what it is."""

    endpoint: str
    title: str
    description: str


# The home page's links, in order: a new page of the service is one more line here.
HOME_LINKS = [
    Link("console.index", "Console", "sign in: agents work their tickets, admins run the service"),
    Link("pages.api_docs", "API docs", "every operation, its parameters and its answers"),
    Link("api-docs.openapi_json", "OpenAPI document", "the same as OpenAPI 3 JSON, for tools"),
]


def swagger_ui_url(name: str) -> str:
    """The URL of one of Swagger UI's files, naming the version it is from."""
    return url_for("pages.swagger_ui_file", name=name, v=SWAGGER_UI_VERSION)


@bp.context_processor
def template_helpers() -> dict[str, Any]:
    return {"swagger_ui": swagger_ui_url, "title": current_app.config["API_TITLE"]}


@bp.after_request
def protect(response: Response) -> Response:
    """Every answer of these routes, the JSON 404 of a missing file included, carries
    the policy, and the browser uses each file as the type it was sent as."""
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@bp.get("/")
def home() -> str:
    """What a person who opens the service's address sees: where to go from here."""
    return render_template("home.html", links=HOME_LINKS)


@bp.get("/api/docs")
def api_docs() -> str:
    """Swagger UI on the OpenAPI document, from this origin's files only."""
    return render_template("api_docs.html")


@bp.get("/api/docs/assets/<name>")
def swagger_ui_file(name: str) -> Response:
    """One of the Swagger UI files the docs page loads; any other name is a 404."""
    mimetype = SWAGGER_UI_FILES.get(name)
    if mimetype is None:
        abort(404)
    response = send_from_directory(
        SWAGGER_UI_DIR, name, mimetype=mimetype, max_age=SWAGGER_UI_MAX_AGE
    )
    response.cache_control.immutable = True
    return response


@bp.get("/api/docs/swagger-initializer.js")
def swagger_initializer() -> Response:
    """The script that starts Swagger UI: a file, not inline, so the policy can refuse
    every inline script."""
    return send_from_directory(
        ASSETS_DIR, "swagger-initializer.js", mimetype="text/javascript", max_age=0
    )
