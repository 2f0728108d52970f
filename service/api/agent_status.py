"""An agent's own presence: online, away or offline."""

from __future__ import annotations

from typing import Any

from .. import notify
from ..auth import current_claims, role_required
from ..domain import presence
from ..extensions import db
from ..schemas import PresenceSchema, StatusChangeSchema
from ..state import ticket_queue
from . import Blueprint

blp = Blueprint("agent_status", __name__, url_prefix="/api/agent/status", description="Presence")

PRESENCE = {"status": "away", "since": "2025-03-04T12:30:00+00:00"}


@blp.route("/", methods=["GET"], operation_id="getMyStatus")
@blp.response(200, PresenceSchema, example=PRESENCE)
@role_required("agent", load_user=False)
def get_status() -> dict[str, Any]:
    """Your presence, and since when."""
    status, since = presence.get_status(db.session, current_claims())
    return {"status": status, "since": since}


@blp.route("/", methods=["PUT"], operation_id="setMyStatus")
@role_required("agent", load_user=False)
@blp.arguments(StatusChangeSchema, example={"status": "away"})
@blp.response(200, PresenceSchema, example=PRESENCE)
def set_status(body: dict[str, str]) -> dict[str, Any]:
    """Set your presence: only online agents are handed tickets; away or offline, a
    fetch returns what you hold."""
    status, since = presence.set_status(db.session, current_claims(), body["status"])
    # A waiting fetch of the agent looks again: an agent now away is answered at once.
    notify.account_changed(ticket_queue(), current_claims().user_id)
    return {"status": status, "since": since}
