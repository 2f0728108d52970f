"""Webhooks, admin only: where the ticket events are sent, and how the sending went."""

from __future__ import annotations

from typing import Any

from flask import current_app

from ..auth import role_required
from ..domain import webhooks
from ..extensions import db
from ..schemas import (
    EventMessageSchema,
    WebhookCreateSchema,
    WebhookDeliveryPageSchema,
    WebhookDeliveryQuerySchema,
    WebhookPageSchema,
    WebhookPatchSchema,
    WebhookQuerySchema,
    WebhookSchema,
    WebhookWithSecretSchema,
)
from . import Blueprint, link

blp = Blueprint(
    "admin_webhooks", __name__, url_prefix="/api/admin/webhooks", description="Webhooks (admin)"
)

WEBHOOK_ID = "<id(max=2147483647):webhook_id>"
NEW_WEBHOOK = {
    "url": "https://hooks.example.com/tickets",
    "events": ["ticket.created", "ticket.assigned", "ticket.sold"],
}
WEBHOOK = {
    "id": 3,
    **NEW_WEBHOOK,
    "active": True,
    "created_at": "2025-03-04T09:00:00+00:00",
    "updated_at": "2025-03-04T09:00:00+00:00",
}
CREATED = {**WEBHOOK, "secret": "4q0wB1d7x0mZ0t9sVYq5sX0c3kC3S3u6iQmQG6x7b2E"}
DELIVERIES = {
    "items": [
        {
            "event_id": 1207,
            "type": "ticket.assigned",
            "attempts": 2,
            "status": "pending",
            "last_status_code": 503,
            "last_error": "answered 503: upstream unavailable",
            "next_attempt_at": "2025-03-04T09:21:20+00:00",
            "delivered_at": None,
        },
        {
            "event_id": 1206,
            "type": "ticket.created",
            "attempts": 1,
            "status": "delivered",
            "last_status_code": 204,
            "last_error": None,
            "next_attempt_at": None,
            "delivered_at": "2025-03-04T09:20:01+00:00",
        },
    ],
    "next_cursor": "1206",
}
_THE_WEBHOOK = "$response.body#/id"
_SIGNATURE = (
    "sha256= and the hex HMAC-SHA256 of `<X-TQ-Timestamp>.<raw body>`, keyed with the secret"
)
# How a delivery looks to the receiver, documented as a callback of the creation.
DELIVERY_CALLBACK = {
    "event": {
        "{$request.body#/url}": {
            "post": {
                "summary": "A ticket event, POSTed to the webhook's URL",
                "description": "Sent at least once: the receiver de-duplicates by the event id"
                " and answers 2xx within WEBHOOK_TIMEOUT_SECONDS; anything else is retried"
                " with exponential backoff. Redirects are not followed.",
                "parameters": [
                    {
                        "name": name,
                        "in": "header",
                        "required": True,
                        "description": description,
                        "schema": schema,
                    }
                    for name, description, schema in (
                        ("X-TQ-Event", "The event's type", {"type": "string"}),
                        ("X-TQ-Delivery", "The event id", {"type": "string"}),
                        ("X-TQ-Timestamp", "Unix seconds of this attempt", {"type": "string"}),
                        ("X-TQ-Signature", _SIGNATURE, {"type": "string"}),
                    )
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": EventMessageSchema}},
                },
                "responses": {
                    "2XX": {"description": "Delivered"},
                    "default": {"description": "Not delivered: retried later"},
                },
            }
        }
    }
}


def _allow_private() -> bool:
    return bool(current_app.config["WEBHOOK_ALLOW_PRIVATE"])


# role_required sits above @blp.arguments: the token is checked before the body.
@blp.route("/", methods=["POST"])
@blp.links(
    201,
    getWebhook=link("getWebhook", "The new webhook", webhook_id=_THE_WEBHOOK),
    updateWebhook=link("updateWebhook", "Change or pause it", webhook_id=_THE_WEBHOOK),
    listWebhookDeliveries=link("listWebhookDeliveries", "What was sent", webhook_id=_THE_WEBHOOK),
    deleteWebhook=link("deleteWebhook", "Delete it", webhook_id=_THE_WEBHOOK),
)
@blp.doc(callbacks=DELIVERY_CALLBACK)
@role_required("admin")
@blp.arguments(WebhookCreateSchema, example=NEW_WEBHOOK)
@blp.response(201, WebhookWithSecretSchema, example=CREATED)
def create_webhook(body: dict[str, Any]) -> dict[str, Any]:
    """Send ticket events to a URL.

    Every event of the chosen types (all by default) that commits from now on is
    POSTed to it, at least once, signed with the secret: given, or generated when
    left out, and shown in this answer only. A URL whose host does not resolve, or
    resolves to a loopback, private, link-local or other non-public address, is a 400
    naming `url` (unless the server allows private addresses)."""
    return webhooks.create_webhook(db.session, **body, allow_private=_allow_private())


@blp.route("/", methods=["GET"])
@role_required("admin")
@blp.arguments(WebhookQuerySchema, location="query")
@blp.response(200, WebhookPageSchema)
def list_webhooks(query: dict[str, Any]) -> dict[str, Any]:
    """Every webhook, in creation order (never its secret)."""
    items, next_cursor = webhooks.list_webhooks(db.session, **query)
    return {"items": items, "next_cursor": next_cursor}


@blp.route(f"/{WEBHOOK_ID}/", methods=["GET"])
@blp.response(200, WebhookSchema, example=WEBHOOK)
@role_required("admin")
def get_webhook(webhook_id: int) -> dict[str, Any]:
    """Show one webhook (never its secret)."""
    return webhooks.get_webhook(db.session, webhook_id)


@blp.route(f"/{WEBHOOK_ID}/", methods=["PATCH"])
@role_required("admin")
@blp.arguments(WebhookPatchSchema, example={"active": False})
@blp.response(200, WebhookWithSecretSchema)
def update_webhook(body: dict[str, Any], webhook_id: int) -> dict[str, Any]:
    """Change the URL, the event types or the secret; pause or resume it.

    A new secret (given, or `regenerate_secret: true` for a generated one) is shown in
    this answer only. Pending deliveries go to the URL, with the secret, current at
    each attempt; while the webhook is paused (`active: false`) they wait, and events
    of that time are not sent to it. A URL whose host does not resolve, or resolves to
    a non-public address, is a 400 naming `url`; so are a secret and
    `regenerate_secret` together."""
    return webhooks.update_webhook(db.session, webhook_id, body, allow_private=_allow_private())


@blp.route(f"/{WEBHOOK_ID}/", methods=["DELETE"])
@blp.response(204)
@role_required("admin")
def delete_webhook(webhook_id: int) -> None:
    """Delete a webhook and its deliveries: nothing more is sent to it."""
    webhooks.delete_webhook(db.session, webhook_id)


@blp.route(f"/{WEBHOOK_ID}/deliveries/", methods=["GET"])
@role_required("admin")
@blp.arguments(WebhookDeliveryQuerySchema, location="query")
@blp.response(200, WebhookDeliveryPageSchema, example=DELIVERIES)
def list_webhook_deliveries(query: dict[str, Any], webhook_id: int) -> dict[str, Any]:
    """The webhook's deliveries, newest event first.

    Each with its attempts, status, the last answer or error, and when the next
    attempt is due."""
    items, next_cursor = webhooks.list_deliveries(db.session, webhook_id, **query)
    return {"items": items, "next_cursor": next_cursor}
