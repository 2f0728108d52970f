"""Queues, admin only: create, list, describe, edit, delete."""

from __future__ import annotations

from typing import Any

from ..auth import role_required
from ..domain import queues
from ..extensions import db
from ..schemas import ErrorSchema, QueueCreateSchema, QueueListSchema, QueuePatchSchema, QueueSchema
from . import QUEUE_NAME, Blueprint, link

blp = Blueprint(
    "admin_queues", __name__, url_prefix="/api/admin/queues", description="Queues (admin)"
)

NEW_QUEUE = {"name": "billing", "description": "Invoices, refunds and payment methods"}
QUEUE = {
    **NEW_QUEUE,
    "created_at": "2025-03-04T09:00:00+00:00",
    "unassigned": 12,
    "assigned": 30,
    "agents": 4,
    "agents_online": 3,
    "oldest_unassigned_at": "2025-03-04T09:20:00+00:00",
}
_THE_QUEUE = "$response.body#/name"


@blp.route("/", methods=["POST"])
@blp.links(201, getQueue=link("getQueue", "The new queue", queue_name=_THE_QUEUE))
@role_required("admin")
@blp.arguments(QueueCreateSchema, example=NEW_QUEUE)
@blp.response(201, QueueSchema, example=QUEUE)
@blp.alt_response(409, schema=ErrorSchema, description="The name is taken")
def create_queue(body: dict[str, Any]) -> queues.QueueView:
    """Create a queue (a team, a skill, a language)."""
    return queues.create_queue(db.session, name=body["name"], description=body["description"])


@blp.route("/", methods=["GET"])
@blp.response(200, QueueListSchema)
@role_required("admin")
def list_queues() -> dict[str, Any]:
    """Every queue by name, with its depth, agents online and oldest waiting ticket."""
    return {"items": queues.list_queues(db.session)}


@blp.route(f"/{QUEUE_NAME}/", methods=["GET"])
@blp.response(200, QueueSchema, example=QUEUE)
@role_required("admin")
def get_queue(queue_name: str) -> queues.QueueView:
    """Show one queue."""
    return queues.get_queue(db.session, queue_name)


@blp.route(f"/{QUEUE_NAME}/", methods=["PATCH"])
@role_required("admin")
@blp.arguments(QueuePatchSchema)
@blp.response(200, QueueSchema)
def update_queue(body: dict[str, Any], queue_name: str) -> queues.QueueView:
    """Change a queue's description (a queue's name never changes)."""
    return queues.update_queue(db.session, queue_name, description=body["description"])


@blp.route(f"/{QUEUE_NAME}/", methods=["DELETE"])
@blp.response(204)
@blp.alt_response(
    409,
    schema=ErrorSchema,
    description="A ticket waits or is held in it, an agent belongs to it, or it is general",
)
@role_required("admin")
def delete_queue(queue_name: str) -> None:
    """Delete an empty queue (sold tickets keep its name)."""
    queues.delete_queue(db.session, queue_name)
