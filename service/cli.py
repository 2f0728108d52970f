"""Command-line tools: ``flask --app wsgi users create ...``."""

from __future__ import annotations

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext
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
@click.option(
    "--queues",
    metavar="NAME[,NAME...]",
    help="Agents only: the queues it takes work from, comma-separated; defaults to general.",
)
def create_user(
    username: str, role: str, password: str | None, capacity: int | None, queues: str | None
) -> None:
    """Create a user; the same rules as POST /api/admin/users/."""
    if password is None:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    body: dict[str, object] = {"username": username, "password": password, "role": role}
    if capacity is not None:
        body["capacity"] = capacity
    if queues is not None:
        body["queues"] = [name.strip() for name in queues.split(",") if name.strip()]
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


DEMO_USERS = (("demo-admin", "admin"), ("demo-agent", "agent"))


@click.command("demo-users")
@with_appcontext
def demo_users() -> None:
    """Embedded mode only: create a demo admin and agent and print their credentials."""
    if not current_app.config["EMBEDDED"]:
        click.echo("not in embedded mode: no demo users (create users with `users create`)")
        return
    from .auth import find_user_by_name

    for username, role in DEMO_USERS:
        password = f"{username}-password"
        if find_user_by_name(username) is None:
            user_domain.create_user(
                db.session,
                username=username,
                password=password,
                role=role,
                capacity=None,
                default_capacity=current_app.config["TICKETS_PER_AGENT"],
            )
        click.echo(f"demo {role}: username {username!r} password {password!r}")


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
@with_appcontext
def serve(host: str, port: int) -> None:
    """Serve with gunicorn and gunicorn.conf.py: its production settings, or one
    process when embedded (the in-process Redis cannot be shared)."""
    import os
    import sys
    from pathlib import Path

    from .config import ConfigError, refuse, serving_config

    try:
        # gunicorn reads WEB_CONCURRENCY itself as it starts, with a traceback
        # for a bad value: check everything it will read first.
        serving_config(os.environ)
    except ConfigError as exc:
        refuse(exc)
    conf = Path(__file__).resolve().parent.parent / "gunicorn.conf.py"
    argv = [sys.executable, "-m", "gunicorn", "-c", str(conf), "--bind", f"{host}:{port}"]
    argv += ["wsgi:app"]
    os.execv(sys.executable, argv)


queue_cli = AppGroup("queue", help="Check and rebuild the Redis queue from PostgreSQL.")

# Embedded mode's Redis lives inside the running server: a command in another
# process would check or rebuild a throwaway copy, and report on it.
EMBEDDED_REFUSAL = (
    "embedded mode keeps Redis inside the running server, so this command cannot see it; "
    "the server rebuilds its Redis from the SQLite file each time it starts"
)


def refuse_if_embedded() -> None:
    from .config import refuse

    if current_app.config["EMBEDDED"]:
        refuse(EMBEDDED_REFUSAL)


@queue_cli.command("audit")
@click.option("--recheck-after", default=0.5, show_default=True, help="Seconds before a re-check.")
def queue_audit(recheck_after: float) -> None:
    """Check the invariants on live data; exit 1 on any violation."""
    from .domain.audit import audit
    from .state import ticket_queue

    refuse_if_embedded()
    violations = audit(db.session, ticket_queue(), recheck_after=recheck_after)
    for violation in violations:
        click.echo(str(violation))
    if violations:
        raise click.exceptions.Exit(1)
    click.echo("no violations")


@queue_cli.command("rebuild")
@click.option("--dry-run", is_flag=True, help="Report what differs; change nothing.")
def queue_rebuild(dry_run: bool) -> None:
    """Merge PostgreSQL's truth into Redis; safe while the API takes traffic."""
    from .domain.rebuild import rebuild
    from .state import ticket_queue

    refuse_if_embedded()
    summary = rebuild(db.session, ticket_queue(), dry_run=dry_run)
    click.echo(summary.describe())
    if not dry_run and not summary.completed:
        raise click.ClickException("Redis lost its data while rebuilding; run it again")


def register_commands(app: Flask) -> None:
    app.cli.add_command(users_cli)
    app.cli.add_command(demo_users)
    app.cli.add_command(serve)
    app.cli.add_command(queue_cli)
