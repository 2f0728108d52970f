"""The console (service/console) with Flask's test client: sign-in in cookies with CSRF
protection, the agent's and the admin's pages, failures told in words with the input
kept, and that the API is no weaker for the cookies. The same pages in a real browser
are tests/test_console_ui.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html import unescape
from typing import Any
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from conftest import PASSWORD, Factory, fresh_app
from flask import Flask
from flask.testing import FlaskClient
from helpers import assert_error

from service import errors
from service.domain import activity, webhooks
from service.domain.webhook_delivery import fan_out
from service.extensions import db
from service.models import Ticket, User, Webhook, WebhookDelivery

CONSOLE = "/console/"
PUBLIC_HOOK = "https://93.184.216.34/hooks/tickets"  # an IP literal: no DNS lookup


@pytest.fixture
def app(_schema: None) -> Iterator[Flask]:
    # Plain HTTP in the tests: the cookies are not marked Secure.
    with fresh_app(CONSOLE_COOKIE_SECURE="false") as app:
        yield app


def text(response: Any) -> str:
    """The page's visible words, roughly: tags dropped, entities read, spaces squeezed."""
    html = response.get_data(as_text=True)
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html)))


def csrf_of(response: Any) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', response.get_data(as_text=True))
    assert found, "no CSRF field on the page"
    return found.group(1)


def sign_in(client: FlaskClient, username: str, password: str = PASSWORD) -> Any:
    return client.post(
        "/console/login", data={"username": username, "password": password}, follow_redirects=True
    )


@pytest.fixture
def agent(factory: Factory) -> User:
    return factory.user("alice", capacity=3)


@pytest.fixture
def agent_client(app: Flask, agent: User) -> FlaskClient:
    client = app.test_client()
    page = sign_in(client, "alice")
    assert page.status_code == 200 and "My tickets" in text(page)
    return client


@pytest.fixture
def admin_client(app: Flask, admin: User) -> FlaskClient:
    client = app.test_client()
    page = sign_in(client, "admin")
    assert page.status_code == 200 and "Dashboard" in text(page)
    return client


# -- signing in --------------------------------------------------------------------
def test_the_console_leads_to_the_sign_in_and_the_home_page_leads_to_the_console(
    client: FlaskClient,
) -> None:
    assert 'href="/console/"' in client.get("/").get_data(as_text=True)
    response = client.get(CONSOLE)
    assert response.status_code == 303
    assert response.headers["Location"].startswith("/console/login")
    page = client.get("/console/agent/", follow_redirects=True)
    assert "Sign in" in text(page)
    # Where the visitor wanted to go is kept, and only a console path is.
    assert 'name="next" value="/console/agent/"' in page.get_data(as_text=True)
    evil = client.get("/console/login?next=https://evil.example/console/")
    assert "evil.example" not in evil.get_data(as_text=True)


def test_sign_in_sets_httponly_lax_cookies_and_no_token_in_the_page(
    app: Flask, agent: User
) -> None:
    client = app.test_client()
    response = client.post("/console/login", data={"username": "alice", "password": PASSWORD})
    assert response.status_code == 303 and response.headers["Location"] == "/console/agent/"
    cookies = {c.split("=", 1)[0]: c for c in response.headers.getlist("Set-Cookie")}
    for name in ("access_token_cookie", "refresh_token_cookie"):
        assert "HttpOnly" in cookies[name] and "SameSite=Lax" in cookies[name]
        assert "Secure" not in cookies[name]  # CONSOLE_COOKIE_SECURE=false in these tests
    assert "Path=/console/" in cookies["refresh_token_cookie"]
    # The CSRF value is readable by a page's script; the tokens are not.
    assert "HttpOnly" not in cookies["csrf_access_token"]
    page = client.get("/console/agent/")
    html = page.get_data(as_text=True)
    token = client.get_cookie("access_token_cookie")
    assert token is not None and token.value not in html
    assert "eyJ" not in html  # no JWT anywhere in the page
    assert page.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert page.headers["Cache-Control"] == "no-store"


def test_secure_cookies_by_default_outside_embedded_mode(_schema: None, factory: Any) -> None:
    with fresh_app() as app:
        assert app.config["JWT_COOKIE_SECURE"] is True
        assert app.config["SESSION_COOKIE_SECURE"] is True


