"""Command-line tools: ``flask --app wsgi users create ...``."""

from __future__ import annotations

import click
from flask import Flask, current_app
from flask.cli import AppGroup
from marshmallow import ValidationError

from . import errors
from .domain import users as user_domain
from .extensions import db
from .schemas import UserCreateSchema

users_cli = AppGroup("users", help="Manage user accounts.")


@users_cli.command("create")
@click.argument("username")
@click.option("--role", type=click.Choice(["admin", "agent"]), required=True)
@click.option("--password", help="Prompted for (hidden, twice) when not given.")
@click.option("--capacity", type=int, help="Agents only; defaults to TICKETS_PER_AGENT.")
def create_user(username: str, role: str, password: str | None, capacity: int | None) -> None:
    """Create a user; the same rules as POST /api/admin/users/."""
    if password is None:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    body = {"username": username, "password": password, "role": role}
    if capacity is not None:
        body["capacity"] = capacity
    try:
        data = UserCreateSchema().load(body)
    except ValidationError as exc:
        raise click.UsageError(f"invalid user: {exc.messages}") from None
    try:
        user = user_domain.create_user(
            db.session, default_capacity=current_app.config["TICKETS_PER_AGENT"], **data
        )
    except errors.ServiceError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"created {user.role} {user.username!r} (id {user.id})")


def register_commands(app: Flask) -> None:
    app.cli.add_command(users_cli)
