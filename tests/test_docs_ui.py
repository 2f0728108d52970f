"""The API docs and the home page: served by the service itself, whole without internet.
(The console's pages: tests/test_console.py and tests/test_console_ui.py.)

Swagger UI's files come from a pinned package and are served from this origin; the
docs page loads nothing else, runs no inline script and says so in its
Content-Security-Policy. Checked twice: with Flask's test client (what each response
is) and in a real headless Chromium against gunicorn (that the page renders the
document with no CSP violation and no failed request).
"""

from __future__ import annotations

from collections.abc import Iterator
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import pytest
from browser import Problems, save_screenshot
from conftest import service_env
from flask.testing import FlaskClient
from helpers import assert_error
from live import live_server
from playwright.sync_api import Page

TITLE = "Ticket assignment service"
CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


class References(HTMLParser):
    """The URLs a page loads (scripts, stylesheets, icons, images) and its inline scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: list[str] = []
        self.links: list[str] = []
        self.inline_scripts = 0
        self._in_script_without_src = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "script":
            if attributes.get("src"):
                self.loads.append(attributes["src"] or "")
            else:
                self._in_script_without_src = True
        elif tag == "link" and attributes.get("href"):
            self.loads.append(attributes["href"] or "")
        elif tag == "img" and attributes.get("src"):
            self.loads.append(attributes["src"] or "")
        elif tag == "a" and attributes.get("href"):
            self.links.append(attributes["href"] or "")
        if any(name.startswith("on") for name in attributes):
            self.inline_scripts += 1  # an event-handler attribute is inline script too

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script_without_src = False

    def handle_data(self, data: str) -> None:
        if self._in_script_without_src and data.strip():
            self.inline_scripts += 1


def references(html: str) -> References:
    parser = References()
    parser.feed(html)
    parser.close()
    return parser


def same_origin(url: str) -> bool:
    """A path on this origin: no scheme, no host (``//cdn.example`` has one)."""
    parts = urlsplit(url)
    return not parts.scheme and not parts.netloc and url.startswith("/")


@pytest.mark.parametrize("path", ["/api/docs", "/api/docs/"])
def test_docs_page_loads_only_same_origin_files_under_a_strict_policy(
    client: FlaskClient, path: str
) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    policy = {
        directive.split()[0]: directive.split()[1:]
        for directive in response.headers["Content-Security-Policy"].split(";")
        if directive.strip()
    }
    assert policy["default-src"] == ["'none'"]
    assert policy["script-src"] == ["'self'"]
    assert policy["connect-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["base-uri"] == ["'none'"]

    page = references(response.get_data(as_text=True))
    assert page.inline_scripts == 0
    assert page.loads, "the page loads no script or stylesheet"
    assert all(same_origin(url) for url in page.loads), page.loads
    assert any("swagger-ui-bundle.js" in url for url in page.loads)
    assert TITLE in response.get_data(as_text=True)


def test_every_file_the_docs_page_loads_is_served_with_its_type(client: FlaskClient) -> None:
    page = references(client.get("/api/docs").get_data(as_text=True))
    for url in page.loads:
        # Buffered: the test client then closes the file the response streams.
        response = client.get(url, buffered=True)
        assert response.status_code == 200, url
        suffix = "." + urlsplit(url).path.rsplit(".", 1)[-1]
        assert response.mimetype == CONTENT_TYPES[suffix], url
        assert response.headers["X-Content-Type-Options"] == "nosniff", url
        assert response.content_length, url


def test_swagger_ui_files_are_cached_long_and_versioned(client: FlaskClient) -> None:
    page = references(client.get("/api/docs").get_data(as_text=True))
    (bundle,) = [url for url in page.loads if "swagger-ui-bundle.js" in url]
    # The URL names the version, so an upgrade is a new URL, not a stale cache.
    assert urlsplit(bundle).query
    response = client.get(bundle, buffered=True)
    assert response.cache_control.max_age is not None
    assert response.cache_control.max_age >= 86400


@pytest.mark.parametrize(
    "path",
    [
        "/api/docs/assets/no-such-file.js",
        "/api/docs/assets/../__init__.py",
        "/api/docs/assets/%2e%2e%2fflask_swagger_ui.py",
        # In swagger-ui's folder, but no page of this service uses it.
        "/api/docs/assets/oauth2-redirect.html",
        "/api/docs/no-such-page",
        "/no/such/path",
    ],
)
def test_unknown_files_and_paths_are_json_404s(client: FlaskClient, path: str) -> None:
    assert_error(client.get(path), 404, "not_found")


def test_home_page_leads_to_the_console_the_docs_and_the_document(client: FlaskClient) -> None:
    for method in ("GET", "HEAD"):
        response = client.open("/", method=method)
        assert response.status_code == 200, method
        assert response.mimetype == "text/html"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "Content-Security-Policy" in response.headers
    page = references(client.get("/").get_data(as_text=True))
    assert "/api/docs" in page.links
    assert "/api/openapi.json" in page.links
    assert all(same_origin(url) for url in page.loads + page.links)
    assert page.inline_scripts == 0
    assert "/console/" in page.links
    for url in page.loads + page.links:
        # The console's door leads a visitor who is not signed in to its sign-in page.
        assert client.get(url, buffered=True, follow_redirects=True).status_code == 200, url


def test_the_pages_are_not_api_operations(client: FlaskClient) -> None:
    paths = client.get("/api/openapi.json").json["paths"]
    assert not [path for path in paths if path == "/" or path.startswith("/api/docs")]


# -- in a real browser ----------------------------------------------------------------


@pytest.fixture(scope="module")
def server(_schema: None) -> Iterator[str]:
    with live_server(service_env(), workers=1) as url:
        yield url


def test_swagger_ui_renders_the_document_in_a_browser(
    server: str, browser_page: tuple[Page, Problems]
) -> None:
    page, problems = browser_page
    page.goto(f"{server}/api/docs", wait_until="networkidle")
    # Swagger UI fetched /api/openapi.json and drew it: the title and the operations.
    title = page.locator(".swagger-ui .info .title")
    title.wait_for(state="visible", timeout=15_000)
    assert TITLE in title.inner_text()
    operations = page.locator(".swagger-ui .opblock")
    operations.first.wait_for(state="visible", timeout=15_000)
    assert operations.count() > 10
    assert page.locator(".opblock-summary-path", has_text="/api/auth/token/").count()
    save_screenshot(page, "docs/console/api-docs.png")

    # Open one operation: its request body and responses render under the policy too.
    login = operations.filter(has_text="/api/auth/token/")
    login.locator(".opblock-summary").click()
    login.locator(".responses-wrapper").wait_for(state="visible", timeout=5_000)
    # "Try it out" reaches the API from the page (connect-src allows this origin).
    healthz = operations.filter(has_text="/healthz")
    healthz.locator(".opblock-summary").click()
    healthz.locator("button.try-out__btn").click()
    healthz.locator("button.execute").click()
    answer = healthz.locator(".live-responses-table .response .response-col_status")
    answer.wait_for(state="visible", timeout=10_000)
    assert answer.inner_text().strip() == "200"

    assert problems.seen == []


def test_the_browser_would_report_a_violation(
    server: str, browser_page: tuple[Page, Problems]
) -> None:
    """The check above is not vacuous: an off-origin load on the docs page is blocked by
    the policy, and the problems list says so."""
    page, problems = browser_page
    page.goto(f"{server}/api/docs", wait_until="networkidle")
    assert problems.seen == []
    with page.expect_console_message(lambda message: "Content Security" in message.text):
        page.evaluate(
            "() => { const img = document.createElement('img');"
            " img.src = 'https://cdn.example.invalid/x.png'; document.body.append(img); }"
        )
    assert any("Content Security Policy" in problem for problem in problems.seen), problems.seen


def test_the_home_page_leads_to_the_docs_in_a_browser(
    server: str, browser_page: tuple[Page, Problems]
) -> None:
    page, problems = browser_page
    page.goto(f"{server}/", wait_until="networkidle")
    page.get_by_role("link", name="API docs").click()
    page.locator(".swagger-ui .info .title").wait_for(state="visible", timeout=15_000)
    assert urljoin(server, "/api/docs") == page.url.rstrip("/")
    assert problems.seen == []