@pytest.mark.parametrize(
    ("username", "password", "status", "message"),
    [
        ("alice", "wrong-password", 401, "Wrong username or password."),
        ("nobody", PASSWORD, 401, "Wrong username or password."),
        ("", "", 400, "Enter your username and password."),
    ],
)
def test_a_bad_sign_in_is_a_message_and_keeps_the_username(
    app: Flask, agent: User, username: str, password: str, status: int, message: str
) -> None:
    client = app.test_client()
    response = client.post("/console/login", data={"username": username, "password": password})
    assert response.status_code == status
    assert response.mimetype == "text/html"
    assert message in text(response)
    assert f'value="{username}"' in response.get_data(as_text=True)
    assert password not in response.get_data(as_text=True) or not password
    assert client.get_cookie("access_token_cookie") is None


def test_the_login_limit_shows_as_a_message(_schema: None, factory: Any) -> None:
    with fresh_app(CONSOLE_COOKIE_SECURE="false", LOGIN_RATE_LIMIT="2 per minute") as app:
        Factory(app).user("bob")
        client = app.test_client()
        for _ in range(2):
            bad = client.post("/console/login", data={"username": "bob", "password": "nope-nope"})
            assert bad.status_code == 401
        limited = client.post("/console/login", data={"username": "bob", "password": PASSWORD})
        assert limited.status_code == 429
        assert re.search(r"Too many sign-in attempts .* Wait \d+ seconds", text(limited))
        assert "{" not in text(limited)  # a message, not JSON
        # The API's login counts the same attempts.
        api = client.post("/api/auth/token/", json={"username": "bob", "password": PASSWORD})
        assert_error(api, 429, "rate_limited")


def test_a_cross_site_sign_in_is_refused(app: Flask, agent: User) -> None:
    client = app.test_client()
    response = client.post(
        "/console/login",
        data={"username": "alice", "password": PASSWORD},
        headers={"Origin": "https://evil.example"},
    )
    assert response.status_code == 403
    assert client.get_cookie("access_token_cookie") is None


def test_sign_out_ends_the_session_as_the_api_logout_does(
    app: Flask, agent_client: FlaskClient
) -> None:
    stolen = agent_client.get_cookie("access_token_cookie")
    assert stolen is not None
    page = agent_client.get("/console/agent/")
    out = agent_client.post(
        "/console/logout", data={"csrf_token": csrf_of(page)}, follow_redirects=True
    )
    assert "You are signed out." in text(out)
    assert agent_client.get_cookie("access_token_cookie") is None
    # The token that was in the cookie no longer opens the API either.
    response = app.test_client().get(
        "/api/agent/tickets/", headers={"Authorization": f"Bearer {stolen.value}"}
    )
    assert_error(response, 401, "token_revoked")


def test_an_api_logout_ends_the_console_session_too(app: Flask, agent_client: FlaskClient) -> None:
    token = agent_client.get_cookie("access_token_cookie")
    assert token is not None
    bearer = {"Authorization": f"Bearer {token.value}"}
    assert app.test_client().post("/api/auth/logout/", headers=bearer).status_code == 204
    page = agent_client.get("/console/agent/", follow_redirects=True)
    assert "Sign in" in text(page) and "Your session has ended" in text(page)


def test_an_expired_access_token_is_renewed_with_the_refresh_cookie(
    _schema: None, factory: Any
) -> None:
    with fresh_app(CONSOLE_COOKIE_SECURE="false") as app:
        Factory(app).user("carol")
        client = app.test_client()
        sign_in(client, "carol")
        before = client.get("/console/agent/")
        # An access token that has expired, in the same session.
        from flask_jwt_extended import decode_token

        with app.app_context():
            claims = decode_token(client.get_cookie("access_token_cookie").value)  # type: ignore[union-attr]
            from datetime import timedelta

            from flask_jwt_extended import create_access_token

            expired = create_access_token(
                identity=claims["sub"],
                additional_claims={k: claims[k] for k in ("role", "ver", "sid", "csrf")},
                expires_delta=timedelta(seconds=-10),
            )
        client.set_cookie("access_token_cookie", expired, path="/")
        page = client.get("/console/agent/")
        assert page.status_code == 200 and "My tickets" in text(page)
        renewed = client.get_cookie("access_token_cookie")
        assert renewed is not None and renewed.value != expired
        # The form rendered before still submits: the session's CSRF value stays.
        client.set_cookie("access_token_cookie", expired, path="/")
        sell = client.post(
            "/console/agent/status", data={"csrf_token": csrf_of(before), "status": "away"}
        )
        # Back to the agent's page, not to the sign-in (which is a 303 too).
        assert sell.status_code == 303
        assert urlsplit(sell.headers["Location"]).path == "/console/agent/"


