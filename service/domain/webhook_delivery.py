"""Webhook delivery: every committed event reaches every webhook that wants it, at least once.

**Fan-out.** One durable reader of the events (``feed_positions`` row
``webhooks``) reads them in id order, never skipping one still being committed
(service/domain/feed.py), and writes one ``webhook_deliveries`` row per
(event, active webhook that wants its type) in the transaction that moves the
position past those events. That transaction first locks the position's row
and checks that it is still where the read started: a crash before the commit
leaves both as they were (the next pass reads the same events again), and of
two fan-outs reading the same events only the first to commit counts. So each
event is fanned out exactly once. (The primary key (webhook, event) would
refuse a second row anyway.)

**Sending.** A delivery is due when it is pending and its ``next_attempt_at``
has come. A sender claims an endpoint (``webhooks.sender_token`` until
``sender_until``) before sending to it, renews the claim before every attempt,
and gives it back after a batch: one batch in flight per endpoint, across
processes, and a process that dies holding a claim loses it a lease later.
Each attempt re-reads the webhook (deactivated or deleted: stop) and the
delivery (still pending and due), POSTs the event signed with the current
secret (service/outbound.py: checked, pinned, bounded), then records the
outcome: delivered; or retried after ``retry_delay`` (exponential, with
jitter); or, after ``max_attempts``, failed.

A crash after a POST and before its outcome is recorded means that event is
sent again once the claim lapses: delivery is at least once, and receivers
de-duplicate by the event id (``X-TQ-Delivery``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import orjson
from sqlalchemy import Insert, bindparam, exists, or_, select, update
from sqlalchemy.engine import Connection, Engine

from .. import metrics, outbound
from ..models import FeedPosition, TicketEvent, Webhook, WebhookDelivery, utcnow
from ..schemas import EventMessageSchema
from . import events, feed
from .faults import fault_point

log = logging.getLogger(__name__)

# The durable reader of the events that fans them out.
FEED = "webhooks"
# Events read per fan-out transaction, and transactions per pass.
FANOUT_BATCH = 1_000
FANOUT_BATCHES_PER_PASS = 10
# Deliveries an endpoint's batch takes from the database at a time, and how
# long a batch goes on starting attempts before it gives the endpoint's slot
# back (so a busy endpoint does not keep a slot others wait for).
SEND_PAGE = 100
BATCH_SECONDS = 10.0
# A retry waits its nominal delay times a factor drawn from this range.
JITTER = (0.8, 1.2)

_MESSAGE = EventMessageSchema()


@dataclass(frozen=True)
class Settings:
    """The workers' webhook settings (workers/config.py)."""

    timeout: float = 5.0
    max_attempts: int = 12
    retry_base: float = 40.0
    retry_max: float = 86_400.0
    allow_private: bool = False

    @property
    def lease(self) -> float:
        """How long a claim on an endpoint lasts unrenewed. It is renewed right before
        each attempt, which takes at most ``timeout``: the rest is room for the
        statements around it. Also how long a dead sender's endpoints wait."""
        return self.timeout + 5.0


# -- the schedule -------------------------------------------------------------------
def retry_delay(failed: int, settings: Settings, factor: float | None = None) -> float:
    """Seconds to wait after the ``failed``-th failed attempt (1 for the first):
    ``retry_base × 2^(failed-1)``, at most ``retry_max``, times ``factor`` (by
    default drawn from ``JITTER``, so retries of many deliveries spread out)."""
    nominal = min(settings.retry_base * 2.0 ** min(failed - 1, 60), settings.retry_max)
    return nominal * (random.uniform(*JITTER) if factor is None else factor)


def schedule(settings: Settings) -> list[float]:
    """The nominal waits between the attempts of a delivery that always fails (one
    fewer than the attempts): with the defaults 40 s, 80 s, ... 11.4 h, 22.7 h in all."""
    return [retry_delay(n, settings, 1.0) for n in range(1, settings.max_attempts)]


# -- what is sent --------------------------------------------------------------------
def body(event: Any) -> bytes:
    """The JSON body of a delivery: the event as streams and webhooks send it."""
    return orjson.dumps(_MESSAGE.dump(events.message(event)))


def signature(secret: str, timestamp: int, raw: bytes) -> str:
    """``sha256=`` and the hex HMAC-SHA256 of ``"<timestamp>.<raw body>"`` keyed with
    the secret (UTF-8)."""
    signed = str(timestamp).encode() + b"." + raw
    return "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def headers(
    secret: str, event_id: int, event_type: str, raw: bytes, timestamp: int
) -> dict[str, str]:
    return {
        "X-TQ-Event": event_type,
        "X-TQ-Delivery": str(event_id),
        "X-TQ-Timestamp": str(timestamp),
        "X-TQ-Signature": signature(secret, timestamp, raw),
    }


