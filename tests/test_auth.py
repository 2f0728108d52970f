"""Tokens: login, refresh, logout, and the 401/403 rules on every route (I7)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import jwt as pyjwt
import pytest
import sqlalchemy as sa
from conftest import PASSWORD
from flask_jwt_extended import create_access_token
from helpers import EPOCH_KEY, assert_error, caller

from service import passwords
from service.auth import access_token, forget_expired_revocations, new_session, refresh_token
from service.extensions import db
from service.models import GENERAL, RevokedSession, Ticket, TicketEvent, User
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
            "revoked": db.session.scalar(sa.select(sa.func.count()).select_from(RevokedSession)),
            "redis": {key: client.type(key) for key in client.keys("*")},
            "queue": client.zrange(ticket_queue().queue_key(GENERAL), 0, -1),
        }


@pytest.fixture
def world(factory, admin) -> dict[str, Any]:
    """An admin, an agent holding one ticket and a queued one: ids for the routes."""
    agent = factory.user("agent1")
    held, queued = factory.tickets(2)
    with factory.app.app_context():
        from service.domain.assignment import assign

        assign(db.session, ticket_queue(), caller(agent), lease_seconds=30)
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


def claims_of(app, token: str) -> dict[str, Any]:
    return pyjwt.decode(token, app.config["JWT_SECRET_KEY"], algorithms=["HS256"])


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


@pytest.mark.parametrize("username, password", [("alice", "wrong-password"), ("nobody", PASSWORD)])
def test_login_with_bad_credentials_is_401(client, factory, username, password):
    factory.user("alice")
    assert_error(login(client, username, password), 401, "invalid_credentials")


def test_login_finds_the_username_regardless_of_case(client, factory):
    factory.user("Alice")
    assert login(client, "ALICE").status_code == 200
    assert login(client, "alice").status_code == 200


def test_every_failed_login_costs_one_password_check(client, factory, monkeypatch):
    """An unknown or inactive username costs the same argon2 check as a wrong password,
    so the time a failed login takes tells nothing about which usernames exist."""
    factory.user("alice")
    factory.user("gone", active=False)
    passwords.verify_password(None, "warm-up")  # the decoy hash is made once per process
    checks: list[str] = []

    class Counting:
        def __init__(self, hasher: Any) -> None:
            self.hasher = hasher

        def verify(self, password_hash: str, password: str) -> bool:
            checks.append(password)
            return bool(self.hasher.verify(password_hash, password))

    monkeypatch.setattr(passwords, "_hasher", Counting(passwords._hasher))
    for username, password in [
        ("alice", "wrong-password"),
        ("nobody-at-all", "wrong-password"),
        ("gone", PASSWORD),
    ]:
        checks.clear()
        assert_error(login(client, username, password), 401, "invalid_credentials")
        assert checks == [password], username


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


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 1000,
        b"[" * 60_000,
        b'{"username": ' + b"[" * 2000 + b"]" * 2000 + b', "password": "x"}',
        b'{"username": "alice", "password": ' + b"9" * 4400 + b"}",
        b'{"username": 1e999, "password": "x"}',
        b'{"username": "\\ud800", "password": "x"}',
        b'{"username": "alice", "password": "\xff\xfe"}',
    ],
    ids=[
        "1000 brackets",
        "100k brackets",
        "nested 2000 deep",
        "4400 digits",
        "1e999",
        "lone surrogate",
        "invalid utf-8",
    ],
)
def test_malformed_json_is_400_without_logging_in(client, app, body):
    """Hostile bodies from anyone: a clear 400, never a 500 with a traceback."""
    response = client.post("/api/auth/token/", data=body, content_type="application/json")
    assert_error(response, 400, "malformed_json")


def test_deep_but_valid_json_is_a_validation_error(client):
    body = b'{"username": ' + b"[" * 900 + b"]" * 900 + b', "password": "x"}'
    response = client.post("/api/auth/token/", data=body, content_type="application/json")
    assert "username" in assert_error(response, 400, "validation_error")["fields"]


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
        expired = create_access_token(
            identity=str(alice.id),
            additional_claims={"role": "agent", "ver": 0, "sid": new_session(), "type": "x"},
            expires_delta=timedelta(seconds=-10),
        )
    assert_error(client.post("/api/auth/refresh/", headers=bearer(expired)), 401, "token_expired")
    assert_error(client.post("/api/auth/refresh/", headers=bearer("x.y.z")), 401, "invalid_token")
    assert_error(client.post("/api/auth/refresh/"), 401, "missing_token")


# -- logout ------------------------------------------------------------------
def test_logout_ends_the_whole_session_at_once(client, factory, app):
    """Logout revokes the presented token, its refresh token, and every access token
    refreshed from it; another session of the same account goes on."""
    factory.user("alice")
    tokens = login(client, "alice").get_json()
    other = login(client, "alice").get_json()
    headers = bearer(tokens["access_token"])
    refresh = bearer(tokens["refresh_token"])
    refreshed = client.post("/api/auth/refresh/", headers=refresh).get_json()["access_token"]
    assert claims_of(app, refreshed)["sid"] == claims_of(app, tokens["access_token"])["sid"]
    assert client.get("/api/agent/tickets/", headers=bearer(refreshed)).status_code == 200

    response = client.post("/api/auth/logout/", headers=headers)
    assert response.status_code == 204
    assert response.get_data() == b""
    assert_error(client.get("/api/agent/tickets/", headers=headers), 401, "token_revoked")
    assert_error(client.post("/api/auth/logout/", headers=headers), 401, "token_revoked")
    assert_error(client.post("/api/auth/refresh/", headers=refresh), 401, "token_revoked")
    assert_error(client.get("/api/agent/tickets/", headers=bearer(refreshed)), 401, "token_revoked")
    assert (
        client.get("/api/agent/tickets/", headers=bearer(other["access_token"])).status_code == 200
    )
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(RevokedSession)) == 1


def test_logout_with_the_refresh_token_ends_the_session_too(client, factory):
    factory.user("alice")
    tokens = login(client, "alice").get_json()
    assert (
        client.post("/api/auth/logout", headers=bearer(tokens["refresh_token"])).status_code == 204
    )
    assert_error(
        client.get("/api/agent/tickets/", headers=bearer(tokens["access_token"])),
        401,
        "token_revoked",
    )


def test_housekeeping_forgets_only_revocations_past_every_tokens_expiry(client, factory, app):
    factory.user("alice")
    for _ in range(2):
        tokens = login(client, "alice").get_json()
        client.post("/api/auth/logout/", headers=bearer(tokens["access_token"]))
    with app.app_context():
        [old, recent] = db.session.scalars(sa.select(RevokedSession).order_by(RevokedSession.sid))
        old.expires_at = old.expires_at - timedelta(days=30)
        db.session.commit()
        gone = old.sid
        assert forget_expired_revocations(db.session) == 1
        assert list(db.session.scalars(sa.select(RevokedSession.sid))) == [recent.sid]
        assert forget_expired_revocations(db.session) == 0
    assert gone != recent.sid


def test_a_password_change_ends_every_token_issued_before(client, factory, admin_headers):
    alice = factory.user("alice")
    tokens = login(client, "alice").get_json()
    changed = client.patch(
        f"/api/admin/users/{alice.id}/", json={"password": "a-new-password"}, headers=admin_headers
    )
    assert changed.status_code == 200
    for response in (
        client.get("/api/agent/tickets/", headers=bearer(tokens["access_token"])),
        client.get("/api/agent/tickets/assign/", headers=bearer(tokens["access_token"])),
        client.post("/api/agent/tickets/sell/1/", headers=bearer(tokens["access_token"])),
        client.post("/api/auth/refresh/", headers=bearer(tokens["refresh_token"])),
    ):
        assert_error(response, 401, "token_outdated")
    fresh = login(client, "alice", "a-new-password").get_json()
    assert (
        client.get("/api/agent/tickets/", headers=bearer(fresh["access_token"])).status_code == 200
    )


def test_an_admins_own_password_change_ends_its_old_token(client, factory):
    boss = factory.user("boss", role="admin")
    old = bearer(login(client, "boss").get_json()["access_token"])
    assert client.get("/api/admin/queue/", headers=old).status_code == 200
    response = client.patch(
        f"/api/admin/users/{boss.id}/", json={"password": "boss-new-password"}, headers=old
    )
    assert response.status_code == 200
    assert_error(client.get("/api/admin/queue/", headers=old), 401, "token_outdated")


def test_token_responses_are_not_cached(client, factory):
    factory.user("alice")
    tokens = login(client, "alice")
    assert tokens.headers["Cache-Control"] == "no-store"
    refreshed = client.post(
        "/api/auth/refresh/", headers=bearer(tokens.get_json()["refresh_token"])
    )
    assert refreshed.headers["Cache-Control"] == "no-store"
    for response in (tokens, refreshed, client.get("/healthz"), client.get("/nowhere")):
        assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_revocation_is_read_from_redis_when_redis_is_trusted(client, factory, app):
    """With the epoch key present Redis alone answers: a Redis-only revocation counts."""
    alice = factory.user("alice")
    with app.app_context():
        session = new_session()
        token = access_token(alice.id, "agent", 0, session)
        queue = ticket_queue()
        queue.mark_built("epoch-1")
        assert client.get("/api/agent/tickets/", headers=bearer(token)).status_code == 200
        queue.revoke(session, 60)
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
    assert redis_client.get(EPOCH_KEY) is None
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
        assert redis_client.get(ticket_queue().epoch_key) is not None
    assert summary.revoked == 1
    assert_error(client.get("/api/agent/tickets/", headers=headers), 401, "token_revoked")


# -- what a token must carry -------------------------------------------------------
def _signed(app, **claims: Any) -> dict[str, str]:
    return bearer(pyjwt.encode(claims, app.config["JWT_SECRET_KEY"], algorithm="HS256"))


@pytest.mark.parametrize("missing", ["exp", "iat", "jti", "type", "sub", "role", "ver", "sid"])
def test_a_token_without_a_required_claim_is_refused(client, factory, app, missing):
    """Signed with the real key (so only defence in depth): every claim is required."""
    alice = factory.user("alice")
    full = {
        "sub": str(alice.id),
        "role": "agent",
        "ver": 0,
        "sid": "0" * 32,
        "type": "access",
        "jti": "j",
        "iat": 1,
        "exp": 2**31,
    }
    del full[missing]
    response = client.get("/api/agent/tickets/", headers=_signed(app, **full))
    assert_error(response, 401, "invalid_token")


@pytest.mark.parametrize(
    "claim, value",
    [
        ("sub", "abc"),
        ("sub", "99999999999999999999"),
        ("sub", 7),
        ("ver", "0"),
        ("ver", True),
        ("role", "root"),
        ("sid", "x"),
        ("type", "id"),
    ],
)
def test_a_token_with_a_wrong_typed_claim_is_401_not_500(client, factory, app, claim, value):
    alice = factory.user("alice")
    claims = {
        "sub": str(alice.id),
        "role": "agent",
        "ver": 0,
        "sid": "0" * 32,
        "type": "access",
        "jti": "j",
        "iat": 1,
        "exp": 2**31,
        claim: value,
    }
    assert_error(
        client.get("/api/agent/tickets/", headers=_signed(app, **claims)), 401, "invalid_token"
    )


def test_the_role_in_a_token_must_match_the_account(client, factory, app):
    alice = factory.user("alice")
    with app.app_context():
        forged = access_token(alice.id, "admin", 0, new_session())
    assert_error(client.get("/api/admin/queue/", headers=bearer(forged)), 401, "token_outdated")


def test_401_messages_do_not_echo_the_token_decoder(client):
    """A token that is not UTF-8 inside gets the same plain message as any bad token."""
    for token in ("x\xc7.y.z", "eyJhbGciOiJIUzI1NiJ9.x8c.y", "a.b.c"):
        error = assert_error(client.get("/api/agent/tickets/", headers=bearer(token)), 401)
        assert error["code"] == "invalid_token"
        assert "codec" not in error["message"] and "decode" not in error["message"]


# -- 401 and 403 on every route ----------------------------------------------
BAD_TOKENS = ["missing", "garbage", "not_bearer", "bad_signature", "expired", "revoked", "inactive"]


def bad_headers(kind: str, client, app, user: User) -> dict[str, str]:
    with app.app_context():
        if kind == "missing":
            return {}
        if kind == "garbage":
            return bearer("definitely-not-a-jwt")
        token = access_token(user.id, user.role, 0, new_session())
        if kind == "not_bearer":
            return {"Authorization": token}
        if kind == "bad_signature":
            forged = pyjwt.encode(
                {**claims_of(app, token), "exp": 2**31},
                "another-secret-that-is-also-long-enough-0123",
                algorithm="HS256",
            )
            return bearer(forged)
        if kind == "expired":
            token = create_access_token(
                str(user.id),
                additional_claims={"role": user.role, "ver": 0, "sid": new_session()},
                expires_delta=timedelta(seconds=-10),
            )
            return bearer(token)
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
    "not_bearer": "invalid_token",
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
    after = snapshot(app)
    if kind == "inactive" and path.startswith("/api/agent/"):
        # A signed token of a session not logged out is a sign of its client's
        # life, noted on the token check's round trip before PostgreSQL is asked
        # whether the account is still active; nothing else may change.
        assert after["redis"].pop("{tq}:seen") == "zset"
    assert after == before


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
        token = refresh_token(owner.id, owner.role, 0, new_session())
    before = snapshot(app)
    assert_error(call(client, method, path, body, world, bearer(token)), 401, "wrong_token_type")
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


def test_a_spray_from_one_address_is_limited_across_usernames(client, factory, app):
    limit = int(re.match(r"\s*(\d+)", app.config["LOGIN_ADDRESS_RATE_LIMIT"]).group(1))
    checks = []
    real = passwords.verify_password
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("service.auth.verify_password", lambda h, p: checks.append(1) or real(h, p))
        for i in range(limit):
            assert_error(login(client, f"user{i}", "guess-password"), 401, "invalid_credentials")
        throttled = login(client, "another-user", "guess-password")
    assert_error(throttled, 429, "rate_limited")
    assert "address" in throttled.get_json()["error"]["message"]
    # The refused attempt cost no password check: a spray's CPU is bounded.
    assert len(checks) == limit


def test_one_account_is_limited_across_addresses(client, factory, app):
    factory.user("alice")
    limit = int(re.match(r"\s*(\d+)", app.config["LOGIN_ACCOUNT_RATE_LIMIT"]).group(1))
    statuses = [
        client.post(
            "/api/auth/token/",
            json={"username": "alice", "password": "guess-password"},
            environ_base={"REMOTE_ADDR": f"10.0.{i // 250}.{i % 250 + 1}"},
        ).status_code
        for i in range(limit + 1)
    ]
    assert statuses == [401] * limit + [429]


@pytest.mark.parametrize("path", ["/healthz", "/healthz/", "/readyz", "/readyz/"])
def test_probes_need_no_token(client, path):
    response = client.get(path)
    assert response.status_code == 200
    assert response.is_json