# -- the CSRF check ----------------------------------------------------------------
@pytest.mark.parametrize("token", [None, "", "not-the-token"])
def test_a_post_without_the_sessions_csrf_value_changes_nothing(
    app: Flask, agent: User, agent_client: FlaskClient, factory: Factory, token: str | None
) -> None:
    factory.tickets(2)
    data = {} if token is None else {"csrf_token": token}
    response = agent_client.post("/console/agent/assign", data=data)
    assert response.status_code == 403
    assert "Nothing was changed" in text(response)
    with app.app_context():
        assert db.session.query(Ticket).filter_by(status="assigned").count() == 0
    out = agent_client.post("/console/logout", data=data)
    assert out.status_code == 403
    assert agent_client.get("/console/agent/").status_code == 200  # still signed in


def test_the_csrf_value_may_come_as_a_header(agent_client: FlaskClient) -> None:
    page = agent_client.get("/console/agent/")
    response = agent_client.post(
        "/console/agent/status", data={"status": "away"}, headers={"X-CSRF-TOKEN": csrf_of(page)}
    )
    assert response.status_code == 303


# -- the API is no weaker ---------------------------------------------------------------
def test_the_api_does_not_take_the_cookie_for_its_routes(
    app: Flask, agent_client: FlaskClient, factory: Factory
) -> None:
    factory.tickets(1)
    page = agent_client.get("/console/agent/")
    csrf = {"X-CSRF-TOKEN": csrf_of(page)}
    for method, path in [
        ("GET", "/api/agent/tickets/"),
        ("GET", "/api/agent/tickets/assign/"),
        ("POST", "/api/agent/tickets/assign/"),
        ("PUT", "/api/agent/status/"),
        ("POST", "/api/auth/logout/"),
    ]:
        response = agent_client.open(path, method=method, headers=csrf, json={"status": "away"})
        assert_error(response, 401, "missing_token")
    with app.app_context():
        assert db.session.query(Ticket).filter_by(status="assigned").count() == 0


def test_an_event_stream_request_may_use_the_cookie(agent_client: FlaskClient) -> None:
    """An EventSource sends the cookie and Accept: text/event-stream, and may not send a
    header: the token check reads the cookie for such a GET (the streams themselves
    come with their routes)."""
    from service.auth import authenticate

    app = agent_client.application
    cookie = agent_client.get_cookie("access_token_cookie")
    assert cookie is not None
    headers = {"Accept": "text/event-stream", "Cookie": f"access_token_cookie={cookie.value}"}
    with app.test_request_context("/api/agent/events/", headers=headers):
        assert authenticate(cookie=True).role == "agent"
    with (
        app.test_request_context("/api/agent/events/", method="POST", headers=headers),
        pytest.raises(errors.Unauthorized, match="Authorization"),
    ):
        authenticate(cookie=True)
    # Only the stream routes read it: a fetch, even a GET asking for a stream, does not.
    fetch = agent_client.get("/api/agent/tickets/assign/", headers=headers)
    assert_error(fetch, 401, "missing_token")


