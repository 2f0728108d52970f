"""Users, admin side: create, list, show, change; validation leaves nothing behind."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from conftest import PASSWORD
from helpers import assert_error

from service.auth import verify_password
from service.extensions import db
from service.models import User

USER_KEYS = {"id", "username", "role", "is_active", "capacity", "queues", "status", "created_at"}


def assert_user(body: dict[str, Any]) -> None:
    """A user and nothing else: no password, no hash."""
    assert set(body) == USER_KEYS
    text = repr(body).lower()
    assert "password" not in text and "argon2" not in text and PASSWORD not in text


def users_in_db(app) -> list[tuple[Any, ...]]:
    with app.app_context():
        return [
            tuple(row)
            for row in db.session.execute(
                sa.select(
                    User.id,
                    User.username,
                    User.role,
                    User.is_active,
                    User.capacity,
                    User.password_hash,
                ).order_by(User.id)
            )
        ]


def login(client, username: str, password: str = PASSWORD):
    return client.post("/api/auth/token/", json={"username": username, "password": password})


NEW_AGENT = {"username": "agent.smith-1", "password": "s3cret-pass", "role": "agent"}


# -- create ------------------------------------------------------------------
def test_create_agent_with_default_capacity(client, admin_headers, app):
    response = client.post("/api/admin/users/", json=NEW_AGENT, headers=admin_headers)
    assert response.status_code == 201
    body = response.get_json()
    assert_user(body)
    assert body["username"] == "agent.smith-1"
    assert body["role"] == "agent"
    assert body["is_active"] is True
    assert body["capacity"] == 15
    assert body["created_at"].endswith("+00:00")
    stored = users_in_db(app)[-1]
    assert stored[:5] == (body["id"], "agent.smith-1", "agent", True, 15)
    assert stored[5].startswith("$argon2") and "s3cret-pass" not in stored[5]
    # The new account can log in with its password.
    assert login(client, "agent.smith-1", "s3cret-pass").status_code == 200


def test_create_agent_with_capacity_and_admin_without(client, admin_headers):
    agent = client.post(
        "/api/admin/users", json={**NEW_AGENT, "capacity": 3}, headers=admin_headers
    )
    assert agent.status_code == 201
    assert agent.get_json()["capacity"] == 3
    boss = client.post(
        "/api/admin/users",
        json={"username": "boss", "password": PASSWORD, "role": "admin"},
        headers=admin_headers,
    )
    assert boss.status_code == 201
    assert_user(boss.get_json())
    assert boss.get_json()["role"] == "admin"
    assert boss.get_json()["capacity"] is None
    # The new admin's token opens the admin routes.
    token = login(client, "boss").get_json()["access_token"]
    listed = client.get("/api/admin/users/", headers={"Authorization": f"Bearer {token}"})
    assert listed.status_code == 200


@pytest.mark.parametrize("capacity, expected", [(1, 1), (1000, 1000)], ids=["lowest", "highest"])
def test_capacity_bounds_are_inclusive(client, admin_headers, capacity, expected):
    response = client.post(
        "/api/admin/users/", json={**NEW_AGENT, "capacity": capacity}, headers=admin_headers
    )
    assert response.status_code == 201
    assert response.get_json()["capacity"] == expected


@pytest.mark.parametrize(
    "change, field",
    [
        ({"username": None}, "username"),
        ({"password": None}, "password"),
        ({"role": None}, "role"),
        ({"username": "ab"}, "username"),
        ({"username": "a" * 65}, "username"),
        ({"username": "has space"}, "username"),
        ({"username": "émile"}, "username"),
        ({"username": 123}, "username"),
        ({"password": "short"}, "password"),
        ({"password": "p" * 257}, "password"),
        ({"password": 12345678}, "password"),
        ({"role": "superuser"}, "role"),
        ({"role": True}, "role"),
        ({"capacity": 0}, "capacity"),
        ({"capacity": 1001}, "capacity"),
        ({"capacity": -5}, "capacity"),
        ({"capacity": "5"}, "capacity"),
        ({"capacity": True}, "capacity"),
        ({"capacity": 2.5}, "capacity"),
        ({"is_active": False}, "is_active"),
        ({"password_hash": "x"}, "password_hash"),
    ],
)
def test_create_validation_names_the_field_and_writes_nothing(
    client, admin_headers, app, change, field
):
    body = {**NEW_AGENT, **change}
    body = {k: v for k, v in body.items() if not (v is None and k in change)}
    before = users_in_db(app)
    response = client.post("/api/admin/users/", json=body, headers=admin_headers)
    error = assert_error(response, 400, "validation_error")
    assert field in error["fields"]
    assert field in error["message"]
    assert users_in_db(app) == before


def test_usernames_that_differ_only_in_case_are_one_name(client, admin_headers, app):
    assert (
        client.post("/api/admin/users/", json=NEW_AGENT, headers=admin_headers).status_code == 201
    )
    before = users_in_db(app)
    for name in (NEW_AGENT["username"].upper(), NEW_AGENT["username"].title()):
        again = client.post(
            "/api/admin/users/", json={**NEW_AGENT, "username": name}, headers=admin_headers
        )
        assert_error(again, 409, "duplicate_username")
    assert users_in_db(app) == before


def test_an_admin_with_a_capacity_is_400_on_create_as_on_edit(client, admin_headers, app):
    before = users_in_db(app)
    response = client.post(
        "/api/admin/users/",
        json={"username": "boss", "password": PASSWORD, "role": "admin", "capacity": 5},
        headers=admin_headers,
    )
    error = assert_error(response, 400, "validation_error")
    assert "capacity" in error["fields"]
    assert users_in_db(app) == before


def test_an_admin_cannot_deactivate_itself(client, admin_headers, admin, factory, app):
    factory.user("other-admin", role="admin")
    before = users_in_db(app)
    response = client.patch(
        f"/api/admin/users/{admin.id}/", json={"is_active": False}, headers=admin_headers
    )
    assert_error(response, 409, "cannot_deactivate_self")
    assert users_in_db(app) == before


def test_the_last_active_admin_stays_active(app, factory):
    """Two admins deactivating each other at the same moment: one of them wins, the
    other is refused, and one active admin is left (many tries, real connections)."""
    from concurrent.futures import ThreadPoolExecutor

    for round_ in range(5):
        a = factory.user(f"a{round_}", role="admin")
        b = factory.user(f"b{round_}", role="admin")
        with app.app_context():
            db.session.execute(
                sa.update(User).where(User.id.notin_([a.id, b.id])).values(is_active=False)
            )
            db.session.commit()
        pairs = [(a, b), (b, a)]

        def deactivate(pair):
            actor, target = pair
            return app.test_client().patch(
                f"/api/admin/users/{target.id}/",
                json={"is_active": False},
                headers=factory.headers(actor),
            )

        with ThreadPoolExecutor(max_workers=2) as pool:
            results = list(pool.map(deactivate, pairs))
        statuses = sorted(r.status_code for r in results)
        assert statuses in ([200, 401], [200, 409]), [r.get_json() for r in results]
        with app.app_context():
            active = db.session.scalars(
                sa.select(User.id).where(User.role == "admin", User.is_active)
            ).all()
        assert len(active) == 1


def test_create_reports_every_bad_field_at_once(client, admin_headers):
    response = client.post(
        "/api/admin/users/",
        json={"username": "x", "password": "y", "role": "boss", "capacity": True},
        headers=admin_headers,
    )
    error = assert_error(response, 400, "validation_error")
    assert set(error["fields"]) == {"username", "password", "role", "capacity"}


@pytest.mark.parametrize(
    "data, content_type, status, field",
    [
        ('{"username": "bob",', "application/json", 400, "body"),
        ('["bob", "pw", "agent"]', "application/json", 400, "body"),
        ('"bob"', "application/json", 400, "body"),
        ("null", "application/json", 400, "body"),
        ("username=bob", "text/plain", 415, None),
        ("username=bob", "application/x-www-form-urlencoded", 415, None),
        ("", None, 415, None),
    ],
    ids=["malformed", "array", "string", "null", "text", "form", "no-body"],
)
def test_create_with_a_bad_body(client, admin_headers, app, data, content_type, status, field):
    before = users_in_db(app)
    response = client.post(
        "/api/admin/users/", data=data, content_type=content_type, headers=admin_headers
    )
    error = assert_error(response, status)
    if field is not None:
        assert field in error["fields"]
    assert users_in_db(app) == before


def test_create_with_a_body_over_64_kib_is_413(client, admin_headers, app):
    before = users_in_db(app)
    response = client.post(
        "/api/admin/users/",
        json={**NEW_AGENT, "password": "p" * (65 * 1024)},
        headers=admin_headers,
    )
    assert_error(response, 413, "payload_too_large")
    assert users_in_db(app) == before


def test_duplicate_username_is_409(client, admin_headers, app):
    assert (
        client.post("/api/admin/users/", json=NEW_AGENT, headers=admin_headers).status_code == 201
    )
    before = users_in_db(app)
    again = client.post(
        "/api/admin/users/",
        json={**NEW_AGENT, "password": "another-password", "role": "admin"},
        headers=admin_headers,
    )
    assert_error(again, 409, "duplicate_username")
    assert users_in_db(app) == before
    # The first account keeps its password.
    assert login(client, NEW_AGENT["username"], NEW_AGENT["password"]).status_code == 200


# -- list and show -------------------------------------------------------------
def test_list_users_in_creation_order_a_page_at_a_time(client, admin_headers, factory, admin):
    ids = [admin.id] + factory.agents(4)
    page1 = client.get("/api/admin/users/?limit=2", headers=admin_headers)
    assert page1.status_code == 200
    body = page1.get_json()
    assert set(body) == {"items", "next_cursor"}
    assert [u["id"] for u in body["items"]] == ids[:2]
    for user in body["items"]:
        assert_user(user)
    page2 = client.get(
        "/api/admin/users",
        query_string={"limit": 2, "cursor": body["next_cursor"]},
        headers=admin_headers,
    ).get_json()
    assert [u["id"] for u in page2["items"]] == ids[2:4]
    page3 = client.get(
        "/api/admin/users/",
        query_string={"limit": 2, "cursor": page2["next_cursor"]},
        headers=admin_headers,
    ).get_json()
    assert [u["id"] for u in page3["items"]] == ids[4:]
    assert page3["next_cursor"] is None
    everything = client.get("/api/admin/users/", headers=admin_headers).get_json()
    assert [u["id"] for u in everything["items"]] == ids
    assert everything["next_cursor"] is None
    assert everything["items"][0]["role"] == "admin"
    assert everything["items"][1]["username"] == "agent0"


@pytest.mark.parametrize(
    "query, field",
    [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=abc", "limit"),
        ("cursor=not-a-cursor", "cursor"),
        ("cursor=eHl6OjE", "cursor"),  # base64 of "xyz:1": well formed, not ours
    ],
)
def test_list_users_bad_query_is_400(client, admin_headers, query, field):
    response = client.get(f"/api/admin/users/?{query}", headers=admin_headers)
    error = assert_error(response, 400, "validation_error")
    assert field in error["fields"]


def test_show_user(client, admin_headers, factory):
    agent = factory.user("alice", capacity=7)
    for path in (f"/api/admin/users/{agent.id}/", f"/api/admin/users/{agent.id}"):
        response = client.get(path, headers=admin_headers)
        assert response.status_code == 200
        body = response.get_json()
        assert_user(body)
        assert body["id"] == agent.id
        assert body["username"] == "alice"
        assert body["capacity"] == 7
        assert body["is_active"] is True


def test_show_unknown_user_is_404(client, admin_headers, admin):
    assert_error(client.get("/api/admin/users/999/", headers=admin_headers), 404, "not_found")
    # A non-integer id is an unknown path, still a JSON 404.
    assert_error(client.get("/api/admin/users/abc/", headers=admin_headers), 404, "not_found")


@pytest.mark.parametrize("user_id", ["2147483648", "2899933502080377946112", "0"])
@pytest.mark.parametrize("method", ["GET", "PATCH"])
def test_a_user_id_beyond_the_column_is_404_not_500(client, admin_headers, method, user_id):
    body = {"capacity": 3} if method == "PATCH" else None
    response = client.open(
        f"/api/admin/users/{user_id}/", method=method, json=body, headers=admin_headers
    )
    assert_error(response, 404, "not_found")


def test_unsupported_methods_are_405(client, admin_headers, factory):
    agent = factory.user("alice")
    response = client.delete(f"/api/admin/users/{agent.id}/", headers=admin_headers)
    error = assert_error(response, 405, "method_not_allowed")
    assert error["message"]
    assert "PATCH" in response.headers["Allow"]
    assert_error(client.put("/api/admin/users/", json={}, headers=admin_headers), 405)


# -- change --------------------------------------------------------------------
def test_patch_password(client, admin_headers, factory, app):
    agent = factory.user("alice")
    response = client.patch(
        f"/api/admin/users/{agent.id}/", json={"password": "brand-new-pass"}, headers=admin_headers
    )
    assert response.status_code == 200
    assert_user(response.get_json())
    assert login(client, "alice", "brand-new-pass").status_code == 200
    assert_error(login(client, "alice", PASSWORD), 401, "invalid_credentials")


def test_patch_capacity(client, admin_headers, factory):
    agent = factory.user("alice")
    response = client.patch(
        f"/api/admin/users/{agent.id}", json={"capacity": 42}, headers=admin_headers
    )
    assert response.status_code == 200
    assert response.get_json()["capacity"] == 42
    shown = client.get(f"/api/admin/users/{agent.id}/", headers=admin_headers).get_json()
    assert shown["capacity"] == 42


def test_deactivate_and_reactivate(client, admin_headers, factory):
    agent = factory.user("alice")
    token = login(client, "alice").get_json()
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    assert client.get("/api/agent/tickets/", headers=headers).status_code == 200

    off = client.patch(
        f"/api/admin/users/{agent.id}/", json={"is_active": False}, headers=admin_headers
    )
    assert off.status_code == 200
    assert off.get_json()["is_active"] is False
    assert_error(client.get("/api/agent/tickets/", headers=headers), 401)
    refresh = {"Authorization": f"Bearer {token['refresh_token']}"}
    assert_error(client.post("/api/auth/refresh/", headers=refresh), 401)
    assert_error(login(client, "alice"), 401, "invalid_credentials")

    on = client.patch(
        f"/api/admin/users/{agent.id}/", json={"is_active": True}, headers=admin_headers
    )
    assert on.status_code == 200
    assert on.get_json()["is_active"] is True
    # Reactivation does not bring the old tokens back, access or refresh: the
    # account logs in again.
    assert_error(client.get("/api/agent/tickets/", headers=headers), 401, "token_outdated")
    assert_error(client.post("/api/auth/refresh/", headers=refresh), 401, "token_outdated")
    fresh = login(client, "alice").get_json()
    again = {"Authorization": f"Bearer {fresh['access_token']}"}
    assert client.get("/api/agent/tickets/", headers=again).status_code == 200


def test_patch_several_fields_at_once(client, admin_headers, factory, app):
    agent = factory.user("alice")
    response = client.patch(
        f"/api/admin/users/{agent.id}/",
        json={"capacity": 2, "is_active": False, "password": "another-pass"},
        headers=admin_headers,
    )
    assert response.status_code == 200
    body = response.get_json()
    assert (body["capacity"], body["is_active"]) == (2, False)
    # Stored, not only echoed: the row changed, the password hash too.
    with app.app_context():
        stored = db.session.get(User, agent.id)
        assert (stored.capacity, stored.is_active) == (2, False)
        assert verify_password(stored.password_hash, "another-pass")
        assert not verify_password(stored.password_hash, PASSWORD)


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "body"),
        ({"password": "short"}, "password"),
        ({"password": 12345678}, "password"),
        ({"is_active": "false"}, "is_active"),
        ({"is_active": 0}, "is_active"),
        ({"is_active": None}, "is_active"),
        ({"capacity": True}, "capacity"),
        ({"capacity": 0}, "capacity"),
        ({"capacity": 1001}, "capacity"),
        ({"capacity": "3"}, "capacity"),
        ({"capacity": None}, "capacity"),
        ({"username": "renamed"}, "username"),
        ({"role": "admin"}, "role"),
    ],
)
def test_patch_validation_names_the_field_and_writes_nothing(
    client, admin_headers, factory, app, body, field
):
    agent = factory.user("alice")
    before = users_in_db(app)
    response = client.patch(f"/api/admin/users/{agent.id}/", json=body, headers=admin_headers)
    error = assert_error(response, 400, "validation_error")
    assert field in error["fields"]
    assert users_in_db(app) == before


def test_patch_capacity_of_an_admin_is_400(client, admin_headers, admin, app):
    before = users_in_db(app)
    response = client.patch(
        f"/api/admin/users/{admin.id}/", json={"capacity": 5}, headers=admin_headers
    )
    error = assert_error(response, 400, "validation_error")
    assert "capacity" in error["fields"]
    assert users_in_db(app) == before


@pytest.mark.parametrize(
    "data, content_type, status",
    [
        ("{not json", "application/json", 400),
        ("[]", "application/json", 400),
        ("is_active=false", "text/plain", 415),
    ],
    ids=["malformed", "array", "text"],
)
def test_patch_with_a_bad_body(client, admin_headers, factory, app, data, content_type, status):
    agent = factory.user("alice")
    before = users_in_db(app)
    response = client.patch(
        f"/api/admin/users/{agent.id}/",
        data=data,
        content_type=content_type,
        headers=admin_headers,
    )
    error = assert_error(response, status)
    if status == 400:
        assert "body" in error["fields"]
    assert users_in_db(app) == before


def test_patch_over_64_kib_is_413(client, admin_headers, factory, app):
    agent = factory.user("alice")
    before = users_in_db(app)
    response = client.patch(
        f"/api/admin/users/{agent.id}/",
        json={"password": "p" * (65 * 1024)},
        headers=admin_headers,
    )
    assert_error(response, 413, "payload_too_large")
    assert users_in_db(app) == before


def test_patch_unknown_user_is_404(client, admin_headers, app):
    before = users_in_db(app)
    response = client.patch(
        "/api/admin/users/999/", json={"is_active": False}, headers=admin_headers
    )
    assert_error(response, 404, "not_found")
    assert users_in_db(app) == before
