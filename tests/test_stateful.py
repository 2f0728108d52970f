"""A state machine over the domain layer on real PostgreSQL and Redis.

Hypothesis interleaves admin writes (tickets in several queues and priorities,
moves between them, releases, assignments, deletes), agents with overlapping
queue memberships changing their status, fetching and selling, with the
failures the maintenance code exists for (a fetch that dies after its pop, a
push that never happened, a Redis that loses its data) and with the repairs
(reaper, relay, rebuild). Whenever the system is quiet (nothing missing from
Redis), each fetch must give exactly what the order rule says: for each free
slot, the best unassigned ticket of the agent's queues, higher priority first,
then older. After every step the invariants I1-I5 are checked straight from
the stores, and ``audit`` must agree with that verdict.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import reset_state
from flask import Flask
from helpers import caller, reserved_ids
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from service import errors
from service.domain.assignment import assign, sell
from service.domain.audit import audit
from service.domain.moves import assign_ticket, release_ticket
from service.domain.presence import set_status
from service.domain.reaper import reap
from service.domain.rebuild import rebuild
from service.domain.relay import relay
from service.domain.tickets import create_ticket, delete_ticket, update_ticket
from service.domain.users import update_user
from service.extensions import db
from service.models import GENERAL, PRESENCE, PRIORITIES, AgentQueue, Queue, Ticket, User
from service.queue import score
from service.state import ticket_queue

LEASE = 30
QUEUES = (GENERAL, "billing", "fr")
# Capacity and queues of each agent: memberships overlap (billing is shared,
# general and fr are each one agent's too).
AGENTS = ((1, (GENERAL,)), (2, (GENERAL, "billing")), (4, ("billing", "fr")))

settings.register_profile(
    "ci",
    max_examples=25,
    stateful_step_count=30,
    deadline=None,  # each step talks to PostgreSQL and Redis: timing varies
    database=None,  # nothing written into the checkout
    derandomize=True,  # the same examples on every run: a red build is reproducible
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    print_blob=True,
)
settings.register_profile(
    # A failure of the ci profile, shown at once, unshrunk: to see what broke quickly.
    "ci-noshrink",
    parent=settings.get_profile("ci"),
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
settings.register_profile(
    "thorough",
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

queue_names = st.sampled_from(QUEUES)
priorities = st.sampled_from(PRIORITIES)


class Service(RuleBasedStateMachine):
    """Drives the domain functions; keeps a model of who should hold what, and where
    each unassigned ticket waits."""

    app: Flask

    def __init__(self) -> None:
        super().__init__()
        reset_state(self.app)
        self.ctx = self.app.app_context()
        self.ctx.push()
        self.queue = ticket_queue()
        db.session.add_all(Queue(name=name) for name in QUEUES if name != GENERAL)
        admin = User(username="admin", password_hash="x", role="admin", capacity=None)
        db.session.add(admin)
        agents = [
            User(
                username=f"agent{i}",
                password_hash="x",
                role="agent",
                capacity=capacity,
                status="online",
                queue_names=",".join(sorted(names)),
            )
            for i, (capacity, names) in enumerate(AGENTS)
        ]
        db.session.add_all(agents)
        db.session.flush()
        db.session.add_all(
            AgentQueue(agent_id=agent.id, queue=name)
            for agent, (_, names) in zip(agents, AGENTS, strict=True)
            for name in names
        )
        db.session.commit()
        self.admin = admin.id
        self.capacity = {a.id: a.capacity or 0 for a in agents}
        self.member_of = {a.id: set(names) for a, (_, names) in zip(agents, AGENTS, strict=True)}
        self.active = {a.id: True for a in agents}
        self.status = {a.id: "online" for a in agents}
        self.tickets: dict[int, tuple[str, int]] = {}  # not deleted: id -> (queue, rank)
        self.holds: dict[int, set[int]] = {a: set() for a in self.capacity}  # assigned, unsold
        self.sold: dict[int, int] = {}  # ticket -> seller
        self.in_flight: dict[int, set[int]] = {a: set() for a in self.capacity}  # dead fetches
        # Tickets Redis does not know about yet: an unpushed INSERT (the relay
        # or a rebuild queues it), a wipe (only a rebuild refills Redis; the
        # workers start one when they see the epoch gone). Meanwhile I4 may not hold.
        self.unpushed = False
        self.wiped = False

    def teardown(self) -> None:
        db.session.rollback()
        db.session.remove()
        self.ctx.pop()

    # -- helpers -------------------------------------------------------------
    def holder(self, ticket_id: int) -> int | None:
        return next((a for a, held in self.holds.items() if ticket_id in held), None)

    def unassigned(self) -> set[int]:
        taken = set(self.sold) | {t for held in self.holds.values() for t in held}
        return set(self.tickets) - taken

    def pool(self, queues: set[str] | None = None) -> list[int]:
        """Unassigned tickets a fetch can get (of ``queues``), best first."""
        reserved = {t for ids in self.in_flight.values() for t in ids}
        return sorted(
            (
                t
                for t in self.unassigned() - reserved
                if queues is None or self.tickets[t][0] in queues
            ),
            key=lambda t: (self.tickets[t][1], t),
        )

    def pick(self, data: st.DataObject, items: Any) -> Any:
        return data.draw(st.sampled_from(sorted(items)))

    @property
    def queue_incomplete(self) -> bool:
        return self.unpushed or self.wiped

    def takes_work(self, agent: int) -> bool:
        return self.active[agent] and self.status[agent] == "online"

    # -- admin ---------------------------------------------------------------
    @initialize(backlog=st.lists(st.tuples(queue_names, priorities), min_size=4, max_size=10))
    def backlog(self, backlog: list[tuple[str, str]]) -> None:
        """A backlog spread over the queues and priorities before anyone fetches, so
        that most fetches have a choice to make."""
        for queue_name, priority in backlog:
            self.create(1, queue_name, priority)

    @rule(count=st.integers(1, 3), queue_name=queue_names, priority=priorities)
    def create(self, count: int, queue_name: str, priority: str) -> None:
        for _ in range(count):
            ticket = create_ticket(
                db.session,
                self.queue,
                title="t",
                description="",
                actor_id=self.admin,
                queue_name=queue_name,
                priority=priority,
            )
            self.tickets[ticket.id] = (queue_name, PRIORITIES.index(priority))

    @rule(queue_name=queue_names, priority=priorities)
    def create_unpushed(self, queue_name: str, priority: str) -> None:
        """The API died between the INSERT's commit and the push."""
        rank = PRIORITIES.index(priority)
        ticket_id = db.session.scalar(
            sa.insert(Ticket)
            .values(title="t", description="", status="unassigned", queue=queue_name, priority=rank)
            .returning(Ticket.id)
        )
        db.session.commit()
        assert ticket_id is not None
        self.tickets[ticket_id] = (queue_name, rank)
        self.unpushed = True

    @precondition(lambda self: self.tickets)
    @rule(
        data=st.data(),
        queue_name=st.none() | queue_names,
        priority=st.none() | priorities,
    )
    def edit(self, data: st.DataObject, queue_name: str | None, priority: str | None) -> None:
        """A title edit, or a move to another queue or priority: never a change of hands."""
        ticket_id = self.pick(data, self.tickets)
        changes: dict[str, Any] = {"title": "edited"}
        if queue_name is not None:
            changes["queue"] = queue_name
        if priority is not None:
            changes["priority"] = priority
        update_ticket(db.session, self.queue, ticket_id, changes, actor_id=self.admin)
        holder = db.session.scalar(sa.select(Ticket.agent_id).where(Ticket.id == ticket_id))
        db.session.rollback()
        assert holder == (self.holder(ticket_id) or self.sold.get(ticket_id))
        queue_before, rank_before = self.tickets[ticket_id]
        self.tickets[ticket_id] = (
            queue_name or queue_before,
            rank_before if priority is None else PRIORITIES.index(priority),
        )

    @precondition(lambda self: self.tickets)
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        ticket_id = self.pick(data, self.tickets)
        delete_ticket(db.session, self.queue, ticket_id, actor_id=self.admin)
        del self.tickets[ticket_id]
        self.sold.pop(ticket_id, None)
        for held in self.holds.values():
            held.discard(ticket_id)
        for ids in self.in_flight.values():
            ids.discard(ticket_id)  # the delete ends its reservation too

    @precondition(lambda self: self.tickets)
    @rule(data=st.data())
    def admin_releases(self, data: st.DataObject) -> None:
        ticket_id = self.pick(data, self.tickets)
        holder = self.holder(ticket_id)
        if holder is None:
            with pytest.raises(errors.Conflict):
                release_ticket(db.session, self.queue, ticket_id, actor_id=self.admin)
            return
        released = release_ticket(db.session, self.queue, ticket_id, actor_id=self.admin)
        assert (released.status, released.agent_id) == ("unassigned", None)
        self.holds[holder].discard(ticket_id)

    @precondition(lambda self: self.tickets)
    @rule(data=st.data())
    def admin_assigns(self, data: st.DataObject) -> None:
        """Give a ticket to a chosen agent, from the pool or from another agent."""
        ticket_id = self.pick(data, self.tickets)
        agent = self.pick(data, self.capacity)
        holder = self.holder(ticket_id)
        if not self.active[agent]:
            with pytest.raises(errors.ValidationFailed):
                assign_ticket(db.session, self.queue, ticket_id, agent, actor_id=self.admin)
        elif ticket_id in self.sold:
            with pytest.raises(errors.Conflict, match="already sold"):
                assign_ticket(db.session, self.queue, ticket_id, agent, actor_id=self.admin)
        elif holder != agent and len(self.holds[agent]) >= self.capacity[agent]:
            with pytest.raises(errors.Conflict, match="holds"):
                assign_ticket(db.session, self.queue, ticket_id, agent, actor_id=self.admin)
        else:
            given = assign_ticket(db.session, self.queue, ticket_id, agent, actor_id=self.admin)
            assert (given.status, given.agent_id) == ("assigned", agent)
            if holder is not None:
                self.holds[holder].discard(ticket_id)
            self.holds[agent].add(ticket_id)
            for ids in self.in_flight.values():
                ids.discard(ticket_id)  # out of the queue and the reservations

    @precondition(lambda self: any(self.active.values()))
    @rule(data=st.data())
    def deactivate(self, data: st.DataObject) -> None:
        agent = self.pick(data, [a for a, on in self.active.items() if on])
        update_user(db.session, self.queue, agent, {"is_active": False}, actor_id=self.admin)
        self.active[agent] = False
        self.holds[agent] = set()  # back to their queues, each at its place

    @precondition(lambda self: any(self.active.values()))
    @rule(data=st.data(), status=st.sampled_from(PRESENCE))
    def agent_sets_status(self, data: st.DataObject, status: str) -> None:
        agent = self.pick(data, [a for a, on in self.active.items() if on])
        assert set_status(db.session, caller(agent), status)[0] == status
        self.status[agent] = status

    @rule(data=st.data(), names=st.sets(queue_names, max_size=len(QUEUES)))
    def admin_sets_queues(self, data: st.DataObject, names: set[str]) -> None:
        agent = self.pick(data, self.capacity)
        update_user(db.session, self.queue, agent, {"queues": sorted(names)}, actor_id=self.admin)
        self.member_of[agent] = set(names)

    # -- agents --------------------------------------------------------------
    @rule(data=st.data())
    def fetch(self, data: st.DataObject) -> None:
        agent = self.pick(data, self.capacity)
        if not self.active[agent]:
            try:
                assign(db.session, self.queue, caller(agent), LEASE)
            except errors.Unauthorized:
                return
            raise AssertionError("a deactivated agent got tickets")
        pool = self.pool(self.member_of[agent])
        room = self.capacity[agent] - len(self.holds[agent])
        got = {t.id for t in assign(db.session, self.queue, caller(agent), LEASE).tickets}
        new = sorted(got - self.holds[agent], key=lambda t: (self.tickets[t][1], t))
        assert self.holds[agent] <= got, "a fetch lost a ticket the agent held"
        assert len(got) <= self.capacity[agent]
        if not self.takes_work(agent):
            assert new == [], f"a {self.status[agent]} agent was given tickets"
        elif not self.queue_incomplete:
            # The order rule, exactly. A dead fetch of this agent still occupies
            # slots in Redis until the reaper ends it.
            assert new == pool[: len(new)]
            if not self.in_flight[agent]:
                assert len(new) == min(room, len(pool))
        else:
            assert set(new) <= set(pool)
        self.holds[agent] = got

    @precondition(lambda self: any(self.holds.values()))
    @rule(data=st.data())
    def agent_sells(self, data: st.DataObject) -> None:
        agent = self.pick(data, [a for a, held in self.holds.items() if held])
        ticket_id = self.pick(data, self.holds[agent])
        if not self.active[agent]:
            return
        sold = sell(db.session, self.queue, caller(agent), ticket_id)
        assert (sold.status, sold.agent_id) == ("sold", agent)
        self.holds[agent].discard(ticket_id)
        self.sold[ticket_id] = agent

    @precondition(lambda self: any(self.active[a] for a in self.sold.values()))
    @rule(data=st.data())
    def sell_again(self, data: st.DataObject) -> None:
        ticket_id = self.pick(data, [t for t, a in self.sold.items() if self.active[a]])
        seller = self.sold[ticket_id]
        others = [a for a in self.capacity if a != seller and self.active[a]]
        with pytest.raises(errors.Conflict):
            sell(db.session, self.queue, caller(seller), ticket_id)
        for other in others:
            with pytest.raises(errors.NotFound):
                sell(db.session, self.queue, caller(other), ticket_id)

    # -- failures and repairs ------------------------------------------------
    @precondition(lambda self: any(self.active.values()))
    @rule(data=st.data())
    def fetch_dies_after_pop(self, data: st.DataObject) -> None:
        """A fetch pops and reserves, then its process dies before the confirm."""
        agent = self.pick(data, [a for a, on in self.active.items() if on])
        popped = self.queue.reserve(
            agent,
            self.capacity[agent],
            LEASE,
            sorted(self.holds[agent]),
            sorted(self.member_of[agent]),
        ).ids
        self.in_flight[agent] |= set(popped)

    @rule()
    def leases_end_and_reaper_runs(self) -> None:
        for member in self.queue.client.zrange(self.queue.reserved_key, 0, -1):
            self.queue.client.zadd(self.queue.reserved_key, {member: 0})
        result = reap(db.session, self.queue)
        dead = {t for ids in self.in_flight.values() for t in ids}
        assert set(result.returned) == dead & self.unassigned()
        # Dropped: the dead fetches' deleted tickets, and the reservations
        # confirmed tickets kept until their agent's next fetch.
        taken = set(self.sold) | {t for held in self.holds.values() for t in held}
        gone = dead - set(self.tickets)
        assert gone <= set(result.dropped) <= gone | taken
        self.in_flight = {a: set() for a in self.capacity}

    @rule()
    def redis_loses_its_data(self) -> None:
        self.queue.client.flushdb()
        self.in_flight = {a: set() for a in self.capacity}  # their reservations are gone
        self.wiped = True

    @rule()
    def rebuild_runs(self) -> None:
        summary = rebuild(db.session, self.queue)
        assert summary.completed
        self.unpushed = self.wiped = False

    @rule()
    def relay_runs(self) -> None:
        relay(db.session, self.queue)
        self.unpushed = False

    # -- invariants ----------------------------------------------------------
    @invariant()
    def postgres_agrees_with_the_model(self) -> None:
        rows = db.session.execute(
            sa.select(Ticket.id, Ticket.status, Ticket.agent_id, Ticket.queue, Ticket.priority)
        ).all()
        db.session.rollback()
        assert {r.id: (r.queue, r.priority) for r in rows} == self.tickets
        for row in rows:
            if row.status == "sold":
                assert self.sold.get(row.id) == row.agent_id  # I1: stays with its seller
            elif row.status == "assigned":
                assert row.id in self.holds[row.agent_id]
        for agent, held in self.holds.items():
            assert len(held) <= self.capacity[agent]  # I2
            assert all(r.agent_id == agent and r.status == "assigned" for r in rows if r.id in held)

    @invariant()
    def redis_agrees_with_postgres(self) -> None:
        queue = self.queue
        where: dict[int, list[tuple[str, float]]] = {}
        for name in QUEUES:
            for member, at in queue.client.zrange(queue.queue_key(name), 0, -1, withscores=True):
                where.setdefault(int(member), []).append((name, at))
        for ticket_id, found in where.items():
            # I3 and I5: in one queue, its own, at its own place.
            if ticket_id in self.tickets:
                name, rank = self.tickets[ticket_id]
                assert found == [(name, float(score(rank, ticket_id)))], (ticket_id, found)
        reserved = reserved_ids(queue)
        pool = set(self.pool())
        assert set(where) <= pool  # I5: nothing queued that is not unassigned
        assert not set(where) & reserved
        if not self.queue_incomplete:
            assert pool <= set(where) | reserved  # I4: nothing lost
        held_by: dict[int, int] = {}
        for agent in self.capacity:
            for ticket_id in queue.held(agent):
                assert ticket_id not in held_by, "a ticket in two held sets"  # I1
                held_by[ticket_id] = agent

    @invariant()
    def audit_gives_the_same_verdict(self) -> None:
        found = audit(db.session, self.queue, recheck_after=0)
        if self.queue_incomplete:
            assert {v.invariant for v in found} <= {"I4"}, found
        else:
            assert found == [], found


def test_domain_state_machine(app: Flask) -> None:
    Service.app = app
    profile = os.environ.get("HYPOTHESIS_PROFILE", "ci")
    run_state_machine_as_test(Service, settings=settings.get_profile(profile))
