"""Users, admin only."""

from __future__ import annotations

from typing import Any

from flask import current_app, g

from ..auth import role_required
from ..domain import users
from ..extensions import db
from ..schemas import (
    ErrorSchema,
    UserCreateSchema,
    UserPageSchema,
    UserPatchSchema,
    UserQuerySchema,
    UserSchema,
)
from ..state import ticket_queue
from . import USER_ID, Blueprint, link

blp = Blueprint("admin_users", __name__, url_prefix="/api/admin/users", description="Users (admin)")

NEW_USERS = {
    "agent": {
        "summary": "An agent holding at most 20 tickets at once",
        "value": {
            "username": "alice",
            "password": "correct-horse",
            "role": "agent",
            "capacity": 20,
            "queues": ["general", "billing"],
        },
    },
    "admin": {
        "summary": "An admin (no capacity)",
        "value": {"username": "carol", "password": "battery-staple", "role": "admin"},
    },
}
USER = {
    "id": 7,
    "username": "alice",
    "role": "agent",
    "is_active": True,
    "capacity": 20,
    "queues": ["billing", "general"],
    "status": "online",
    "created_at": "2025-03-04T09:15:00+00:00",
}


# role_required sits above @blp.arguments so the token is checked before the body:
# an anonymous or wrong-role caller gets 401/403, never a 400/415 describing the body.
@blp.route("/", methods=["POST"])
@blp.links(
    201,
    getUser=link("getUser", "The new user", user_id="$response.body#/id"),
    updateUser=link("updateUser", "Change the new user", user_id="$response.body#/id"),
)
@role_required("admin")
@blp.arguments(UserCreateSchema, examples=NEW_USERS)
@blp.response(201, UserSchema, example=USER)
@blp.alt_response(409, schema=ErrorSchema, description="The username is taken")
def create_user(body: dict[str, Any]) -> users.UserView:
    """Create an agent (in its queues, online) or an admin. A queue that does not exist
    is a 400."""
    user = users.create_user(
        db.session, default_capacity=current_app.config["TICKETS_PER_AGENT"], **body
    )
    return users.describe(db.session, [user])[0]


@blp.route("/", methods=["GET"])
@role_required("admin")
@blp.arguments(UserQuerySchema, location="query")
@blp.response(200, UserPageSchema)
def list_users(query: dict[str, Any]) -> dict[str, Any]:
    """List users in creation order, a page at a time."""
    items, next_cursor = users.list_users(db.session, **query)
    return {"items": users.describe(db.session, items), "next_cursor": next_cursor}


@blp.route(f"/{USER_ID}/", methods=["GET"])
@blp.response(200, UserSchema)
@role_required("admin")
def get_user(user_id: int) -> users.UserView:
    """Show one user."""
    return users.describe(db.session, [users.get_user(db.session, user_id)])[0]


@blp.route(f"/{USER_ID}/", methods=["PATCH"], operation_id="updateUser")
@role_required("admin")
@blp.arguments(UserPatchSchema)
@blp.response(200, UserSchema)
@blp.alt_response(
    409,
    schema=ErrorSchema,
    description="An admin deactivating itself, or the last active admin",
)
def patch_user(changes: dict[str, Any], user_id: int) -> users.UserView:
    """Change a password, deactivate or reactivate, or set an agent's capacity, queues
    or presence.

    Only agents have a capacity, queues and a presence: any of them for an admin
    is a 400 (`fields` names it). That depends on the user's role, not on the
    body, so the body's schema cannot rule it out; so is a queue that does not
    exist. A deactivated agent's unsold
    tickets go back to their queues, each at its place.
    """
    user = users.update_user(db.session, ticket_queue(), user_id, changes, actor_id=g.user.id)
    return users.describe(db.session, [user])[0]
