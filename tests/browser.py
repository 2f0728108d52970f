"""A real browser for end-to-end tests: headless Debian Chromium driven by Playwright.

The browser is the machine's own (``/usr/bin/chromium``, from Debian's ``chromium``
package; ``.ci/run`` installs it), never one Playwright downloads. Its flags keep it
off the network: a test page loads only what the local server sends it.

A test that needs the browser fails when it cannot start; it is never skipped, so a
machine without Chromium cannot pass the suite unnoticed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, ConsoleMessage, Page, Request, Response, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# As root, on a machine without a GPU, and without the background traffic (updates,
# sync, field trials) a fresh profile would otherwise start; ``headless=True`` adds
# --headless.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--metrics-recording-only",
]
# Set to save the screenshots the tests take (into docs/), e.g. after a UI change.
SAVE_SCREENSHOTS = os.environ.get("SAVE_SCREENSHOTS") == "1"


@contextmanager
def launch_chromium() -> Iterator[Browser]:
    """Start headless Chromium; close it after.

    Playwright gives every launch a fresh profile directory of its own (and removes it),
    so nothing from an earlier run or a person's browser leaks into a test.
    """
    if not os.access(CHROMIUM, os.X_OK):
        raise RuntimeError(
            f"no browser at {CHROMIUM}: apt-get install chromium chromium-driver "
            "(or set CHROMIUM to another Chromium binary)"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


class Problems:
    """What went wrong on a page: console errors and warnings (which is where Chromium
    reports a Content-Security-Policy violation and a resource that failed to load),
    uncaught exceptions, failed requests and HTTP error answers."""

    def __init__(self, page: Page) -> None:
        self.seen: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.seen.append(f"uncaught: {error}"))
        page.on("requestfailed", self._request_failed)
        page.on("response", self._response)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in {"error", "warning"}:
            self.seen.append(f"console {message.type}: {message.text}")

    def _request_failed(self, request: Request) -> None:
        self.seen.append(f"request failed: {request.url} ({request.failure})")

    def _response(self, response: Response) -> None:
        if response.status >= 400:
            self.seen.append(f"HTTP {response.status}: {response.url}")


@contextmanager
def open_page(browser: Browser) -> Iterator[tuple[Page, Problems]]:
    """A page in a context of its own (no cookies or storage from another test), and
    the problems seen on it."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        yield page, Problems(page)
    finally:
        context.close()


def save_screenshot(page: Page, relative: str, full_page: bool = False) -> None:
    """Save ``page`` to ``relative`` (under the repository) when SAVE_SCREENSHOTS=1;
    ``full_page``: all of it, not only what the window shows."""
    if SAVE_SCREENSHOTS:
        path = ROOT / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path), full_page=full_page)