# -- the agent's page ------------------------------------------------------------------
def test_the_agent_gets_sells_and_sets_its_status(
    app: Flask, agent: User, agent_client: FlaskClient, factory: Factory
) -> None:
    ids = factory.tickets(5, title="Printer")
    page = agent_client.get("/console/agent/")
    assert "You hold 0 of 3 tickets" in text(page)
    csrf = csrf_of(page)
    got = agent_client.post(
        "/console/agent/assign", data={"csrf_token": csrf}, follow_redirects=True
    )
    words = text(got)
    assert "You got 3 new tickets" in words and f"#{ids[0]}" in words
    assert "You hold 3 of 3 tickets, oldest first" in words
    # Oldest first, with title, queue, priority and age.
    rows = re.findall(r'<tr id="ticket-(\d+)"', got.get_data(as_text=True))
    assert [int(r) for r in rows] == ids[:3]
    again = agent_client.post(
        "/console/agent/assign", data={"csrf_token": csrf}, follow_redirects=True
    )
    assert "you already hold your 3" in text(again)

    sold = agent_client.post(
        f"/console/agent/sell/{ids[1]}", data={"csrf_token": csrf}, follow_redirects=True
    )
    assert f"Sold #{ids[1]} “Printer 1”" in text(sold)
    twice = agent_client.post(
        f"/console/agent/sell/{ids[1]}", data={"csrf_token": csrf}, follow_redirects=True
    )
    assert f"Ticket #{ids[1]} was not sold" in text(twice) and "already sold" in text(twice)
    gone = agent_client.post(
        f"/console/agent/sell/{ids[4]}", data={"csrf_token": csrf}, follow_redirects=True
    )
    assert f"You no longer hold ticket #{ids[4]}" in text(gone)

    away = agent_client.post(
        "/console/agent/status", data={"csrf_token": csrf, "status": "away"}, follow_redirects=True
    )
    assert "You are away" in text(away)
    assert (
        'id="status-away" name="status" value="away" class="segment away" aria-pressed="true"'
        in (away.get_data(as_text=True))
    )
    idle = agent_client.post(
        "/console/agent/assign", data={"csrf_token": csrf}, follow_redirects=True
    )
    assert "No new tickets: you are away" in text(idle)
    bad = agent_client.post(
        "/console/agent/status",
        data={"csrf_token": csrf, "status": "asleep"},
        follow_redirects=True,
    )
    assert "Your status did not change" in text(bad)
    with app.app_context():
        assert db.session.get(User, agent.id).status == "away"  # type: ignore[union-attr]


def test_an_admin_page_is_not_for_an_agent(agent_client: FlaskClient) -> None:
    response = agent_client.get("/console/admin/")
    assert response.status_code == 403 and response.mimetype == "text/html"
    assert "This page is for admins." in text(response)
    assert agent_client.get(CONSOLE).headers["Location"] == "/console/agent/"


# -- the admin's pages ---------------------------------------------------------------------
def test_every_admin_page_renders(
    admin_client: FlaskClient, app: Flask, agent: User, factory: Factory
) -> None:
    (ticket,) = factory.tickets(1)
    with app.app_context():
        webhook = webhooks.create_webhook(db.session, url=PUBLIC_HOOK)["id"]
    for path in [
        "/console/admin/",
        "/console/admin/?sort=held&dir=desc&status=online&queue=general&name=al",
        "/console/admin/tickets/",
        "/console/admin/tickets/?status=unassigned&queue=general&priority=normal",
        f"/console/admin/tickets/?agent_id={agent.id}",
        "/console/admin/tickets/new",
        f"/console/admin/tickets/{ticket}/",
        f"/console/admin/tickets/{ticket}/delete",
        "/console/admin/queues/",
        "/console/admin/queues/general/",
        "/console/admin/users/",
        "/console/admin/users/new",
        f"/console/admin/users/{agent.id}/",
        f"/console/admin/users/{agent.id}/deactivate",
        "/console/admin/webhooks/",
        f"/console/admin/webhooks/{webhook}/",
        f"/console/admin/webhooks/{webhook}/delete",
    ]:
        response = admin_client.get(path)
        assert response.status_code == 200, (path, text(response)[:400])
        assert response.mimetype == "text/html"
        assert "inline" not in response.headers["Content-Security-Policy"]


def test_bad_filters_are_told_not_a_500(admin_client: FlaskClient) -> None:
    response = admin_client.get("/console/admin/tickets/?status=lost&priority=meh")
    assert response.status_code == 400
    assert "Must be one of" in text(response)
    dashboard = admin_client.get("/console/admin/?status=asleep")
    assert dashboard.status_code == 200 and "Some fields need a change" in text(dashboard)


