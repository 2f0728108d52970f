"""User rules: create, edit, deactivate; an agent's queues, capacity and presence."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from .. import errors, notify
from ..auth import hash_password
from ..models import GENERAL, Ticket, User, utcnow
from ..queue import TicketQueue
from . import DbSession
from .moves import release, requeue_best_effort
from .pagination import decode_cursor, page
from .queues import agent_queues, set_agent_queues

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UserView:
    """A user as the API shows it: an agent with its queues and presence."""

    id: int
    username: str
    role: str
    is_active: bool
    capacity: int | None
    queues: list[str] | None
    status: str | None
    created_at: datetime


def describe(session: DbSession, users: Sequence[User]) -> list[UserView]:
    """The users as the API shows them (their queues in one query)."""
    queues = agent_queues(session, [u.id for u in users if u.role == "agent"])
    return [
        UserView(
            id=u.id,
            username=u.username,
            role=u.role,
            is_active=u.is_active,
            capacity=u.capacity,
            queues=queues.get(u.id) if u.role == "agent" else None,
            status=(u.status or "online") if u.role == "agent" else None,
            created_at=u.created_at,
        )
        for u in users
    ]


def usernames(session: DbSession, ids: set[int]) -> dict[int, str]:
    """The usernames of the users ``ids`` (one query; none for no ids)."""
    if not ids:
        return {}
    rows = session.execute(select(User.id, User.username).where(User.id.in_(ids)))
    return {row.id: row.username for row in rows}


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
    queues: list[str] | None = None,
) -> User:
    """Create a user. Agents get a capacity (the default unless given), queues (general
    unless given) and a presence (online); admins none of these."""
    if role != "agent":
        for field, value in (("capacity", capacity), ("queues", queues)):
            if value is not None:
                raise _only_agents(field)
    elif capacity is None:
        capacity = default_capacity
    taken = select(User.id).where(func.lower(User.username) == username.lower())
    if session.scalar(taken) is not None:
        raise errors.Conflict(f"username {username!r} is taken", code="duplicate_username")
    now = utcnow()
    agent = role == "agent"
    user = User(
        username=username,
        password_hash=hash_password(password),
        role=role,
        capacity=capacity,
        is_active=True,
        created_at=now,
        status="online" if agent else None,
        status_since=now if agent else None,
    )
    session.add(user)
    try:
        session.flush()
        if agent:
            set_agent_queues(session, user.id, queues if queues is not None else [GENERAL])
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
    """Change the password, activity, and an agent's capacity, queues or presence.

    Deactivating an agent returns its unsold tickets to their queues, each at
    its place; lowering a capacity below what the agent holds returns the
    youngest excess tickets, so no agent ever holds more than its capacity.
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
    for field in ("capacity", "queues", "status"):
        if changes.get(field) is not None and user.role != "agent":
            session.rollback()
            raise _only_agents(field)
    if changes.get("is_active") is False and user.role == "admin" and user.is_active:
        _keep_an_admin(session, user, actor_id)
    if "password" in changes:
        user.password_hash = hash_password(changes["password"])
        user.token_version += 1  # every token issued before stops working
    if "is_active" in changes:
        if user.is_active and not changes["is_active"]:
            user.token_version += 1  # and reactivation will not bring them back
        user.is_active = bool(changes["is_active"])
    if changes.get("capacity") is not None:
        user.capacity = int(changes["capacity"])
    if changes.get("queues") is not None:
        set_agent_queues(session, user.id, changes["queues"])
    if changes.get("status") is not None and changes["status"] != user.status:
        user.status, user.status_since = changes["status"], utcnow()

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
        places = release(session, user.id, released, actor_id=actor_id)
    session.commit()
    if released:
        requeue_best_effort(queue, user.id, places)
    # Its event streams re-check the account, its waiting fetches look again.
    notify.account_changed(queue, user.id)
    return user


def _only_agents(field: str) -> errors.ValidationFailed:
    return errors.ValidationFailed(
        f"{field}: only agents have a {field}", fields={field: f"only agents have a {field}"}
    )


# Deactivations of admins take this transaction-level lock (PostgreSQL), so two
# admins deactivating each other at once are checked one after the other and
# cannot both succeed. (SQLite runs one write transaction at a time anyway.)
_ADMIN_ROSTER_LOCK = 0x7471_0001


def _keep_an_admin(session: DbSession, admin: User, actor_id: int) -> None:
    """Refuse to deactivate the acting admin itself, or the last active admin."""
    if admin.id == actor_id:
        session.rollback()
        raise errors.Conflict("an admin cannot deactivate itself", code="cannot_deactivate_self")
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(_ADMIN_ROSTER_LOCK)))
    others = session.scalar(
        select(func.count())
        .select_from(User)
        .where(User.role == "admin", User.is_active, User.id != admin.id)
    )
    if not others:
        session.rollback()
        raise errors.Conflict("the last active admin cannot be deactivated", code="last_admin")


def list_users(
    session: DbSession, *, limit: int = 50, cursor: str | None = None
) -> tuple[list[User], str | None]:
    query = select(User).order_by(User.id).limit(limit + 1)
    after = decode_cursor(cursor)
    if after is not None:
        query = query.where(User.id > after)
    return page(list(session.scalars(query)), limit)
