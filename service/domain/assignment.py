"""Assignment: top an agent up to its capacity, oldest tickets first; sell.

The path (docs/design.md, "The assignment path"):

0. One SELECT (in autocommit) reads the agent's account and unsold tickets.
   A full agent is answered from it: the fast path.
1. ``reserve.lua`` brings the agent's ``held`` set in line with that list
   (clearing the reservations an earlier fetch confirmed), counts the slots
   in use, and pops that many free slots from the queue head, atomically,
   recording each id as reserved.
2. One PostgreSQL transaction confirms under the agent's row lock. PostgreSQL,
   not Redis, enforces I1 and I2: even if Redis handed out a wrong id, the
   guarded UPDATE cannot give a ticket to two agents or over-fill one.
3. Only ids PostgreSQL refused need Redis again (``settle.lua`` gives them
   back); confirmed ids keep their reservation until the next reserve call.
   If the agent is still short and the queue is not empty, repeat (bounded).
4. The answer is PostgreSQL's list of the agent's unsold tickets, read under
   the lock, plus what the transaction assigned.

So a top-up is one SELECT, one Lua call and one short transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.exceptions
from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import SQLAlchemyError

from .. import errors, metrics
from ..auth import Claims, ensure_current
from ..database import autocommit, single_write
from ..models import Ticket, User, utcnow
from ..queue import Placement, TicketQueue
from . import DbSession, events
from .faults import fault_point
from .queues import split_names
from .ticket_state import placement, ticket_states

log = logging.getLogger(__name__)

# One fetch makes at most MAX_ROUNDS reserve/confirm rounds that assign or
# refuse something. A round falls short when ids vanished (deleted, or taken:
# a queue restored from an old snapshot is full of them); such a round only
# clears junk from the queue head, so it does not count, up to MAX_POPS
# reserve calls in all. The next fetch continues where this one stopped.
MAX_ROUNDS = 4
MAX_POPS = 16


@dataclass(frozen=True)
class Holding:
    """An agent's unsold tickets (creation order, rows of the tickets table), its
    capacity, and what decides whether it is topped up: its presence and queues."""

    tickets: Sequence[Any]
    capacity: int
    status: str = "online"
    queues: tuple[str, ...] = ()
    assigned: int = 0  # of ``tickets``, how many the fetch that returned this assigned
    queue_left: int = 0  # tickets left in the agent's queues after the fetch's last pop

    @property
    def takes_work(self) -> bool:
        """Online, with room, and in at least one queue."""
        return self.status == "online" and len(self.tickets) < self.capacity and bool(self.queues)


@dataclass(frozen=True)
class Confirmation:
    confirmed: list[int]
    returned: list[Placement]  # still unassigned (refused for capacity): back to their places
    vanished: list[int]  # deleted, or taken by someone else
    tickets: Sequence[Any]  # the agent's unsold tickets after the commit (rows)


# The fast path's one SELECT, in Core over the tables: the agent's row (with its
# queues' names on it: no join to plan) and its unsold tickets. Rows, not ORM
# objects: building and tracking 15 objects per request cost more CPU than the
# query itself.
_users = User.__table__
_tickets = Ticket.__table__
_HOLDING = (
    select(
        _users.c.is_active,
        _users.c.role,
        _users.c.token_version,
        _users.c.capacity,
        _users.c.status.label("agent_status"),
        _users.c.queue_names,
        *_tickets.c,
    )
    .select_from(
        _users.outerjoin(
            _tickets, (_tickets.c.agent_id == _users.c.id) & (_tickets.c.status == "assigned")
        )
    )
    .where(_users.c.id == bindparam("agent_id"))
    .order_by(_tickets.c.id)
)


def holding(session: DbSession, caller: Claims) -> Holding:
    """The agent's unsold tickets, with its account checked, in one SELECT.

    The SELECT runs alone, in autocommit, on a connection of its own (not the
    session's): one round trip, with no BEGIN before it and no ROLLBACK after.
    The account check (active, the token's version and role) reads the same row.
    """
    with session.get_bind().engine.connect() as conn, autocommit(conn):
        rows = conn.execute(_HOLDING, {"agent_id": caller.user_id}).all()
    ensure_current(rows[0] if rows else None, caller)
    agent = rows[0]
    if agent.role != "agent" or agent.capacity is None:
        raise errors.Forbidden("only agents hold tickets")
    return Holding(
        [row for row in rows if row.id is not None],
        agent.capacity,
        agent.agent_status or "online",
        split_names(agent.queue_names),
    )


_UNSOLD = (
    select(*_tickets.c)
    .where(_tickets.c.agent_id == bindparam("agent_id"), _tickets.c.status == "assigned")
    .order_by(_tickets.c.id)
)
# Lock the agent's row so its concurrent fetches confirm one at a time; the
# list read next then sees every ticket they committed. FOR NO KEY UPDATE: a
# sale, which holds its ticket's row, must still pass the foreign-key check on
# this row when it writes its event, or the two deadlock.
_LOCK_AGENT = (
    select(_users.c.capacity, _users.c.is_active)
    .where(_users.c.id == bindparam("agent_id"))
    .with_for_update(key_share=True)
)


# The guarded UPDATE: of the reserved ids, those still unassigned, oldest
# first, at most the agent's room. Their row locks make a double assignment
# impossible, whatever Redis handed out.
_ASSIGN = (
    update(_tickets)
    .where(
        _tickets.c.id.in_(
            select(_tickets.c.id)
            .where(
                _tickets.c.id.in_(bindparam("ids", expanding=True)),
                _tickets.c.status == "unassigned",
                # Routing holds here too: a ticket moved out of the agent's
                # queues since it was popped is refused, whatever Redis said.
                _tickets.c.queue.in_(bindparam("queues", expanding=True)),
            )
            .order_by(_tickets.c.priority, _tickets.c.id)
            .limit(bindparam("room"))
            .with_for_update()
            .scalar_subquery()
        )
    )
    .values(
        status="assigned",
        agent_id=bindparam("agent_id"),
        assigned_at=bindparam("now"),
        updated_at=bindparam("now"),
    )
    .returning(*_tickets.c)
)
# With its events: one statement on PostgreSQL.
_ASSIGN_LOGGED = events.LoggedChange(
    "assigned", _ASSIGN, actor="agent_id", agent="agent_id", at="now"
)
_STILL_UNASSIGNED = select(_tickets.c.id, _tickets.c.queue, _tickets.c.priority).where(
    _tickets.c.id.in_(bindparam("ids", expanding=True)), _tickets.c.status == "unassigned"
)


def confirm(
    session: DbSession, agent_id: int, ids: Sequence[int], queues: Sequence[str]
) -> Confirmation:
    """Assign those of the reserved ``ids`` that are still unassigned in one of the
    agent's ``queues``, best first, as many as it has room for, in one short
    transaction: lock the agent, list what it holds, assign and log the events
    (one statement on PostgreSQL).

    A Core transaction of its own: the ORM session has nothing to track here.
    """
    params = {"agent_id": agent_id}
    held: Sequence[Any] = []
    assigned: Sequence[Any] = []
    returned: list[Placement] = []
    with session.get_bind().engine.begin() as conn:
        agent = conn.execute(_LOCK_AGENT, params).one_or_none()
        active = agent is not None and agent.is_active and agent.capacity is not None
        room = 0
        if agent is not None and active:  # (spelled out for the type checker)
            held = conn.execute(_UNSOLD, params).all()
            room = max(agent.capacity - len(held), 0)
        if room and ids:
            now = utcnow()
            given = {
                "ids": list(ids),
                "queues": list(queues),
                "room": room,
                "agent_id": agent_id,
                "now": now,
            }
            assigned = _ASSIGN_LOGGED.execute(conn, given)
        confirmed = sorted(t.id for t in assigned)
        rest = sorted(set(ids) - set(confirmed))
        if rest:
            # Back to where PostgreSQL says they wait now (a move since the pop
            # has changed their queue or priority).
            returned = [placement(r) for r in conn.execute(_STILL_UNASSIGNED, {"ids": rest})]
        fault_point("assign.before_commit")
    metrics.tickets_assigned(len(confirmed))
    if not active:
        raise errors.Unauthorized("the account is inactive or no longer exists")
    # Under the lock nothing else was confirmed for this agent: what it held,
    # plus what this transaction assigned, is its list at the commit.
    tickets = sorted([*held, *assigned], key=lambda t: t.id)
    back = {p.ticket_id for p in returned}
    return Confirmation(confirmed, returned, sorted(set(rest) - back), tickets)


def stale_reservations(session: DbSession, agent_id: int, ids: Sequence[int]) -> list[int]:
    """Those of ``ids`` no fetch of the agent can still confirm: sold, deleted, or
    another agent's. (Unassigned ones may be in flight; the agent's own are held.)"""
    states = ticket_states(session, ids)
    session.rollback()
    return [
        i
        for i in sorted(ids)
        if i not in states
        or not (
            states[i].status == "unassigned"
            or (states[i].status == "assigned" and states[i].agent_id == agent_id)
        )
    ]


def assign(session: DbSession, queue: TicketQueue, caller: Claims, lease_seconds: int) -> Holding:
    """Top the agent up to its capacity from the best tickets of its queues, if it is
    online, and return what it holds."""
    agent_id = caller.user_id
    current = holding(session, caller)
    if not current.takes_work:
        return current  # the fast path: one indexed SELECT, no Redis work
    capacity, queues = current.capacity, current.queues
    tickets = current.tickets
    committed = False
    checked = False
    rounds = 0
    assigned = 0
    queue_left = 0
    try:
        for _ in range(MAX_POPS):
            # Also clears the reservations of the ids PostgreSQL lists (an
            # earlier round or fetch confirmed them) and brings `held` in line.
            reservation = queue.reserve(
                agent_id, capacity, lease_seconds, [t.id for t in tickets], queues
            )
            queue_left = reservation.queue_left
            if not reservation.ids:
                if reservation.queue_left and not checked and reservation.in_flight:
                    # The agent's other slots are reservations PostgreSQL did
                    # not list. Normally its own fetches in flight, but a sale
                    # or release whose Redis cleanup was lost (a crash, Redis
                    # down) leaves one too: look once, free those, go on.
                    checked = True
                    if stale := stale_reservations(session, agent_id, reservation.in_flight):
                        queue.forget_held(agent_id, stale)
                        continue
                break  # the queue is empty, or the agent is full
            fault_point("assign.after_reserve")
            try:
                result = confirm(session, agent_id, reservation.ids, queues)
            except errors.Unauthorized:
                # Deactivated while fetching: every popped id goes back (if
                # Redis fails here, the reaper returns them; the 401 stands).
                give_back_best_effort(queue, agent_id, reservation.popped)
                raise
            except SQLAlchemyError:
                # PostgreSQL failed: the fetch answers 503, so its ids go back
                # now rather than when their lease ends. Safe even if the
                # commit went through unseen: the next confirm refuses an id
                # that is already assigned.
                give_back_best_effort(queue, agent_id, reservation.popped)
                raise
            committed = True
            fault_point("assign.after_confirm")
            tickets = result.tickets
            assigned += len(result.confirmed)
            # The confirmed ids keep their reservations until the agent's next
            # reserve call clears them (or a sale, or the reaper once the lease
            # ends): one script call per fetch, not two. Only ids PostgreSQL
            # refused need a call now. A "vanished" id the agent itself holds
            # was queued twice (a relay race) and is already its own.
            held_now = {t.id for t in tickets}
            dropped = sorted(set(result.vanished) - held_now)
            if dropped or result.returned:
                queue.settle(agent_id, [], dropped, result.returned)
            rounds += bool(result.confirmed or result.returned)
            if len(tickets) >= capacity or reservation.queue_left == 0 or rounds >= MAX_ROUNDS:
                break
    except redis.exceptions.RedisError as exc:
        if not committed:
            raise  # nothing changed: 503
        # PostgreSQL committed this fetch, so its answer stands: the reaper
        # clears the reservations left behind and `held` is brought in line by
        # the next fetch.
        log.warning("redis failed after the fetch of agent %s committed (%s)", agent_id, exc)
    return Holding(tickets, capacity, current.status, queues, assigned, queue_left)


# A sale is one guarded UPDATE that also checks the seller's account (active, and
# the token's version and role), so the route needs no separate user lookup.
_SELL = (
    update(_tickets)
    .where(
        _tickets.c.id == bindparam("sale_ticket"),
        _tickets.c.agent_id == bindparam("seller"),
        _tickets.c.status == "assigned",
        select(_users.c.id)
        .where(
            _users.c.id == bindparam("seller"),
            _users.c.is_active,
            _users.c.token_version == bindparam("seller_version"),
            _users.c.role == "agent",
        )
        .exists(),
    )
    .values(status="sold", sold_at=bindparam("sold_now"), updated_at=bindparam("sold_now"))
    .returning(*_tickets.c)
)
# Why a sale matched nothing: the seller's account, and the ticket if it exists.
_SALE_REFUSED = (
    select(
        _users.c.is_active,
        _users.c.role,
        _users.c.token_version,
        _tickets.c.agent_id,
        _tickets.c.status,
    )
    .select_from(_users.outerjoin(_tickets, _tickets.c.id == bindparam("sale_ticket")))
    .where(_users.c.id == bindparam("seller"))
)


# With its event: on PostgreSQL one statement in autocommit, atomic, and one
# round trip instead of BEGIN, UPDATE, INSERT and COMMIT.
_SELL_LOGGED = events.LoggedChange("sold", _SELL, actor="seller", agent="seller", at="sold_now")


def sell(session: DbSession, queue: TicketQueue, caller: Claims, ticket_id: int) -> Any:
    """Close a ticket the agent holds; return its row. A sold ticket stays with its seller."""
    agent_id = caller.user_id
    now = utcnow()
    params = {
        "sale_ticket": ticket_id,
        "seller": agent_id,
        "seller_version": caller.version,
        "sold_now": now,
    }
    with single_write(session.get_bind().engine) as conn:
        sold = _SELL_LOGGED.execute(conn, params)
        why = None if sold else conn.execute(_SALE_REFUSED, params).one_or_none()
    if not sold:
        ensure_current(why, caller)
        if why is None or why.role != "agent":
            raise errors.Forbidden("only agents hold tickets")
        if why.agent_id == agent_id and why.status == "sold":
            raise errors.Conflict(f"ticket {ticket_id} is already sold", code="already_sold")
        raise errors.NotFound(f"you hold no ticket {ticket_id}")
    metrics.ticket_sold()
    fault_point("sell.after_commit")
    forget_held_best_effort(queue, agent_id, [ticket_id])
    return sold[0]


def give_back_best_effort(queue: TicketQueue, agent_id: int, popped: Sequence[Placement]) -> None:
    """Return reserved ids to where they were popped from; if Redis is down, the reaper
    does it."""
    try:
        queue.settle(agent_id, [], [], popped)
    except redis.exceptions.RedisError as exc:
        ids = [p.ticket_id for p in popped]
        log.warning("reserved ids %s not given back (%s); the reaper returns them", ids, exc)


def forget_held_best_effort(queue: TicketQueue, agent_id: int, ids: Sequence[int]) -> None:
    """Drop ids from an agent's held set and reservations; if Redis is down, the
    next fetch brings `held` in line and the reaper ends the reservations."""
    try:
        queue.forget_held(agent_id, ids)
    except redis.exceptions.RedisError as exc:
        log.warning(
            "could not update held set of agent %s (%s); it resyncs on its next fetch",
            agent_id,
            exc,
        )
