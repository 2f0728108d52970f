"""The admin's user pages: the list, a new user, one user's password, activity,
capacity, queues and status."""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, flash, render_template, request, url_for

from ..domain import queues
from ..domain import users as user_domain
from ..extensions import db
from ..models import PRESENCE, ROLES
from ..schemas import UserCreateSchema, UserPatchSchema, UserQuerySchema
from ..state import ticket_queue
from . import bp, live, requires, see_other, visitor
from .forms import Failure, Form, attempt, integer, load

PAGE = 100


@bp.get("/admin/users/", endpoint="users")
@requires("admin")
def user_list() -> str:
    cursor = request.args.get("cursor") or None
    wanted = {"limit": PAGE, **({"cursor": cursor} if cursor else {})}
    query = attempt(lambda: load(UserQuerySchema(), wanted))
    found, next_cursor = attempt(lambda: user_domain.list_users(db.session, **query))
    return render_template(
        "console/users.html",
        users=user_domain.describe(db.session, found),
        next_url=url_for("console.users", cursor=next_cursor) if next_cursor else None,
        first_url=url_for("console.users") if cursor else None,
        **live(None),
    )


def _new_page(form: Form, status: int = 200) -> tuple[str, int]:
    return render_template(
        "console/user_new.html",
        form=form,
        roles=ROLES,
        queue_names=attempt(lambda: queues.queue_names(db.session)),
        default_capacity=current_app.config["TICKETS_PER_AGENT"],
        **live(None),
    ), status


@bp.get("/admin/users/new")
@requires("admin")
def new_user() -> tuple[str, int]:
    return _new_page(Form({"role": "agent", "queues": ["general"]}))


@bp.post("/admin/users/new")
@requires("admin")
def create_user() -> Response | tuple[str, int]:
    typed: dict[str, Any] = {
        "username": request.form.get("username", "").strip(),
        "role": request.form.get("role", ""),
        "capacity": request.form.get("capacity", ""),
        "queues": request.form.getlist("queues"),
    }

    def create() -> Any:
        body: dict[str, Any] = {
            "username": typed["username"],
            "password": request.form.get("password", ""),
            "role": typed["role"],
        }
        if typed["role"] == "agent":
            # Capacity and queues are an agent's; an admin's form leaves them out.
            body["capacity"] = integer(typed["capacity"])
            body["queues"] = typed["queues"]
        loaded = load(UserCreateSchema(), body)
        return user_domain.create_user(
            db.session, default_capacity=current_app.config["TICKETS_PER_AGENT"], **loaded
        )

    try:
        user = attempt(create)
    except Failure as problem:
        return _new_page(Form.failed(typed, problem), problem.status)
    flash(f"{user.role.capitalize()} “{user.username}” created.", "done")
    return see_other(url_for("console.user_page", user_id=user.id))


def _user_page(user_id: int, forms: dict[str, Form] | None = None, status: int = 200):
    user = attempt(lambda: user_domain.get_user(db.session, user_id))
    view = user_domain.describe(db.session, [user])[0]
    forms = forms or {}
    work = Form({"capacity": view.capacity, "queues": view.queues or []})
    return render_template(
        "console/user.html",
        user=view,
        myself=visitor().user.id == user_id,
        password=forms.get("password", Form()),
        work=forms.get("work", work),
        presence=forms.get("presence", Form({"status": view.status})),
        activity=forms.get("activity", Form()),
        queue_names=attempt(lambda: queues.queue_names(db.session)),
        statuses=PRESENCE,
        **live(None),
    ), status


@bp.get("/admin/users/<int:user_id>/")
@requires("admin")
def user_page(user_id: int) -> tuple[str, int]:
    return _user_page(user_id)


def _change(user_id: int, form_name: str, typed: dict[str, Any], body: dict[str, Any], done: str):
    """The API's PATCH with ``body``; back to the page with ``done``, or the page with
    the form (``form_name``) as typed and what went wrong."""
    actor = visitor().user.id

    def change() -> Any:
        changes = load(UserPatchSchema(), body)
        return user_domain.update_user(db.session, ticket_queue(), user_id, changes, actor_id=actor)

    try:
        attempt(change)
    except Failure as problem:
        if problem.status == 404:
            raise
        return _user_page(user_id, {form_name: Form.failed(typed, problem)}, problem.status)
    flash(done, "done")
    return see_other(url_for("console.user_page", user_id=user_id))


@bp.post("/admin/users/<int:user_id>/password")
@requires("admin")
def change_password(user_id: int):
    password = request.form.get("password", "")
    return _change(
        user_id,
        "password",
        {},
        {"password": password},
        "Password changed. Every session of this account has ended.",
    )


@bp.post("/admin/users/<int:user_id>/work")
@requires("admin")
def change_work(user_id: int):
    capacity = request.form.get("capacity", "")
    queue_list = request.form.getlist("queues")
    typed: dict[str, Any] = {"capacity": capacity, "queues": queue_list}
    # Empty is no number: the schema says so in its words.
    body = {"capacity": integer(capacity) if capacity.strip() else capacity, "queues": queue_list}
    return _change(user_id, "work", typed, body, "Capacity and queues saved.")


@bp.post("/admin/users/<int:user_id>/status")
@requires("admin")
def change_status(user_id: int):
    typed = {"status": request.form.get("status", "")}
    return _change(user_id, "presence", typed, typed, f"Status set to {typed['status']}.")


@bp.get("/admin/users/<int:user_id>/deactivate")
@requires("admin")
def confirm_deactivate(user_id: int) -> str:
    user = attempt(lambda: user_domain.get_user(db.session, user_id))
    return render_template(
        "console/confirm.html",
        heading=f"Deactivate “{user.username}”?",
        explanation="Every session of the account ends at once. An agent's unsold tickets go"
        " back to their queues, each at its place. You can reactivate the account later;"
        " its old sessions stay ended.",
        action=url_for("console.set_active", user_id=user_id),
        fields={"is_active": "false"},
        button="Deactivate",
        cancel=url_for("console.user_page", user_id=user_id),
    )


@bp.post("/admin/users/<int:user_id>/active")
@requires("admin")
def set_active(user_id: int):
    active = request.form.get("is_active") == "true"
    done = "Account reactivated." if active else "Account deactivated; its sessions have ended."
    return _change(user_id, "activity", {}, {"is_active": active}, done)
