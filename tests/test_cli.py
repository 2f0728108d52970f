"""The command line: `users create` and `demo-users`."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from service.auth import verify_password
from service.extensions import db
from service.models import User


def users(app) -> list[tuple[str, str, int | None]]:
    with app.app_context():
        return [
            tuple(row)
            for row in db.session.execute(
                sa.select(User.username, User.role, User.capacity).order_by(User.id)
            )
        ]


def password_ok(app, username: str, password: str) -> bool:
    with app.app_context():
        stored = db.session.scalar(sa.select(User.password_hash).where(User.username == username))
        return stored is not None and verify_password(stored, password)


def test_create_agent_with_password(runner, app, client):
    result = runner.invoke(
        args=["users", "create", "bob", "--role", "agent", "--password", "bobs-password"]
    )
    assert result.exit_code == 0, result.output
    assert "created agent 'bob'" in result.output
    assert users(app) == [("bob", "agent", 15)]
    assert "bobs-password" not in result.output
    login = client.post("/api/auth/token/", json={"username": "bob", "password": "bobs-password"})
    assert login.status_code == 200


def test_create_admin_and_agent_with_capacity(runner, app):
    admin = runner.invoke(
        args=["users", "create", "root", "--role", "admin", "--password", "root-password"]
    )
    assert admin.exit_code == 0, admin.output
    agent = runner.invoke(
        args=[
            "users",
            "create",
            "small",
            "--role",
            "agent",
            "--password",
            "small-password",
            "--capacity",
            "4",
        ]
    )
    assert agent.exit_code == 0, agent.output
    assert users(app) == [("root", "admin", None), ("small", "agent", 4)]


def test_create_prompts_for_the_password_twice(runner, app):
    result = runner.invoke(
        args=["users", "create", "carol", "--role", "agent"],
        input="carols-password\ncarols-password\n",
    )
    assert result.exit_code == 0, result.output
    assert "Password" in result.output
    assert "carols-password" not in result.output  # hidden input is not echoed
    assert users(app) == [("carol", "agent", 15)]
    assert password_ok(app, "carol", "carols-password")


def test_create_prompt_repeats_until_both_entries_match(runner, app):
    result = runner.invoke(
        args=["users", "create", "dave", "--role", "agent"],
        input="first-password\nsecond-password\nthird-password\nthird-password\n",
    )
    assert result.exit_code == 0, result.output
    assert password_ok(app, "dave", "third-password")
    assert not password_ok(app, "dave", "first-password")


def test_duplicate_username_is_an_error(runner, app):
    first = runner.invoke(
        args=["users", "create", "bob", "--role", "agent", "--password", "bobs-password"]
    )
    assert first.exit_code == 0
    again = runner.invoke(
        args=["users", "create", "bob", "--role", "admin", "--password", "other-password"]
    )
    assert again.exit_code == 1
    assert "taken" in again.output
    assert users(app) == [("bob", "agent", 15)]
    assert password_ok(app, "bob", "bobs-password")


@pytest.mark.parametrize(
    "args, complaint",
    [
        (["bad name", "--role", "agent", "--password", "long-enough"], "username"),
        (["ab", "--role", "agent", "--password", "long-enough"], "username"),
        (["bob", "--role", "agent", "--password", "short"], "password"),
        (["bob", "--role", "agent", "--password", "long-enough", "--capacity", "0"], "capacity"),
        (["bob", "--role", "agent", "--password", "long-enough", "--capacity", "x"], "capacity"),
        (["bob", "--role", "boss", "--password", "long-enough"], "role"),
        (["bob", "--password", "long-enough"], "role"),
    ],
)
def test_invalid_input_is_an_error_and_creates_nothing(runner, app, args, complaint):
    result = runner.invoke(args=["users", "create", *args])
    assert result.exit_code == 2, result.output
    assert complaint in result.output
    assert users(app) == []


def test_demo_users_outside_embedded_mode_does_nothing(runner, app):
    assert app.config["EMBEDDED"] is False
    result = runner.invoke(args=["demo-users"])
    assert result.exit_code == 0
    assert "not in embedded mode" in result.output
    assert users(app) == []


def test_create_agent_in_queues(runner, app, factory):
    factory.queue("billing")
    factory.queue("fr")
    base = ["users", "create", "ann", "--role", "agent", "--password", "anns-password"]
    unknown = runner.invoke(args=[*base, "--queues", "billing,nope"])
    assert unknown.exit_code != 0 and "nope" in unknown.output
    assert users(app) == []
    made = runner.invoke(args=[*base, "--queues", "fr, billing"])
    assert made.exit_code == 0, made.output
    from service.domain.queues import agent_queues

    with app.app_context():
        agent_id = db.session.scalar(sa.select(User.id).where(User.username == "ann"))
        assert agent_queues(db.session, [agent_id]) == {agent_id: ["billing", "fr"]}
    admin = runner.invoke(
        args=["users", "create", "root", "--role", "admin", "--password", "root-password"]
        + ["--queues", "billing"]
    )
    assert admin.exit_code != 0