def test_a_ticket_form_keeps_its_input_after_a_failure(
    admin_client: FlaskClient, factory: Factory
) -> None:
    page = admin_client.get("/console/admin/tickets/new")
    data = {
        "csrf_token": csrf_of(page),
        "title": "   ",
        "description": "The description I typed",
        "queue": "general",
        "priority": "urgent",
    }
    response = admin_client.post("/console/admin/tickets/new", data=data)
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert "Must not be blank." in text(response)
    assert "The description I typed" in html
    assert '<option value="urgent" selected>' in html
    assert 'aria-invalid="true"' in html
    data["title"] = "Printer jammed"
    created = admin_client.post("/console/admin/tickets/new", data=data, follow_redirects=True)
    assert "Printer jammed" in text(created) and "created in “general”" in text(created)


def test_admin_ticket_actions(
    app: Flask, admin_client: FlaskClient, factory: Factory, agent: User
) -> None:
    other = factory.user("bob", capacity=1)
    ids = factory.tickets(3)
    csrf = csrf_of(admin_client.get(f"/console/admin/tickets/{ids[0]}/"))
    url = f"/console/admin/tickets/{ids[0]}"

    given = admin_client.post(
        f"{url}/assign", data={"csrf_token": csrf, "agent_id": str(agent.id)}, follow_redirects=True
    )
    assert "assigned to alice" in text(given)
    not_held = admin_client.post(
        f"/console/admin/tickets/{ids[1]}/release", data={"csrf_token": csrf}
    )
    assert not_held.status_code == 303
    told = admin_client.get(not_held.headers["Location"])
    assert "Only a ticket an agent holds can be released" in text(told)

    # bob is full: the agent picked stays picked, and the reason is told.
    admin_client.post(
        f"/console/admin/tickets/{ids[1]}/assign",
        data={"csrf_token": csrf, "agent_id": str(other.id)},
    )
    full = admin_client.post(f"{url}/assign", data={"csrf_token": csrf, "agent_id": str(other.id)})
    assert full.status_code == 409
    assert "That agent holds as many tickets as its capacity allows" in text(full)
    assert f'<option value="{other.id}" selected>' in full.get_data(as_text=True)

    released = admin_client.post(f"{url}/release", data={"csrf_token": csrf}, follow_redirects=True)
    assert "released: it waits in “general” again" in text(released)
    edited = admin_client.post(
        url + "/",
        data={"csrf_token": csrf, "title": "New title", "queue": "general", "priority": "high"},
        follow_redirects=True,
    )
    assert "saved" in text(edited) and "New title" in text(edited)
    deleted = admin_client.post(f"{url}/delete", data={"csrf_token": csrf}, follow_redirects=True)
    assert f"Ticket #{ids[0]} deleted." in text(deleted)
    history = admin_client.get(url + "/")
    assert history.status_code == 200
    assert "(deleted)" in text(history)
    kinds = re.findall(r'data-label="What">(\w+)<', history.get_data(as_text=True))
    assert kinds == ["created", "assigned", "released", "updated", "deleted"]
    assert admin_client.get("/console/admin/tickets/999999/").status_code == 404


def test_queues_create_describe_delete(admin_client: FlaskClient, factory: Factory) -> None:
    csrf = csrf_of(admin_client.get("/console/admin/queues/"))
    bad = admin_client.post(
        "/console/admin/queues/", data={"csrf_token": csrf, "name": "Bad Name", "description": "d"}
    )
    assert bad.status_code == 400 and 'value="Bad Name"' in bad.get_data(as_text=True)
    made = admin_client.post(
        "/console/admin/queues/",
        data={"csrf_token": csrf, "name": "billing", "description": "Refunds"},
        follow_redirects=True,
    )
    assert "Queue “billing” created." in text(made)
    dup = admin_client.post(
        "/console/admin/queues/", data={"csrf_token": csrf, "name": "billing", "description": ""}
    )
    assert dup.status_code == 409 and "A queue with that name already exists." in text(dup)
    described = admin_client.post(
        "/console/admin/queues/billing/",
        data={"csrf_token": csrf, "description": "Invoices"},
        follow_redirects=True,
    )
    assert "Invoices" in described.get_data(as_text=True)
    busy = admin_client.post(
        "/console/admin/queues/general/delete", data={"csrf_token": csrf}, follow_redirects=True
    )
    assert "Only an empty queue can be deleted" in text(busy)
    gone = admin_client.post(
        "/console/admin/queues/billing/delete", data={"csrf_token": csrf}, follow_redirects=True
    )
    assert "Queue “billing” deleted." in text(gone)


