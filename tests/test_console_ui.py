"""The console end to end, in a real browser: Debian's headless Chromium, driven by
Playwright, against gunicorn on PostgreSQL and Redis (tests/browser.py).

An agent signs in, gets tickets, sells one, goes away and back; an admin creates a
queue and a ticket in it, gives it to the agent and takes it back while the agent's
page follows live, and deactivates a user; a bad sign-in, and the CSRF check. The
pages run under the console's Content-Security-Policy and load only this origin's
files: any console error, refused load or failed request fails the test.

With SAVE_SCREENSHOTS=1 each page is saved to docs/console/ (docs/console.md shows them).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from http import HTTPStatus
from pathlib import Path

import pytest
import sqlalchemy as sa
from browser import Problems, open_page, save_screenshot
from conftest import PASSWORD, Factory, fresh_app, service_env
from flask import Flask
from live import live_server
from playwright.sync_api import Browser, Page, expect
from test_embedded import credentials, embedded_env, flask_cli

from service.domain import queues as queue_domain
from service.extensions import db

# The agent's page follows the event stream: a change shows within this long, well
# before the page's slow refresh beside the stream (every 30 s) could show it.
LIVE_MS = 10_000
PHONE = {"width": 390, "height": 844}
# An event stream the browser cut when the page was left: no problem.
STREAM_LEFT = re.compile(r"request failed: \S+/api/(agent|admin)/events/\S* \(net::ERR_ABORTED\)")


@pytest.fixture(scope="module")
def server(_schema: None) -> Iterator[str]:
    with live_server(service_env(CONSOLE_COOKIE_SECURE="false"), workers=1) as url:
        yield url


# Where each test's event ids start: far above what an earlier test could write.
_event_ids = itertools.count(1_000_000, 1_000_000)


@pytest.fixture
def app(_schema: None, server: str) -> Iterator[Flask]:
    """The test's own app on the server's databases, emptied first.

    Event ids keep growing from one test to the next, as in production: the
    server lives across the tests, and its event streams read on from the
    newest id they have seen."""
    with fresh_app() as app:
        with app.app_context():
            db.session.execute(
                sa.text("SELECT setval(pg_get_serial_sequence('ticket_events', 'id'), :newest)"),
                {"newest": next(_event_ids)},
            )
            db.session.commit()
        yield app


@pytest.fixture
def pages(browser: Browser) -> Iterator[Callable[[], tuple[Page, Problems]]]:
    """Opens pages for different people, each in a context of its own (its own cookies)."""
    with ExitStack() as stack:
        yield lambda: stack.enter_context(open_page(browser))


def sign_in(page: Page, server: str, username: str, password: str = PASSWORD) -> None:
    """With the keyboard, in the page's focus order: username, password, Enter."""
    page.goto(f"{server}/console/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("Username").focus()
    page.keyboard.type(username)
    page.keyboard.press("Tab")
    page.keyboard.type(password)
    page.keyboard.press("Enter")


def section(page: Page, name: str) -> None:
    page.get_by_role("navigation", name="Sections").get_by_role("link", name=name).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(name)


def message(page: Page) -> str:
    flash = page.locator("[data-flash]").first
    expect(flash).to_be_visible()
    # The message has the focus, so a screen reader reads it after the action.
    page.wait_for_function(
        "() => !!document.activeElement && document.activeElement.hasAttribute('data-flash')",
        timeout=5_000,
    )
    return flash.inner_text()


def unexpected(problems: Problems, *refusals: tuple[int, str]) -> list[str]:
    """The problems seen, less the refusals a test asked for: (status, URL) answers,
    each reported twice (the answer, and Chromium's console line about it)."""
    expected = set()
    for status, url in refusals:
        expected.add(f"HTTP {status}: {url}")
        expected.add(
            f"console error: Failed to load resource: the server responded with a status of"
            f" {status} ({HTTPStatus(status).phrase.upper()})"
        )
    return [
        problem
        for problem in problems.seen
        if problem not in expected and not STREAM_LEFT.fullmatch(problem)
    ]


def fits_the_width(page: Page) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


def test_an_agent_gets_tickets_sells_one_goes_away_and_back(
    app: Flask, server: str, pages: Callable[[], tuple[Page, Problems]]
) -> None:
    factory = Factory(app)
    factory.user("alice", capacity=3)
    ids = factory.tickets(4, title="Printer jammed on floor")
    page, problems = pages()

    sign_in(page, server, "alice")
    expect(page.get_by_role("heading", name="My tickets")).to_be_visible()
    expect(page.locator("#held-summary")).to_have_text("You hold 0 of 3 tickets.")

    page.get_by_role("button", name="Get tickets").click()
    assert message(page).startswith("You got 3 new tickets")
    rows = page.locator("#held tbody tr")
    expect(rows).to_have_count(3)
    assert [row.get_attribute("id") for row in rows.all()] == [f"ticket-{i}" for i in ids[:3]]
    first = rows.first
    for column in ("Printer jammed on floor 0", "general", "normal"):
        expect(first).to_contain_text(column)
    expect(first.locator("time")).to_have_text(re.compile(r"^\d+ (s|min)$"))
    save_screenshot(page, "docs/console/agent.png")

    page.get_by_role("button", name=f"Sell #{ids[1]} Printer jammed on floor 1").click()
    assert message(page) == f"Sold #{ids[1]} “Printer jammed on floor 1”."
    expect(rows).to_have_count(2)

    page.get_by_role("button", name="Away").click()
    assert message(page).startswith("You are away")
    expect(page.get_by_role("button", name="Away")).to_have_attribute("aria-pressed", "true")
    page.get_by_role("button", name="Get tickets").click()
    assert "No new tickets: you are away" in message(page)
    expect(rows).to_have_count(2)

    page.get_by_role("button", name="Online").click()
    assert message(page).startswith("You are online")
    page.get_by_role("button", name="Get tickets").click()
    assert message(page).startswith("You got 1 new ticket")
    expect(rows).to_have_count(3)

    page.set_viewport_size(PHONE)
    assert fits_the_width(page)
    save_screenshot(page, "docs/console/agent-phone.png")
    assert unexpected(problems) == []


def test_an_admin_runs_the_service_while_the_agent_page_follows_live(
    app: Flask, server: str, pages: Callable[[], tuple[Page, Problems]]
) -> None:
    factory = Factory(app)
    admin = factory.user("admin", role="admin")
    alice = factory.user("alice", capacity=5)
    bob = factory.user("bob", capacity=5)
    assert admin.id

    agent_page, agent_problems = pages()
    sign_in(agent_page, server, "alice")
    held = agent_page.locator("#held tbody tr")
    expect(agent_page.locator("#held-summary")).to_have_text("You hold 0 of 5 tickets.")

    page, problems = pages()
    sign_in(page, server, "admin")
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()

    # A queue, and alice works it.
    section(page, "Queues")
    page.get_by_label("Name").fill("billing")
    page.get_by_label("Description").fill("Invoices and refunds")
    page.get_by_role("button", name="Create the queue").click()
    assert message(page) == "Queue “billing” created."
    expect(page.get_by_role("link", name="billing")).to_be_visible()
    save_screenshot(page, "docs/console/queues.png")
    with app.app_context():
        assert "billing" in queue_domain.queue_names(db.session)

    section(page, "Users")
    page.get_by_role("link", name="alice").click()
    page.get_by_role("checkbox", name="billing").check()
    page.get_by_role("button", name="Save").click()
    assert message(page) == "Capacity and queues saved."

    # A ticket in it: a failed form keeps what was typed.
    section(page, "Tickets")
    page.get_by_role("link", name="New ticket").click()
    page.get_by_label("Description").fill("Charged twice for March")
    page.get_by_label("Queue").select_option("billing")
    page.get_by_label("Priority").select_option("urgent")
    page.get_by_role("button", name="Create the ticket").click()
    assert message(page) == "Some fields need a change; see below."
    expect(page.get_by_label("Description")).to_have_value("Charged twice for March")
    expect(page.get_by_label("Queue")).to_have_value("billing")
    expect(page.get_by_label("Title")).to_have_attribute("aria-invalid", "true")
    save_screenshot(page, "docs/console/ticket-new-error.png")
    page.get_by_label("Title").fill("Charged twice")
    page.get_by_role("button", name="Create the ticket").click()
    assert message(page).startswith("Ticket #") and "created in “billing”" in message(page)
    ticket_url = page.url

    # The agent fetches it; then the admin takes it back and gives it again, and the
    # agent's page follows without a reload.
    agent_page.get_by_role("button", name="Get tickets").click()
    expect(held).to_have_count(1)
    expect(held.first).to_contain_text("Charged twice")
    expect(held.first).to_contain_text("urgent")

    page.goto(ticket_url)
    page.get_by_role("button", name="Release to its queue").click()
    assert "released: it waits in “billing” again" in message(page)
    expect(agent_page.locator("#held")).to_contain_text("You hold no tickets", timeout=LIVE_MS)
    expect(agent_page.locator("#held-summary")).to_have_text("You hold 0 of 5 tickets.")

    page.get_by_label("Agent", exact=True).select_option(str(alice.id))
    page.get_by_role("button", name="Assign").click()
    assert message(page).endswith("assigned to alice.")
    expect(held).to_have_count(1, timeout=LIVE_MS)
    expect(held.first).to_contain_text("Charged twice")
    save_screenshot(agent_page, "docs/console/agent-live.png")

    # Given to bob instead: it leaves alice's page.
    page.get_by_label("Agent", exact=True).select_option(str(bob.id))
    page.get_by_role("button", name="Assign").click()
    assert message(page).endswith("assigned to bob.")
    expect(agent_page.locator("#held")).to_contain_text("You hold no tickets", timeout=LIVE_MS)
    expect(page.locator("table").last).to_contain_text("released")
    save_screenshot(page, "docs/console/ticket.png", full_page=True)

    # bob is deactivated: his ticket goes back to its queue.
    section(page, "Users")
    save_screenshot(page, "docs/console/users.png")
    page.get_by_role("link", name="bob").click()
    page.get_by_role("link", name="Deactivate…").click()
    expect(page.get_by_role("heading", name="Deactivate “bob”?")).to_be_visible()
    page.get_by_role("button", name="Deactivate").click()
    assert message(page) == "Account deactivated; its sessions have ended."
    expect(page.get_by_role("button", name="Reactivate")).to_be_visible()
    save_screenshot(page, "docs/console/user.png", full_page=True)

    section(page, "Tickets")
    expect(page.locator("tbody")).to_contain_text("unassigned")
    save_screenshot(page, "docs/console/tickets.png")

    # The dashboard: the queues, the agents sorted and filtered, the events, the chart.
    section(page, "Dashboard")
    queues_table = page.locator("#queues-live")
    expect(queues_table).to_contain_text("billing")
    feed = page.locator("#feed-live")
    expect(feed).to_contain_text("released")
    expect(page.locator("svg.chart rect")).not_to_have_count(0)
    page.locator("#agents-live th a", has_text="Held / capacity").click()
    expect(page.locator("th[aria-sort]")).to_contain_text("Held / capacity")
    save_screenshot(page, "docs/console/dashboard.png", full_page=True)
    page.get_by_label("Status").select_option("online")
    page.get_by_label("Name contains").fill("ali")
    page.get_by_role("button", name="Filter").click()
    agents = page.locator("#agents-live tbody tr")
    expect(agents).to_have_count(1)
    expect(agents.first).to_contain_text("alice")
    page.set_viewport_size(PHONE)
    assert fits_the_width(page)
    save_screenshot(page, "docs/console/dashboard-phone.png")

    assert unexpected(problems, (400, f"{server}/console/admin/tickets/new")) == []
    assert unexpected(agent_problems) == []


def test_an_admin_creates_pauses_and_reads_webhooks(
    app: Flask, server: str, pages: Callable[[], tuple[Page, Problems]]
) -> None:
    Factory(app).user("admin", role="admin")
    page, problems = pages()
    sign_in(page, server, "admin")
    section(page, "Webhooks")
    page.get_by_label("URL").fill("https://93.184.216.34/hooks/sales")
    for kind in ("ticket.created", "ticket.updated", "ticket.assigned", "ticket.released"):
        page.get_by_label(kind).uncheck()
    page.get_by_role("button", name="Create the webhook").click()
    expect(page.locator("[data-secret]")).to_be_visible()
    page.get_by_role("button", name="Pause").click()
    assert message(page).startswith("Webhook paused")
    page.get_by_label("URL").fill("https://93.184.216.34/hooks/all")
    page.get_by_role("button", name="Create the webhook").click()
    expect(page.locator("[data-secret]")).to_be_visible()
    expect(page.locator("tbody tr")).to_have_count(2)
    save_screenshot(page, "docs/console/webhooks.png", full_page=True)
    assert unexpected(problems) == []


def test_a_bad_sign_in_and_the_csrf_check(
    app: Flask, server: str, pages: Callable[[], tuple[Page, Problems]]
) -> None:
    factory = Factory(app)
    factory.user("alice", capacity=2)
    factory.tickets(2)
    page, problems = pages()

    sign_in(page, server, "alice", "not-the-password")
    assert message(page) == "Wrong username or password."
    expect(page.get_by_label("Username")).to_have_value("alice")
    expect(page.get_by_label("Password")).to_have_value("")
    save_screenshot(page, "docs/console/login-error.png")
    assert unexpected(problems, (401, f"{server}/console/login")) == []
    problems.seen.clear()

    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="My tickets")).to_be_visible()

    # A forged request (the cookies, without the page's CSRF value) changes nothing.
    forged = page.request.post(f"{server}/console/agent/assign", form={"csrf_token": "forged"})
    assert forged.status == 403
    assert "Nothing was changed" in forged.text()
    # Nor does a stale form whose value was tampered with.
    page.evaluate(
        "document.querySelectorAll('input[name=csrf_token]')"
        ".forEach(function (i) { i.value = 'tampered'; })"
    )
    page.get_by_role("button", name="Get tickets").click()
    expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    assert "could not be checked" in message(page)
    save_screenshot(page, "docs/console/csrf-refused.png")
    page.goto(f"{server}/console/agent/")
    expect(page.locator("#held-summary")).to_have_text("You hold 0 of 2 tickets.")
    assert unexpected(problems, (403, f"{server}/console/agent/assign")) == []

    # Sign-out ends the session: the page leads to the sign-in again.
    page.get_by_role("button", name="Sign out").click()
    assert message(page) == "You are signed out."
    save_screenshot(page, "docs/console/login.png")
    page.goto(f"{server}/console/agent/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


def test_the_console_in_embedded_mode(
    tmp_path: Path, pages: Callable[[], tuple[Page, Problems]]
) -> None:
    """No DATABASE_URL, no REDIS_URL: SQLite and the in-process Redis, the demo users."""
    env = embedded_env(tmp_path)
    flask_cli(env, "db", "upgrade")
    demo = credentials(flask_cli(env, "demo-users").stdout)
    with live_server(env, workers=1) as url:
        admin, problems = pages()
        sign_in(admin, url, *demo["admin"])
        expect(admin.get_by_role("heading", name="Dashboard")).to_be_visible()
        for title in ("Printer jammed", "VPN down"):
            section(admin, "Tickets")
            admin.get_by_role("link", name="New ticket").click()
            admin.get_by_label("Title").fill(title)
            admin.get_by_role("button", name="Create the ticket").click()
            assert "created in “general”" in message(admin)

        agent, agent_problems = pages()
        sign_in(agent, url, *demo["agent"])
        agent.get_by_role("button", name="Get tickets").click()
        assert message(agent).startswith("You got 2 new tickets")
        held = agent.locator("#held tbody tr")
        agent.get_by_role("button", name=re.compile(r"^Sell #\d+ VPN down$")).click()
        assert message(agent).startswith("Sold #")
        expect(held).to_have_count(1)

        # The admin deletes the other one; the agent's page follows.
        section(admin, "Tickets")
        admin.get_by_role("link", name="Printer jammed").click()
        admin.get_by_role("link", name="Delete…").click()
        admin.get_by_role("button", name="Delete the ticket").click()
        assert message(admin).endswith("deleted.")
        expect(agent.locator("#held")).to_contain_text("You hold no tickets", timeout=LIVE_MS)
        section(admin, "Dashboard")
        expect(admin.locator("#feed-live")).to_contain_text("deleted")
        expect(admin.locator("#chart-summary")).to_contain_text("2 assigned, 1 sold")
        assert unexpected(problems) == [] and unexpected(agent_problems) == []
