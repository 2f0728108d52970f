"""User rules: create, edit, deactivate; releasing an agent's tickets."""

from __future__ import annotations

import logging
from typing import Any

import redis.exceptions
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from .. import errors
from ..auth import hash_password
from ..models import Ticket, User, utcnow
from ..queue import TicketQueue
from . import DbSession, events
from .pagination import decode_cursor, page

log = logging.getLogger(__name__)


def get_user(session: DbSession, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise errors.NotFound(f"no user {user_id}")
    return user


def create_user(
    session: DbSession,
    *,
    username: str,
    password: str,
    role: str,
    capacity: int | None,
    default_capacity: int,
) -> User:
    """Create a user. Agents get a capacity (the default unless given); admins none."""
    if role != "agent":
        capacity = None
    elif capacity is None:
        capacity = default_capacity
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise errors.Conflict(f"username {username!r} is taken", code="duplicate_username")
    user = User(
        username=username,
        password_hash=hash_password(password),
        role=role,
        capacity=capacity,
        is_active=True,
        created_at=utcnow(),
    )
    session.add(user)
    try:
        session.commit()
    except IntegrityError:
        # Two admins raced for the same name; the unique index decided.
        session.rollback()
        raise errors.Conflict(
            f"username {username!r} is taken", code="duplicate_username"
        ) from None
    return user


def update_user(
    session: DbSession, queue: TicketQueue, user_id: int, changes: dict[str, Any], *, actor_id: int
) -> User:
    """Change password, activity or capacity.

    Deactivating an agent returns its unsold tickets to the queue in creation
    order; lowering a capacity below what the agent holds returns the youngest
    excess tickets, so no agent ever holds more than its capacity (I2).
    """
    # Lock the row: the same lock assignment's confirm takes, so a release
    # and a concurrent fetch by the agent cannot interleave. FOR NO KEY UPDATE
    # lets a sale in progress (it holds a ticket row the release needs) pass
    # its foreign-key check on this row instead of deadlocking with us.
    user = session.scalars(
        select(User).where(User.id == user_id).with_for_update(key_share=True)
    ).one_or_none()
    if user is None:
        session.rollback()
        raise errors.NotFound(f"no user {user_id}")
    if "capacity" in changes and changes["capacity"] is not None and user.role != "agent":
        session.rollback()
        raise errors.ValidationFailed(
            "capacity: only agents have a capacity",
            fields={"capacity": "only agents have a capacity"},
        )
    if "password" in changes:
        user.password_hash = hash_password(changes["password"])
    if "is_active" in changes:
        user.is_active = bool(changes["is_active"])
    if changes.get("capacity") is not None:
        user.capacity = int(changes["capacity"])

    released: list[int] = []
    if user.role == "agent":
        held = list(
            session.scalars(
                select(Ticket.id)
                .where(Ticket.agent_id == user.id, Ticket.status == "assigned")
                .order_by(Ticket.id)
            )
        )
        if not user.is_active:
            released = held
        elif user.capacity is not None and len(held) > user.capacity:
            released = held[user.capacity :]  # the youngest go back
        release(session, user.id, released, actor_id=actor_id)
    session.commit()
    if released:
        requeue_best_effort(queue, user.id, released)
    return user


def release(session: DbSession, agent_id: int, ticket_ids: list[int], *, actor_id: int) -> None:
    """Return held tickets to the pool in PostgreSQL (the caller commits)."""
    if not ticket_ids:
        return
    now = utcnow()
    session.execute(
        update(Ticket)
        .where(Ticket.id.in_(ticket_ids), Ticket.agent_id == agent_id, Ticket.status == "assigned")
        .values(status="unassigned", agent_id=None, assigned_at=None, updated_at=now)
    )
    events.record(session, "released", ticket_ids, actor_id=actor_id, agent_id=agent_id, at=now)


def requeue_best_effort(queue: TicketQueue, agent_id: int, ticket_ids: list[int]) -> None:
    """Put released tickets back in the queue; if Redis is down, the relay does it."""
    try:
        queue.forget_held(agent_id, ticket_ids)
        queue.enqueue(ticket_ids)
    except redis.exceptions.RedisError as exc:
        log.warning("released tickets of agent %s not requeued (%s); the relay will", agent_id, exc)


def list_users(
    session: DbSession, *, limit: int = 50, cursor: str | None = None
) -> tuple[list[User], str | None]:
    query = select(User).order_by(User.id).limit(limit + 1)
    after = decode_cursor(cursor)
    if after is not None:
        query = query.where(User.id > after)
    return page(list(session.scalars(query)), limit)
