"""Tokens: login, refresh, logout, and the 401/403 rules on every route (I7)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import jwt as pyjwt
import pytest
import sqlalchemy as sa
from conftest import PASSWORD
from flask_jwt_extended import create_access_token, create_refresh_token
from helpers import assert_error

from service.extensions import db
from service.models import RevokedToken, Ticket, TicketEvent, User
from service.state import ticket_queue

# Every route of the contract that needs a token, with a body that would be
# accepted, so the only thing wrong with each request is its token.
# ``{ticket}`` and ``{user}`` are filled with real ids.
ADMIN_ROUTES = [
    ("POST", "/api/admin/users/", {"username": "newbie", "password": PASSWORD, "role": "agent"}),
    ("GET", "/api/admin/users/", None),
    ("GET", "/api/admin/users/{user}/", None),
    ("PATCH", "/api/admin/users/{user}/", {"capacity": 3}),
    ("POST", "/api/admin/tickets/", {"title": "new"}),
    ("GET", "/api/admin/tickets/", None),
    ("GET", "/api/admin/tickets/{ticket}/", None),
    ("PUT", "/api/admin/tickets/{ticket}/", {"title": "t", "description": "d"}),
    ("PATCH", "/api/admin/tickets/{ticket}/", {"title": "t"}),
    ("DELETE", "/api/admin/tickets/{ticket}/", None),
    ("GET", "/api/admin/tickets/{ticket}/events/", None),
    ("GET", "/api/admin/queue/", None),
]
AGENT_ROUTES = [
    ("GET", "/api/agent/tickets/assign/", None),
    ("POST", "/api/agent/tickets/assign/", None),
    ("GET", "/api/agent/tickets/", None),
    ("POST", "/api/agent/tickets/sell/{ticket}/", None),
]
ANY_ROLE_ROUTES = [("POST", "/api/auth/logout/", None)]
ALL_ROUTES = ADMIN_ROUTES + AGENT_ROUTES + ANY_ROLE_ROUTES


def route_id(route: tuple[str, str, Any]) -> str:
    return f"{route[0]} {route[1]}"


def snapshot(app: Any) -> dict[str, Any]:
    """Everything a request could write: row counts, ticket states, Redis keys."""
    with app.app_context():
        client = ticket_queue().client
        return {
            "users": db.session.execute(
                sa.select(User.id, User.is_active, User.capacity, User.password_hash)
            ).all(),
            "tickets": db.session.execute(
                sa.select(Ticket.id, Ticket.title, Ticket.status, Ticket.agent_id).order_by(
                    Ticket.id
                )
            ).all(),
            "events": db.session.scalar(sa.select(sa.func.count()).select_from(TicketEvent)),
            "revoked": db.session.scalar(sa.select(sa.func.count()).select_from(RevokedToken)),
            "redis": {key: client.type(key) for key in client.keys("*")},
            "queue": client.zrange(ticket_queue().queue_key, 0, -1),
        }


@pytest.fixture
def world(factory, admin) -> dict[str, Any]:
    """An admin, an agent holding one ticket and a queued one: ids for the routes."""
    agent = factory.user("agent1")
    held, queued = factory.tickets(2)
    with factory.app.app_context():
        from service.domain.assignment import assign

        assign(db.session, ticket_queue(), agent.id, lease_seconds=30)
    # Capacity 15 and two tickets: the agent holds both; give the queue one more.
    (extra,) = factory.tickets(1)
    return {"admin": admin, "agent": agent, "ticket": held, "queued": extra, "user": agent.id}


def call(client, method: str, path: str, body: Any, world: dict[str, Any], headers=None):
    url = path.format(ticket=world["ticket"], user=world["user"])
    kwargs: dict[str, Any] = {"headers": headers or {}}
    if body is not None:
        kwargs["json"] = body
    return client.open(url, method=method, **kwargs)


def login(client, username: str, password: str = PASSWORD):
    return client.post("/api/auth/token/", json={"username": username, "password": password})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- login -------------------------------------------------------------------
def test_login_returns_access_and_refresh_tokens(client, factory, app):
    agent = factory.user("alice")
    response = login(client, "alice")
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    claims = pyjwt.decode(body["access_token"], app.config["JWT_SECRET_KEY"], algorithms=["HS256"])
    assert claims["sub"] == str(agent.id)
    assert claims["role"] == "agent"
    assert claims["type"] == "access"
    refresh = pyjwt.decode(
        body["refresh_token"], app.config["JWT_SECRET_KEY"], algorithms=["HS256"]
    )
    assert refresh["type"] == "refresh"
    # The token works on the agent's routes.
    listed = client.get("/api/agent/tickets/", headers=bearer(body["access_token"]))
    assert listed.status_code == 200


def test_login_without_trailing_slash(client, factory):
    factory.user("alice")
    response = client.post("/api/auth/token", json={"username": "alice", "password": PASSWORD})
    assert response.status_code == 200
    assert "access_token" in response.get_json()


@pytest.mark.parametrize(
    "username, password",
    [("alice", "wrong-password"), ("nobody", PASSWORD), ("ALICE", PASSWORD)],
)
def test_login_with_bad_credentials_is_401(client, factory, username, password):
    factory.user("alice")
    assert_error(login(client, username, password), 401, "invalid_credentials")


def test_login_of_a_deactivated_user_is_401(client, factory):
    factory.user("alice", active=False)
    assert_error(login(client, "alice"), 401, "invalid_credentials")


@pytest.mark.parametrize(
    "body, field",
    [
        ({"password": PASSWORD}, "username"),
        ({"username": "alice"}, "password"),
        ({"username": 5, "password": PASSWORD}, "username"),
        ({"username": "alice", "password": True}, "password"),
        ({"username": "", "password": PASSWORD}, "username"),
        ({"username": "alice", "password": PASSWORD, "remember": True}, "remember"),
    ],
)
def test_login_validation(client, factory, body, field):
    factory.user("alice")
    error = assert_error(client.post("/api/auth/token/", json=body), 400, "validation_error")
    assert field in error["fields"]


def test_login_with_a_body_over_64_kib_is_413(client, factory):
    factory.user("alice")
    response = client.post(
        "/api/auth/token/", json={"username": "alice", "password": "p" * (65 * 1024)}
    )
    assert_error(response, 413, "payload_too_large")


def test_login_with_malformed_or_non_json_body(client, factory):
    factory.user("alice")
    broken = client.post("/api/auth/token/", data='{"username": ', content_type="application/json")
    assert "body" in assert_error(broken, 400)["fields"]
    not_object = client.post("/api/auth/token/", json=["alice", PASSWORD])
    assert "body" in assert_error(not_object, 400, "validation_error")["fields"]
    plain = client.post("/api/auth/token/", data="alice:" + PASSWORD, content_type="text/plain")
    assert_error(plain, 415, "unsupported_media_type")


# -- refresh -----------------------------------------------------------------
def test_refresh_with_refresh_token_gives_a_working_access_token(client, factory, app):
    factory.user("alice")
    tokens = login(client, "alice").get_json()
    response = client.post("/api/auth/refresh/", headers=bearer(tokens["refresh_token"]))
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"access_token", "expires_in"}
    assert body["expires_in"] == 3600
    assert body["access_token"] != tokens["access_token"]
    claims = pyjwt.decode(body["access_token"], app.config["JWT_SECRET_KEY"], algorithms=["HS256"])
    assert claims["type"] == "access" and claims["role"] == "agent"
    listed = client.get("/api/agent/tickets/", headers=bearer(body["access_token"]))
    assert listed.status_code == 200
    # No trailing slash works as well.
    again = client.post("/api/auth/refresh", headers=bearer(tokens["refresh_token"]))
    assert again.status_code == 200


def test_refresh_with_an_access_token_is_401(client, factory):
    factory.user("alice")
    tokens = login(client, "alice").get_json()
    assert_error(client.post("/api/auth/refresh/", headers=bearer(tokens["access_token"])), 401)


def test_refresh_token_is_refused_on_other_routes(client, factory, admin):
    tokens = login(client, "admin").get_json()
    assert_error(client.get("/api/admin/queue/", headers=bearer(tokens["refresh_token"])), 401)


def test_refresh_of_a_deactivated_user_is_401(client, factory, app):
    alice = factory.user("alice")
    tokens = login(client, "alice").get_json()
    with app.app_context():
        db.session.execute(sa.update(User).where(User.id == alice.id).values(is_active=False))
        db.session.commit()
    assert_error(client.post("/api/auth/refresh/", headers=bearer(tokens["refresh_token"])), 401)


def test_refresh_expired_or_garbage_is_401(client, factory, app):
    alice = factory.user("alice")
    with app.app_context():
        expired = create_refresh_token(
            identity=str(alice.id),
            additional_claims={"role": "agent"},
            expires_delta=timedelta(seconds=-10),
        )
    assert_error(client.post("/api/auth/refresh/", headers=bearer(expired)), 401, "token_expired")
    assert_error(client.post("/api/auth/refresh/", headers=bearer("x.y.z")), 401, "invalid_token")
    assert_error(client.post("/api/auth/refresh/"), 401, "missing_token")


# -- logout ------------------------------------------------------------------
def test_logout_revokes_the_access_token_at_once(client, factory, app):
    factory.user("alice")
    tokens = login(client, "alice").get_json()
    headers = bearer(tokens["access_token"])
    assert client.get("/api/agent/tickets/", headers=headers).status_code == 200
    response = client.post("/api/auth/logout/", headers=headers)
    assert response.status_code == 204
    assert response.get_data() == b""
    assert_error(client.get("/api/agent/tickets/", headers=headers), 401, "token_revoked")
    assert_error(client.post("/api/auth/logout/", headers=headers), 401, "token_revoked")
    # Only the presented token: the refresh token still works until revoked itself.
    refresh = bearer(tokens["refresh_token"])
    assert client.post("/api/auth/refresh/", headers=refresh).status_code == 200
    assert client.post("/api/auth/logout", headers=refresh).status_code == 204
    assert_error(client.post("/api/auth/refresh/", headers=refresh), 401, "token_revoked")
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(RevokedToken)) == 2


def test_revocation_is_read_from_redis_when_redis_is_trusted(client, factory, app):
    """With the epoch key present Redis alone answers: a Redis-only revocation counts."""
    alice = factory.user("alice")
    with app.app_context():
        token = create_access_token(identity=str(alice.id), additional_claims={"role": "agent"})
        jti = pyjwt.decode(token, app.config["JWT_SECRET_KEY"], algorithms=["HS256"])["jti"]
        queue = ticket_queue()
        queue.mark_built("epoch-1")
        assert client.get("/api/agent/tickets/", headers=bearer(token)).status_code == 200
        queue.revoke(jti, 60)
    assert_error(client.get("/api/agent/tickets/", headers=bearer(token)), 401, "token_revoked")


def test_revocation_survives_a_redis_flush(client, factory, app, redis_client):
    factory.user("alice")
    with app.app_context():
        ticket_queue().mark_built("epoch-1")  # Redis is trusted until it loses its data
    tokens = login(client, "alice").get_json()
    headers = bearer(tokens["access_token"])
    assert client.post("/api/auth/logout/", headers=headers).status_code == 204
    assert redis_client.keys("{tq}:revoked:*")
    redis_client.flushdb()
    assert redis_client.get("{tq}:epoch") is None
    # Redis lost the blocklist and the epoch: PostgreSQL's copy answers.
    assert_error(client.get("/api/agent/tickets/", headers=headers), 401, "token_revoked")
    # A token never revoked still works after the flush.
    fresh = login(client, "alice").get_json()["access_token"]
    assert client.get("/api/agent/tickets/", headers=bearer(fresh)).status_code == 200


def test_revocation_survives_a_rebuild_after_a_flush(client, factory, app, redis_client):
    from service.domain.rebuild import rebuild

    factory.user("alice")
    headers = bearer(login(client, "alice").get_json()["access_token"])
    assert client.post("/api/auth/logout/", headers=headers).status_code == 204
    redis_client.flushdb()
    with app.app_context():
        summary = rebuild(db.session, ticket_queue())
    assert summary.revoked == 1
    assert redis_client.get("{tq}:epoch") is not None
    assert_error(client.get("/api/agent/tickets/", headers=headers), 401, "token_revoked")


# -- 401 and 403 on every route ----------------------------------------------
BAD_TOKENS = ["missing", "garbage", "not_bearer", "bad_signature", "expired", "revoked", "inactive"]


def bad_headers(kind: str, client, app, user: User) -> dict[str, str]:
    claims = {"role": user.role}
    with app.app_context():
        if kind == "missing":
            return {}
        if kind == "garbage":
            return bearer("definitely-not-a-jwt")
        if kind == "not_bearer":
            return {"Authorization": create_access_token(str(user.id), additional_claims=claims)}
        if kind == "bad_signature":
            forged = pyjwt.encode(
                {"sub": str(user.id), "role": user.role, "type": "access", "jti": "x"},
                "another-secret-that-is-also-long-enough-0123",
                algorithm="HS256",
            )
            return bearer(forged)
        if kind == "expired":
            token = create_access_token(
                str(user.id), additional_claims=claims, expires_delta=timedelta(seconds=-10)
            )
            return bearer(token)
        token = create_access_token(str(user.id), additional_claims=claims)
    if kind == "revoked":
        assert client.post("/api/auth/logout/", headers=bearer(token)).status_code == 204
        return bearer(token)
    assert kind == "inactive"
    with app.app_context():
        db.session.execute(sa.update(User).where(User.id == user.id).values(is_active=False))
        db.session.commit()
    return bearer(token)


EXPECTED_CODES = {
    "missing": "missing_token",
    "garbage": "invalid_token",
    "not_bearer": "missing_token",
    "bad_signature": "invalid_token",
    "expired": "token_expired",
    "revoked": "token_revoked",
    "inactive": "unauthorized",
}


@pytest.mark.parametrize("kind", BAD_TOKENS)
@pytest.mark.parametrize("route", ALL_ROUTES, ids=route_id)
def test_bad_token_is_401_and_changes_nothing(client, app, world, route, kind):
    method, path, body = route
    owner = world["admin"] if route in ADMIN_ROUTES else world["agent"]
    headers = bad_headers(kind, client, app, owner)
    before = snapshot(app)
    response = call(client, method, path, body, world, headers)
    assert_error(response, 401, EXPECTED_CODES[kind])
    assert snapshot(app) == before


@pytest.mark.parametrize("route", ADMIN_ROUTES, ids=route_id)
def test_agent_token_on_admin_route_is_403(client, app, factory, world, route):
    method, path, body = route
    before = snapshot(app)
    response = call(client, method, path, body, world, factory.headers(world["agent"]))
    assert_error(response, 403, "forbidden")
    assert snapshot(app) == before


@pytest.mark.parametrize("route", AGENT_ROUTES, ids=route_id)
def test_admin_token_on_agent_route_is_403(client, app, factory, world, route):
    method, path, body = route
    before = snapshot(app)
    response = call(client, method, path, body, world, factory.headers(world["admin"]))
    assert_error(response, 403, "forbidden")
    assert snapshot(app) == before


@pytest.mark.parametrize("route", ADMIN_ROUTES + AGENT_ROUTES, ids=route_id)
def test_refresh_token_on_a_route_is_401(client, app, world, route):
    method, path, body = route
    owner = world["admin"] if route in ADMIN_ROUTES else world["agent"]
    with app.app_context():
        token = create_refresh_token(str(owner.id), additional_claims={"role": owner.role})
    before = snapshot(app)
    assert_error(call(client, method, path, body, world, bearer(token)), 401, "invalid_token")
    assert snapshot(app) == before


def test_missing_token_is_401_before_the_body_is_looked_at(client, app, world):
    """An anonymous caller learns nothing about the body rules (no 400/415 before 401)."""
    before = snapshot(app)
    plain = client.post("/api/admin/tickets/", data="hello", content_type="text/plain")
    assert_error(plain, 401, "missing_token")
    invalid = client.post("/api/admin/users/", json={"username": 1})
    assert_error(invalid, 401, "missing_token")
    assert snapshot(app) == before


def test_wrong_role_is_403_before_the_body_is_looked_at(client, app, factory, world):
    before = snapshot(app)
    response = client.post(
        "/api/admin/tickets/", json={"nope": 1}, headers=factory.headers(world["agent"])
    )
    assert_error(response, 403, "forbidden")
    assert snapshot(app) == before


# -- login throttling and open probes ------------------------------------------
def test_too_many_login_attempts_are_429_with_retry_after(client, factory, app):
    factory.user("alice")
    factory.user("bob")
    limit = int(re.match(r"\s*(\d+)", str(app.config["LOGIN_RATE_LIMIT"])).group(1))
    for _ in range(limit):
        assert_error(login(client, "alice", "wrong-password"), 401, "invalid_credentials")
    throttled = login(client, "alice")  # even the right password waits now
    assert_error(throttled, 429, "rate_limited")
    assert int(throttled.headers["Retry-After"]) > 0
    # Another account from the same address is not slowed by alice's guesser.
    assert login(client, "bob").status_code == 200


@pytest.mark.parametrize("path", ["/healthz", "/healthz/", "/readyz", "/readyz/"])
def test_probes_need_no_token(client, path):
    response = client.get(path)
    assert response.status_code == 200
    assert response.is_json