def test_webhooks_create_list_pause_resume_delete(admin_client: FlaskClient, app: Flask) -> None:
    page = admin_client.get("/console/admin/webhooks/")
    assert "No webhooks yet" in text(page)
    csrf = csrf_of(page)
    refused = admin_client.post(
        "/console/admin/webhooks/",
        data={
            "csrf_token": csrf,
            "url": "http://127.0.0.1:9/hook",
            "events": ["ticket.sold"],
            "secret": "a secret of mine, long enough",
        },
    )
    html = refused.get_data(as_text=True)
    assert refused.status_code == 400 and "127.0.0.1" in text(refused)
    assert "loopback" in text(refused)
    assert 'value="http://127.0.0.1:9/hook"' in html
    assert re.search(r'value="ticket.sold" checked', html)
    assert not re.search(r'value="ticket.created" checked', html)
    assert "a secret of mine" not in html  # never typed back
    short = admin_client.post(
        "/console/admin/webhooks/",
        data={"csrf_token": csrf, "url": PUBLIC_HOOK, "secret": "short"},
    )
    assert short.status_code == 400 and "Some fields need a change" in text(short)

    made = admin_client.post(
        "/console/admin/webhooks/",
        data={"csrf_token": csrf, "url": PUBLIC_HOOK, "events": ["ticket.created", "ticket.sold"]},
    )
    assert made.status_code == 201, text(made)[:400]
    secret = re.search(r"data-secret>([^<]+)<", made.get_data(as_text=True))
    assert secret and len(secret.group(1)) >= 40
    assert "shown here only" in text(made)
    with app.app_context():
        webhook = db.session.scalars(sa.select(Webhook)).one()
        assert webhook.secret == secret.group(1)
        assert webhook.events == ["ticket.created", "ticket.sold"]
        webhook_id = webhook.id
        db.session.rollback()

    listed = admin_client.get("/console/admin/webhooks/")
    assert PUBLIC_HOOK in text(listed) and "ticket.created, ticket.sold" in text(listed)
    assert "active" in text(listed) and "none pending" in text(listed)
    assert secret.group(1) not in listed.get_data(as_text=True)  # shown once only

    paused = admin_client.post(
        f"/console/admin/webhooks/{webhook_id}/active",
        data={"csrf_token": csrf, "active": "false", "back": "list"},
        follow_redirects=True,
    )
    assert "Webhook paused" in text(paused) and "Resume" in text(paused)
    resumed = admin_client.post(
        f"/console/admin/webhooks/{webhook_id}/active",
        data={"csrf_token": csrf, "active": "true"},
        follow_redirects=True,
    )
    assert "Webhook resumed" in text(resumed) and "Pause" in text(resumed)
    with app.app_context():
        assert db.session.get(Webhook, webhook_id).active is True
        db.session.rollback()

    confirm = admin_client.get(f"/console/admin/webhooks/{webhook_id}/delete")
    assert confirm.status_code == 200 and f"Delete the webhook to {PUBLIC_HOOK}?" in text(confirm)
    assert f'action="/console/admin/webhooks/{webhook_id}/delete"' in confirm.get_data(as_text=True)
    without_csrf = admin_client.post(f"/console/admin/webhooks/{webhook_id}/delete")
    assert without_csrf.status_code == 403
    gone = admin_client.post(
        f"/console/admin/webhooks/{webhook_id}/delete",
        data={"csrf_token": csrf},
        follow_redirects=True,
    )
    assert "Webhook deleted." in text(gone) and "No webhooks yet" in text(gone)
    assert admin_client.get(f"/console/admin/webhooks/{webhook_id}/").status_code == 404


