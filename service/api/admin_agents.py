"""The agents' workload, admin only."""

from __future__ import annotations

from typing import Any

from ..auth import role_required
from ..domain import workload
from ..extensions import db
from ..schemas import WorkloadPageSchema, WorkloadQuerySchema
from ..state import ticket_queue
from . import Blueprint

blp = Blueprint(
    "admin_agents", __name__, url_prefix="/api/admin/agents", description="Agents (admin)"
)


@blp.route("/", methods=["GET"], operation_id="listAgentWorkload")
@role_required("admin")
@blp.arguments(WorkloadQuerySchema, location="query")
@blp.response(200, WorkloadPageSchema)
def list_agents(query: dict[str, Any]) -> dict[str, Any]:
    """Each agent's presence, queues, held tickets against its capacity, tickets sold
    and last request, by id; filtered by queue or presence."""
    items, next_cursor = workload.list_workload(
        db.session,
        ticket_queue(),
        queue_name=query.get("queue"),
        status=query.get("status"),
        limit=query["limit"],
        cursor=query.get("cursor"),
    )
    return {"items": items, "next_cursor": next_cursor}
