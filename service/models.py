"""Typed SQLAlchemy models: PostgreSQL holds the truth, Redis only caches it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    SmallInteger,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from .extensions import db

ROLES = ("admin", "agent")
STATUSES = ("unassigned", "assigned", "sold")
EVENT_KINDS = ("created", "updated", "assigned", "sold", "released", "deleted")
# Best first: the order rule takes higher priority before older.
PRIORITIES = ("urgent", "high", "normal", "low")
DEFAULT_PRIORITY = "normal"
PRESENCE = ("online", "away", "offline")
GENERAL = "general"  # the queue that always exists


def priority_rank(name: str) -> int:
    """The stored form of a priority: 0 (urgent) .. 3 (low)."""
    return PRIORITIES.index(name)


# SQLite (embedded mode) only auto-increments INTEGER PRIMARY KEY columns.
BigId = BigInteger().with_variant(db.Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class User(db.Model):  # type: ignore[name-defined]
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint("role IN ('admin', 'agent')", name="ck_users_role"),
        CheckConstraint(
            "capacity IS NULL OR capacity BETWEEN 1 AND 1000", name="ck_users_capacity"
        ),
        CheckConstraint(
            "status IS NULL OR status IN ('online', 'away', 'offline')", name="ck_users_status"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64))
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    is_active: Mapped[bool] = mapped_column(default=True, server_default=text("true"))
    capacity: Mapped[int | None]
    # Bumped by a password change or a deactivation: tokens carry the version
    # they were issued under, and an older one no longer works.
    token_version: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Agents only: online, away or offline (only online agents are topped up).
    status: Mapped[str | None] = mapped_column(String(8))
    status_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The last request on an agent route, kept in Redis and written here lazily.
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Agents only: its queues (agent_queues), sorted and comma-separated, kept on
    # the row so the fetch reads them without a join (queues.set_agent_queues
    # writes both; the audit checks they agree).
    queue_names: Mapped[str | None] = mapped_column(Text)


# ADMIN1 and admin1 are one name: usernames are unique regardless of case.
Index("uq_users_username_lower", func.lower(User.username), unique=True)


class Queue(db.Model):  # type: ignore[name-defined]
    """A named queue of tickets (a team, a skill, a language); ``general`` always exists."""

    __tablename__ = "queues"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    description: Mapped[str] = mapped_column(String(500), default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now()
    )


class AgentQueue(db.Model):  # type: ignore[name-defined]
    """An agent takes work from the queues it belongs to."""

    __tablename__ = "agent_queues"
    __table_args__ = (Index("ix_agent_queues_queue", "queue", "agent_id"),)

    agent_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    queue: Mapped[str] = mapped_column(ForeignKey("queues.name"), primary_key=True)


class Ticket(db.Model):  # type: ignore[name-defined]
    """A ticket; its id gives creation order, and so queue order."""

    __tablename__ = "tickets"
    __table_args__ = (
        CheckConstraint("status IN ('unassigned', 'assigned', 'sold')", name="ck_tickets_status"),
        # An unassigned ticket has no holder; an assigned or sold one has one.
        CheckConstraint("(status = 'unassigned') = (agent_id IS NULL)", name="ck_tickets_holder"),
        CheckConstraint("priority BETWEEN 0 AND 3", name="ck_tickets_priority"),
        # The hot query: an agent's unsold tickets, in creation order.
        Index(
            "ix_tickets_agent_unsold",
            "agent_id",
            "id",
            postgresql_where=text("status = 'assigned'"),
            sqlite_where=text("status = 'assigned'"),
        ),
        # The relay's and rebuild's scan: unassigned tickets in id order.
        Index(
            "ix_tickets_unassigned",
            "id",
            postgresql_where=text("status = 'unassigned'"),
            sqlite_where=text("status = 'unassigned'"),
        ),
        # The admin filter by agent (any status).
        Index("ix_tickets_agent_id", "agent_id", "id"),
        # Each queue's unassigned tickets in the order rule's order: the rebuild's
        # and the audit's walk, a queue's depth and its oldest waiting ticket.
        Index(
            "ix_tickets_queue_order",
            "queue",
            "priority",
            "id",
            postgresql_where=text("status = 'unassigned'"),
            sqlite_where=text("status = 'unassigned'"),
        ),
        # The admin filter by queue.
        Index("ix_tickets_queue_id", "queue", "id"),
        # Ids are never reused, in SQLite (embedded mode) too.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="unassigned")
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    # No foreign key: sold tickets keep a deleted queue's name as history; a
    # ticket enters a queue only under a lock on the queue's row (domain/queues.py).
    queue: Mapped[str] = mapped_column(String(40), default=GENERAL)
    # 0 urgent, 1 high, 2 normal, 3 low (PRIORITIES).
    priority: Mapped[int] = mapped_column(SmallInteger, default=2)

    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    assigned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    sold_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class TicketEvent(db.Model):  # type: ignore[name-defined]
    """Append-only history: who had a ticket, and when.

    ``ticket_id`` carries no foreign key on purpose: the history of a deleted
    ticket outlives the ticket.
    """

    __tablename__ = "ticket_events"
    __table_args__ = (
        CheckConstraint(
            "kind IN ('created', 'updated', 'assigned', 'sold', 'released', 'deleted')",
            name="ck_ticket_events_kind",
        ),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(BigInteger, index=True)
    kind: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # The ticket's row as the change left it (before it, for a deletion).
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class RevokedSession(db.Model):  # type: ignore[name-defined]
    """The durable copy of the logged-out sessions; Redis holds the fast copy."""

    __tablename__ = "revoked_sessions"

    sid: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Once past, no token of the session can be valid any more.
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class QueueOutbox(db.Model):  # type: ignore[name-defined]
    """Tickets that became unassigned (inserted, or released), noted by a trigger in the
    same transaction; the relay drains it (service/domain/relay.py)."""

    __tablename__ = "queue_outbox"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(BigInteger)
    # Set when an unassigned ticket moved to another queue: the one it left.
    left_queue: Mapped[str | None] = mapped_column(String(40))


WEBHOOK_DELIVERY_STATUSES = ("pending", "delivered", "failed")


class Webhook(db.Model):  # type: ignore[name-defined]
    """An integration's endpoint, and the event types it wants."""

    __tablename__ = "webhooks"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(primary_key=True)
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[str]] = mapped_column(JSON)
    secret: Mapped[str] = mapped_column(String(256))
    active: Mapped[bool] = mapped_column(default=True, server_default=text("true"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # A sender's claim on the endpoint (service/domain/webhook_delivery.py): held by
    # the token until ``sender_until``; with no token, when it was last served.
    sender_token: Mapped[str | None] = mapped_column(String(32))
    sender_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookDelivery(db.Model):  # type: ignore[name-defined]
    """One event to send to one webhook, and how its attempts went."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint(
            "status IN ('pending', 'delivered', 'failed')", name="ck_webhook_deliveries_status"
        ),
        Index(
            "ix_webhook_deliveries_due",
            "webhook_id",
            "next_attempt_at",
            "event_id",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
        # An endpoint's oldest pending event, in one probe (the metrics gauge).
        Index(
            "ix_webhook_deliveries_pending",
            "webhook_id",
            "event_id",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
    )

    webhook_id: Mapped[int] = mapped_column(
        ForeignKey("webhooks.id", ondelete="CASCADE"), primary_key=True
    )
    event_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(String(500))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class FeedPosition(db.Model):  # type: ignore[name-defined]
    """How far a durable reader of the events has got (service/domain/feed.py)."""

    __tablename__ = "feed_positions"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    after: Mapped[int] = mapped_column(BigInteger)
    hole_newest: Mapped[int | None] = mapped_column(BigInteger)