# -- fan-out --------------------------------------------------------------------------
def insert_ignoring_conflicts(conn: Connection, table: Any) -> Insert:
    """``INSERT … ON CONFLICT DO NOTHING`` in the connection's dialect."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing()


def start_feed(conn: Connection) -> None:
    """Create the fan-out's position at the newest event, unless it exists: webhooks
    get the events from then on, not the history before them."""
    newest = conn.scalar(select(TicketEvent.id).order_by(TicketEvent.id.desc()).limit(1))
    conn.execute(
        insert_ignoring_conflicts(conn, FeedPosition.__table__),
        {"name": FEED, "after": int(newest or 0), "hole_newest": None},
    )


_EVENTS = (
    select(TicketEvent.id, TicketEvent.kind)
    .where(TicketEvent.id > bindparam("after"))
    .order_by(TicketEvent.id)
)


@dataclass
class FanOut:
    """What a fan-out pass did."""

    events: int = 0
    deliveries: int = 0


def fan_out(
    engine: Engine, *, batch: int = FANOUT_BATCH, batches: int = FANOUT_BATCHES_PER_PASS
) -> FanOut:
    """Fan out the events after the position, ``batch`` at a time, until caught up
    (or ``batches`` transactions)."""
    done = FanOut()
    for _ in range(batches):
        read, written, full = _fan_out_batch(engine, batch)
        done.events += read
        done.deliveries += written
        if not full:
            break
    if done.events:
        log.debug(
            "webhooks: fanned out %d event(s) as %d delivery(ies)", done.events, done.deliveries
        )
    return done


def _position(conn: Connection, *, lock: bool = False) -> feed.Position | None:
    query = select(FeedPosition.after, FeedPosition.hole_newest).where(FeedPosition.name == FEED)
    row = conn.execute(query.with_for_update() if lock else query).first()
    return None if row is None else feed.Position(int(row.after), row.hole_newest)


def _fan_out_batch(engine: Engine, batch: int) -> tuple[int, int, bool]:
    """One read and one write transaction: (events read, deliveries written, whether
    the read was a full batch)."""
    with engine.connect() as conn:
        position = _position(conn)
        if position is None:
            start_feed(conn)
            conn.commit()
            return 0, 0, False
    # The read, on a connection of its own: one repeatable-read snapshot, stopping
    # at a gap a transaction in flight may still fill.
    with engine.connect() as conn:
        rows, after = feed.read(conn, _EVENTS.limit(batch), position)
    if after == position:
        return 0, 0, False
    with engine.begin() as conn:
        # The write counts only from where the read started.
        if _position(conn, lock=True) != position:
            log.debug("webhooks: another process fanned these events out first; skipping them")
            return 0, 0, False
        hooks = conn.execute(select(Webhook.id, Webhook.events).where(Webhook.active.is_(True)))
        wanted = [(hook.id, set(hook.events)) for hook in hooks]
        now = utcnow()
        deliveries = [
            {
                "webhook_id": hook_id,
                "event_id": row.id,
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
            for row in rows
            for hook_id, types in wanted
            if events.event_type(row.kind) in types
        ]
        if deliveries:
            conn.execute(insert_ignoring_conflicts(conn, WebhookDelivery.__table__), deliveries)
        fault_point("webhooks.before_fanout_commit")
        conn.execute(
            update(FeedPosition)
            .where(FeedPosition.name == FEED)
            .values(after=after.after, hole_newest=after.hole_newest)
        )
    return len(rows), len(deliveries), len(rows) == batch


# -- sending --------------------------------------------------------------------------
def due_webhooks(engine: Engine, *, exclude: list[int], limit: int) -> list[int]:
    """Active endpoints with a due delivery that no sender holds, least recently
    served first."""
    now = utcnow()
    d = WebhookDelivery
    due = exists().where(
        d.webhook_id == Webhook.id, d.status == "pending", d.next_attempt_at <= now
    )
    query = (
        select(Webhook.id)
        .where(
            Webhook.active.is_(True),
            or_(Webhook.sender_token.is_(None), Webhook.sender_until < now),
            due,
        )
        .order_by(Webhook.sender_until.asc().nulls_first(), Webhook.id)
        .limit(limit)
    )
    if exclude:
        query = query.where(Webhook.id.not_in(exclude))
    with engine.connect() as conn:
        return list(conn.scalars(query))


def claim(engine: Engine, webhook_id: int, settings: Settings) -> str | None:
    """Take the endpoint for one batch: a token, or None if a sender holds it or it
    is inactive or gone."""
    token = uuid.uuid4().hex
    now = utcnow()
    with engine.begin() as conn:
        claimed = conn.execute(
            update(Webhook)
            .where(
                Webhook.id == webhook_id,
                Webhook.active.is_(True),
                or_(Webhook.sender_token.is_(None), Webhook.sender_until < now),
            )
            .values(sender_token=token, sender_until=now + timedelta(seconds=settings.lease))
        ).rowcount
    return token if claimed == 1 else None


def release(engine: Engine, webhook_id: int, token: str) -> None:
    """Give the endpoint back; ``sender_until`` then says when it was last served."""
    with engine.begin() as conn:
        conn.execute(
            update(Webhook)
            .where(Webhook.id == webhook_id, Webhook.sender_token == token)
            .values(sender_token=None, sender_until=utcnow())
        )


@dataclass
class Sent:
    """What a batch did: outcomes by name, and the last error seen."""

    outcomes: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None
    lost_claim: bool = False

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


_ATTEMPT = (
    select(
        Webhook.url,
        Webhook.secret,
        WebhookDelivery.attempts,
        TicketEvent.id,
        TicketEvent.kind,
        TicketEvent.at,
        TicketEvent.data,
        TicketEvent.actor_id,
        TicketEvent.agent_id,
    )
    .select_from(WebhookDelivery)
    .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
    .join(TicketEvent, TicketEvent.id == WebhookDelivery.event_id)
    .where(
        WebhookDelivery.webhook_id == bindparam("webhook_id"),
        WebhookDelivery.event_id == bindparam("event_id"),
        WebhookDelivery.status == "pending",
        WebhookDelivery.next_attempt_at <= bindparam("now"),
    )
)


def send_batch(
    engine: Engine,
    webhook_id: int,
    token: str,
    settings: Settings,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    post: Callable[..., outbound.Answer] = outbound.post,
) -> Sent:
    """Send the endpoint's due deliveries, oldest due first, one at a time, while the
    claim holds, for up to ``BATCH_SECONDS``; then give the endpoint back."""
    sent = Sent()
    started = time.monotonic()
    try:
        while not should_stop() and time.monotonic() - started < BATCH_SECONDS:
            now = utcnow()
            d = WebhookDelivery
            with engine.connect() as conn:
                page = list(
                    conn.scalars(
                        select(d.event_id)
                        .where(d.webhook_id == webhook_id, d.status == "pending")
                        .where(d.next_attempt_at <= now)
                        .order_by(d.next_attempt_at, d.event_id)
                        .limit(SEND_PAGE)
                    )
                )
            if not page:
                break
            for event_id in page:
                if should_stop() or time.monotonic() - started >= BATCH_SECONDS:
                    break
                if not _attempt(engine, webhook_id, event_id, token, settings, sent, post):
                    sent.lost_claim = True
                    return sent
    finally:
        release(engine, webhook_id, token)
    return sent


def _attempt(
    engine: Engine,
    webhook_id: int,
    event_id: int,
    token: str,
    settings: Settings,
    sent: Sent,
    post: Callable[..., outbound.Answer],
) -> bool:
    """One attempt of one delivery; False if the claim is lost (the webhook was
    deactivated or deleted, or the claim lapsed and another sender took it)."""
    now = utcnow()
    with engine.begin() as conn:
        renewed = conn.execute(
            update(Webhook)
            .where(
                Webhook.id == webhook_id,
                Webhook.sender_token == token,
                Webhook.active.is_(True),
            )
            .values(sender_until=now + timedelta(seconds=settings.lease))
        ).rowcount
        if renewed != 1:
            return False
        row = conn.execute(
            _ATTEMPT, {"webhook_id": webhook_id, "event_id": event_id, "now": now}
        ).first()
    if row is None:
        return True  # delivered, failed or rescheduled meanwhile
    raw = body(row)
    answer = post(
        row.url,
        raw,
        headers(row.secret, row.id, events.event_type(row.kind), raw, int(time.time())),
        timeout=settings.timeout,
        allow_private=settings.allow_private,
    )
    fault_point("webhooks.after_send")
    outcome = _record(engine, webhook_id, event_id, row.attempts, answer, settings)
    if outcome is not None:
        sent.count(outcome)
        metrics.webhook_delivery(outcome)
        if answer.error is not None:
            sent.last_error = answer.error
    return True


def _record(
    engine: Engine,
    webhook_id: int,
    event_id: int,
    attempts_before: int,
    answer: outbound.Answer,
    settings: Settings,
) -> str | None:
    """Write how the attempt went; the outcome (``delivered``, ``retried``,
    ``failed``), or None if another sender recorded one first."""
    attempts = attempts_before + 1
    now = utcnow()
    values: Mapping[str, Any]
    if answer.delivered:
        outcome = "delivered"
        values = {"status": "delivered", "delivered_at": now, "next_attempt_at": None}
    elif attempts >= settings.max_attempts:
        outcome = "failed"
        values = {"status": "failed", "next_attempt_at": None}
    else:
        outcome = "retried"
        delay = retry_delay(attempts, settings)
        values = {"next_attempt_at": now + timedelta(seconds=delay)}
    d = WebhookDelivery
    with engine.begin() as conn:
        recorded = conn.execute(
            update(d)
            .where(
                d.webhook_id == webhook_id,
                d.event_id == event_id,
                d.status == "pending",
                d.attempts == attempts_before,
            )
            .values(
                attempts=attempts,
                last_status_code=answer.status,
                last_error=None if answer.error is None else answer.error[:500],
                **values,
            )
        ).rowcount
    return outcome if recorded == 1 else None
