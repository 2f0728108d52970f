"""Typed SQLAlchemy models: PostgreSQL holds the truth, Redis only caches it."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from .extensions import db

ROLES = ("admin", "agent")
STATUSES = ("unassigned", "assigned", "sold")
EVENT_KINDS = ("created", "assigned", "sold", "released", "deleted")

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


# ADMIN1 and admin1 are one name: usernames are unique regardless of case.
Index("uq_users_username_lower", func.lower(User.username), unique=True)


class Ticket(db.Model):  # type: ignore[name-defined]
    """A ticket; its id gives creation order, and so queue order."""

    __tablename__ = "tickets"
    __table_args__ = (
        CheckConstraint("status IN ('unassigned', 'assigned', 'sold')", name="ck_tickets_status"),
        # An unassigned ticket has no holder; an assigned or sold one has one.
        CheckConstraint("(status = 'unassigned') = (agent_id IS NULL)", name="ck_tickets_holder"),
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
        # Ids are never reused, in SQLite (embedded mode) too.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="unassigned")
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
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
            "kind IN ('created', 'assigned', 'sold', 'released', 'deleted')",
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