def test_a_webhooks_deliveries_page_shows_its_attempts(
    admin_client: FlaskClient, app: Flask, factory: Factory
) -> None:
    csrf = csrf_of(admin_client.get("/console/admin/webhooks/"))
    page = admin_client.get("/console/admin/webhooks/")
    offered = re.findall(r'name="events" value="([^"]+)" checked', page.get_data(as_text=True))
    assert "ticket.created" in offered  # every type is checked on a new form
    none = admin_client.post(
        "/console/admin/webhooks/", data={"csrf_token": csrf, "url": PUBLIC_HOOK}
    )
    assert none.status_code == 400 and "Choose at least one." in text(none)
    made = admin_client.post(
        "/console/admin/webhooks/",
        data={"csrf_token": csrf, "url": PUBLIC_HOOK, "events": offered},
    )
    assert made.status_code == 201
    listed = admin_client.get("/console/admin/webhooks/")
    assert re.search(r'data-label="Events">all<', listed.get_data(as_text=True))
    factory.tickets(2)
    with app.app_context():
        assert fan_out(db.engine).deliveries == 2
        webhook_id = db.session.scalars(sa.select(Webhook.id)).one()
        first, second = db.session.scalars(
            sa.select(WebhookDelivery).order_by(WebhookDelivery.event_id)
        )
        first.attempts, first.last_status_code = 2, 503
        first.last_error = "answered 503: upstream unavailable"
        second.status, second.attempts, second.last_status_code = "delivered", 1, 204
        second.delivered_at, second.next_attempt_at = first.created_at, None
        db.session.commit()
        first_id, second_id = first.event_id, second.event_id

    listed = admin_client.get("/console/admin/webhooks/")
    assert "none pending" not in text(listed)  # the oldest pending event's age
    page = admin_client.get(f"/console/admin/webhooks/{webhook_id}/")
    assert page.status_code == 200
    body = page.get_data(as_text=True).split("<tbody>")[1]
    rows = re.findall(r"<tr>(.*?)</tr>", body, flags=re.S)
    cells = [re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", row))).strip() for row in rows]
    assert cells[0].startswith(f"{second_id} ticket.created 1 delivered 204")
    assert cells[1].startswith(f"{first_id} ticket.created 2 pending 503")
    assert "answered 503: upstream unavailable" in cells[1] and "UTC" in cells[1]
    bad = admin_client.get(f"/console/admin/webhooks/{webhook_id}/?before=nonsense")
    assert bad.status_code == 200 and "the latest are shown" in text(bad)
    assert str(first_id) in text(bad)
    older = admin_client.get(f"/console/admin/webhooks/{webhook_id}/?before={second_id}")
    assert "answered 503" in text(older) and "delivered" not in text(older).split("Deliveries")[1]


def test_users_create_change_deactivate(
    app: Flask, admin_client: FlaskClient, admin: User, factory: Factory
) -> None:
    csrf = csrf_of(admin_client.get("/console/admin/users/new"))
    form = {
        "csrf_token": csrf,
        "username": "dave",
        "password": "short",
        "role": "agent",
        "capacity": "4",
        "queues": ["general"],
    }
    short = admin_client.post("/console/admin/users/new", data=form)
    assert short.status_code == 400
    assert "Length must be between 8 and 256." in text(short)
    assert 'value="dave"' in short.get_data(as_text=True)
    assert 'value="4"' in short.get_data(as_text=True)
    assert "short" not in re.findall(r'type="password"[^>]*', short.get_data(as_text=True))[0]
    form["password"] = "long-enough-password"
    made = admin_client.post("/console/admin/users/new", data=form, follow_redirects=True)
    assert "Agent “dave” created." in text(made)
    with app.app_context():
        dave = db.session.query(User).filter_by(username="dave").one()
    page = f"/console/admin/users/{dave.id}"
    work = admin_client.post(
        f"{page}/work", data={"csrf_token": csrf, "capacity": "0", "queues": ["general"]}
    )
    assert work.status_code == 400 and "Must be greater than or equal to 1" in text(work)
    saved = admin_client.post(
        f"{page}/work", data={"csrf_token": csrf, "capacity": "7"}, follow_redirects=True
    )
    assert "Capacity and queues saved." in text(saved)
    changed = admin_client.post(
        f"{page}/password",
        data={"csrf_token": csrf, "password": "another-password"},
        follow_redirects=True,
    )
    assert "Password changed" in text(changed)
    off = admin_client.post(
        f"{page}/active", data={"csrf_token": csrf, "is_active": "false"}, follow_redirects=True
    )
    assert "Account deactivated" in text(off)
    myself = admin_client.post(
        f"/console/admin/users/{admin.id}/active", data={"csrf_token": csrf, "is_active": "false"}
    )
    assert myself.status_code == 409 and "You cannot deactivate your own account." in text(myself)
    with app.app_context():
        dave = db.session.get(User, dave.id)
        assert dave is not None and not dave.is_active and dave.capacity == 7


def test_the_dashboard_shows_queues_workload_feed_and_chart(
    app: Flask, admin_client: FlaskClient, factory: Factory, agent: User
) -> None:
    ids = factory.tickets(4, title="Lamp")
    agent_client = app.test_client()
    sign_in(agent_client, "alice")
    csrf = csrf_of(agent_client.get("/console/agent/"))
    agent_client.post("/console/agent/assign", data={"csrf_token": csrf})
    agent_client.post(f"/console/agent/sell/{ids[0]}", data={"csrf_token": csrf})
    page = admin_client.get("/console/admin/")
    words = text(page)
    assert "3 assigned, 1 sold" in words
    assert re.search(r"alice online 2 / 3 1", words), words
    assert f"#{ids[0]} “Lamp 0” by alice" in words
    assert "general 1" in words  # one waits
    with app.app_context():
        minutes = activity.per_minute(db.session)
    assert len(minutes) == 60 and sum(m.assigned for m in minutes) == 3


def test_per_minute_finds_the_window_by_id(app: Flask, factory: Factory) -> None:
    from datetime import timedelta

    from service.models import TicketEvent, utcnow

    now = utcnow()
    with app.app_context():
        for minutes_ago, kind in [(120, "assigned"), (61, "sold"), (59, "assigned"), (0, "sold")]:
            db.session.add(
                TicketEvent(ticket_id=1, kind=kind, at=now - timedelta(minutes=minutes_ago))
            )
        db.session.commit()
        counts = activity.per_minute(db.session, now=now)
        assert sum(m.assigned for m in counts) == 1 and sum(m.sold for m in counts) == 1
        assert counts[-1].sold == 1
        assert activity.first_event_since(db.session, now + timedelta(minutes=1)) is None


def test_live_pages_follow_the_event_stream(_schema: None, factory: Any) -> None:
    """The agent's page names its event stream and the event types for the script,
    and falls back to a slow refresh should the stream fail."""
    with fresh_app(CONSOLE_COOKIE_SECURE="false") as app:
        Factory(app).user("erin")
        client = app.test_client()
        sign_in(client, "erin")
        html = client.get("/console/agent/").get_data(as_text=True)
        assert 'data-live-stream="/api/agent/events/"' in html
        assert 'data-live-events="ticket.created ticket.updated ticket.assigned' in html
        assert 'data-live-poll="30"' in html


def test_postgresql_or_redis_unreachable_is_told_and_the_form_keeps_its_input(
    admin_client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis.exceptions
    from sqlalchemy.exc import OperationalError

    from service.domain import queues, tickets

    def unreachable(*_: Any, **__: Any) -> Any:
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    page = admin_client.get("/console/admin/tickets/new")
    monkeypatch.setattr(tickets, "create_ticket", unreachable)
    data = {"csrf_token": csrf_of(page), "title": "Keep me", "queue": "general", "priority": "low"}
    response = admin_client.post("/console/admin/tickets/new", data=data)
    assert response.status_code == 503
    assert "cannot reach its database just now; nothing was changed" in text(response)
    assert 'value="Keep me"' in response.get_data(as_text=True)
    assert '<option value="low" selected>' in response.get_data(as_text=True)

    monkeypatch.setattr(queues, "list_queues", unreachable)
    dashboard = admin_client.get("/console/admin/")
    assert dashboard.status_code == 503 and dashboard.mimetype == "text/html"
    assert "Not available just now" in text(dashboard)

    def redis_down(*_: Any, **__: Any) -> Any:
        raise redis.exceptions.ConnectionError("refused")

    monkeypatch.setattr(queues, "list_queues", redis_down)
    down = admin_client.get("/console/admin/")
    assert down.status_code == 503 and "cannot reach Redis just now" in text(down)
