"""Webhooks, admin side: endpoints that want the ticket events, and what was sent to them.

A webhook is a URL, the event types it wants (all by default), a secret its
deliveries are signed with, and whether it is active. The workers fan every
event out to the active webhooks that want its type and send it
(service/domain/webhook_delivery.py).

The secret is shown once: in the answer to the request that set it (the
creation, or a PATCH that gives a new one or asks for one to be generated),
never in a list or a GET.

A URL is checked when it is saved (service/outbound.py): http or https, and a
host that resolves to public addresses only, unless WEBHOOK_ALLOW_PRIVATE is
set. The resolution happens before any transaction begins, so a slow DNS
server never holds a connection or a lock.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from .. import errors, outbound
from ..models import TicketEvent, Webhook, WebhookDelivery, utcnow
from . import DbSession
from .events import EVENT_TYPES, event_type
from .pagination import decode_cursor, encode_cursor
from .webhook_delivery import start_feed

SECRET_BYTES = 32  # a generated secret: 43 URL-safe characters


def new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def check_url(url: str, *, allow_private: bool) -> str:
    """``url`` if webhooks may be sent to it; else a 400 naming ``url``."""
    try:
        outbound.check(url, allow_private=allow_private)
    except outbound.Refused as exc:
        raise errors.ValidationFailed(f"url: {exc}", fields={"url": str(exc)}) from None
    return url


def _types(wanted: Sequence[str] | None) -> list[str]:
    """The event types, each once, in the order of ``EVENT_TYPES``."""
    chosen = set(EVENT_TYPES if wanted is None else wanted)
    return [t for t in EVENT_TYPES if t in chosen]


def view(webhook: Webhook, secret: str | None = None) -> dict[str, Any]:
    """A webhook as the API shows it: with ``secret`` only when it was just set."""
    shown: dict[str, Any] = {
        "id": webhook.id,
        "url": webhook.url,
        "events": _types(webhook.events),
        "active": webhook.active,
        "created_at": webhook.created_at,
        "updated_at": webhook.updated_at,
    }
    if secret is not None:
        shown["secret"] = secret
    return shown


def create_webhook(
    session: DbSession,
    *,
    url: str,
    events: Sequence[str] | None = None,
    secret: str | None = None,
    active: bool = True,
    allow_private: bool = False,
) -> dict[str, Any]:
    session.rollback()  # no transaction stays open while the name resolves
    check_url(url, allow_private=allow_private)
    secret = secret or new_secret()
    now = utcnow()
    webhook = Webhook(
        url=url,
        events=_types(events),
        secret=secret,
        active=active,
        created_at=now,
        updated_at=now,
    )
    session.add(webhook)
    # The fan-out starts from the newest event if it never ran: a webhook gets what
    # happens from its creation on, even before the workers' first pass.
    start_feed(session.connection())
    session.commit()
    return view(webhook, secret)


def list_webhooks(
    session: DbSession, *, limit: int = 50, cursor: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    query = select(Webhook).order_by(Webhook.id).limit(limit + 1)
    after = decode_cursor(cursor)
    if after is not None:
        query = query.where(Webhook.id > after)
    rows = list(session.scalars(query))
    next_cursor = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return [view(w) for w in rows[:limit]], next_cursor


def _get(session: DbSession, webhook_id: int, *, lock: bool = False) -> Webhook:
    webhook = session.get(Webhook, webhook_id, with_for_update=lock)
    if webhook is None:
        session.rollback()
        raise errors.NotFound(f"no webhook {webhook_id}")
    return webhook


def get_webhook(session: DbSession, webhook_id: int) -> dict[str, Any]:
    return view(_get(session, webhook_id))


def update_webhook(
    session: DbSession,
    webhook_id: int,
    changes: dict[str, Any],
    *,
    allow_private: bool = False,
) -> dict[str, Any]:
    """Change the URL, the event types, ``active`` or the secret (``secret``, or
    ``regenerate_secret: true`` for a generated one, shown in this answer only).

    Pending deliveries go to the URL, with the secret, current at each attempt.
    """
    if changes.get("secret") is not None and changes.get("regenerate_secret"):
        raise errors.ValidationFailed(
            "give a secret or ask for a new one, not both",
            fields={"secret": "give either secret or regenerate_secret"},
        )
    if "url" in changes:
        _get(session, webhook_id)  # a missing webhook is a 404 before the URL is looked at
        session.rollback()  # no transaction stays open while the name resolves
        check_url(changes["url"], allow_private=allow_private)
    webhook = _get(session, webhook_id, lock=True)
    secret = changes.get("secret") or (new_secret() if changes.get("regenerate_secret") else None)
    if "url" in changes:
        webhook.url = changes["url"]
    if "events" in changes:
        webhook.events = _types(changes["events"])
    if "active" in changes:
        webhook.active = changes["active"]
    if secret is not None:
        webhook.secret = secret
    webhook.updated_at = utcnow()
    session.commit()
    return view(webhook, secret)


def delete_webhook(session: DbSession, webhook_id: int) -> None:
    """Delete the webhook and its deliveries (pending ones are never sent)."""
    session.delete(_get(session, webhook_id, lock=True))
    session.commit()


@dataclass(frozen=True)
class DeliveryView:
    event_id: int
    type: str
    attempts: int
    status: str
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None


def list_deliveries(
    session: DbSession,
    webhook_id: int,
    *,
    status: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[DeliveryView], str | None]:
    """The webhook's deliveries, newest event first; ``cursor`` is the last event id
    of the page before."""
    _get(session, webhook_id)
    d = WebhookDelivery
    query = (
        select(
            d.event_id,
            TicketEvent.kind,
            d.attempts,
            d.status,
            d.last_status_code,
            d.last_error,
            d.next_attempt_at,
            d.delivered_at,
        )
        .join(TicketEvent, TicketEvent.id == d.event_id)
        .where(d.webhook_id == webhook_id)
        .order_by(d.event_id.desc())
        .limit(limit + 1)
    )
    before = decode_cursor(cursor)
    if before is not None:
        query = query.where(d.event_id < before)
    if status is not None:
        query = query.where(d.status == status)
    rows = session.execute(query).all()
    items = [
        DeliveryView(
            event_id=r.event_id,
            type=event_type(r.kind),
            attempts=r.attempts,
            status=r.status,
            last_status_code=r.last_status_code,
            last_error=r.last_error,
            next_attempt_at=r.next_attempt_at,
            delivered_at=r.delivered_at,
        )
        for r in rows[:limit]
    ]
    next_cursor = encode_cursor(items[-1].event_id) if len(rows) > limit else None
    return items, next_cursor


def oldest_pending(session: DbSession) -> dict[int, datetime | None]:
    """Per active webhook, when its oldest pending event happened (None: nothing
    pending): one probe of the pending index each."""
    d = WebhookDelivery
    oldest = (
        select(TicketEvent.at)
        .join(d, d.event_id == TicketEvent.id)
        .where(d.webhook_id == Webhook.id, d.status == "pending")
        .order_by(d.event_id)
        .limit(1)
        .correlate(Webhook)
        .scalar_subquery()
    )
    rows = session.execute(select(Webhook.id, oldest).where(Webhook.active.is_(True))).all()
    return {webhook_id: at for webhook_id, at in rows}
