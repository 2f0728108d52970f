"""Event streams (server-sent events): an agent's tickets' events, or all of them."""

from __future__ import annotations

import re
from collections.abc import Callable

from flask import Response, current_app, request

from .. import errors
from ..auth import Claims, current_claims, role_required
from ..extensions import db
from ..live import Live
from ..schemas import ErrorSchema
from . import RETRY_AFTER, Blueprint

blp = Blueprint("events", __name__, description="Event streams")

LAST_EVENT_ID = "Last-Event-ID"
_EVENT_ID = re.compile(r"[0-9]{1,19}")
MAX_EVENT_ID = 2**63 - 1

STREAM_DESCRIPTION = (
    "A `text/event-stream` that stays open. Each message has `id:` (the event id; ids"
    " only grow), `event:` (`ticket.created`, `ticket.updated`, `ticket.assigned`,"
    " `ticket.sold`, `ticket.released`, `ticket.deleted`) and one `data:` line: the event"
    " as compact JSON, the webhook body: `id`, `type`, `at`, `ticket` (the ticket as the"
    " change left it; for a deletion, as it was), `actor_id`, `agent_id`. Lines"
    " starting with `:` are keep-alive comments. Reconnect with `Last-Event-ID` to get"
    " every event after that id first: a dropped connection loses nothing. The stream"
    " ends when the token expires, the session logs out, or the account is deactivated"
    " or changes its password."
)
EXAMPLE = (
    "retry: 1000\n\n"
    "id: 1042\nevent: ticket.assigned\n"
    'data: {"id":1042,"type":"ticket.assigned","at":"2025-03-04T09:31:00+00:00",'
    '"ticket":{"id":42,"title":"Printer on fire","description":"Third floor, by the'
    ' kitchen.","queue":"general","priority":"urgent","status":"assigned","agent_id":7,'
    '"created_at":"2025-03-04T09:20:00+00:00","updated_at":"2025-03-04T09:31:00+00:00",'
    '"assigned_at":"2025-03-04T09:31:00+00:00","sold_at":null},"actor_id":7,"agent_id":7}'
    "\n\n: keep-alive\n\n"
)
RESUME = [
    {
        "in": "header",
        "name": LAST_EVENT_ID,
        "required": False,
        "description": "Resume after this event id: every later event is sent first",
        "schema": {"type": "string", "pattern": f"^{_EVENT_ID.pattern}$"},
    }
]


def _documented(view: Callable[..., Response]) -> Callable[..., Response]:
    """The stream's answers: 200 text/event-stream, 429 past the limits. The
    messages' data is the webhook body (schemas.EventMessageSchema); a stream has
    no JSON schema of its own, so the description and the example show it."""
    view = blp.alt_response(
        429,
        schema=ErrorSchema,
        description="Too many streams open, of this user or in all",
        headers=RETRY_AFTER,
    )(view)
    view = blp.response(
        200,
        {"type": "string"},
        content_type="text/event-stream",
        description=STREAM_DESCRIPTION,
        example=EXAMPLE,
    )(view)
    return view


def _last_event_id() -> int | None:
    raw = request.headers.get(LAST_EVENT_ID, "").strip()
    if not raw:
        return None
    if not _EVENT_ID.fullmatch(raw) or int(raw) > MAX_EVENT_ID:
        raise errors.ValidationFailed(
            f"{LAST_EVENT_ID} must be an event id (digits)",
            fields={LAST_EVENT_ID: "must be an event id (digits)"},
        )
    return int(raw)


def _stream(claims: Claims, agent: int | None) -> Response:
    last = _last_event_id()
    db.session.rollback()  # the account check's connection goes back before the stream
    live: Live = current_app.extensions["live"]
    hub = live.hub()
    place = hub.slots.take("stream", claims.user_id)  # 429 past the limits
    try:
        stream = hub.open_stream(claims, agent, last)
    except BaseException:
        hub.slots.free(place)
        raise
    body = hub.stream_body(stream, place, request.environ)
    response = Response(body, mimetype="text/event-stream")
    # Proxies must pass each message on as it comes, not buffer the answer.
    response.headers["X-Accel-Buffering"] = "no"
    return response


@blp.route("/api/agent/events/", methods=["GET"], operation_id="streamMyEvents", parameters=RESUME)
@_documented
@role_required("agent", cookie=True)
def agent_events() -> Response:
    """Server-sent events of the tickets you hold or held: those whose `agent_id` is
    you (assigned, updated, sold, released, deleted while yours)."""
    return _stream(current_claims(), current_claims().user_id)


@blp.route("/api/admin/events/", methods=["GET"], operation_id="streamEvents", parameters=RESUME)
@_documented
@role_required("admin", cookie=True)
def admin_events() -> Response:
    """Server-sent events of every ticket: created, updated, assigned, sold, released,
    deleted, in id order."""
    return _stream(current_claims(), None)
