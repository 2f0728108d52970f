"""A state machine over the domain layer on real PostgreSQL and Redis.

Hypothesis interleaves admin writes, fetches and sales with the failures the
maintenance code exists for (a fetch that dies after its pop, a push that
never happened, a Redis that loses its data) and with the repairs (reaper,
relay, rebuild). After every step the invariants I1-I5 are checked straight
from the stores, and ``audit`` must agree with that verdict.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import reset_state
from flask import Flask
from helpers import caller, reserved_ids
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from service import errors
from service.domain.assignment import assign, sell
from service.domain.audit import audit
from service.domain.reaper import reap
from service.domain.rebuild import rebuild
from service.domain.relay import relay
from service.domain.tickets import create_ticket, delete_ticket, update_ticket
from service.domain.users import update_user
from service.extensions import db
from service.models import Ticket, User
from service.state import ticket_queue

LEASE = 30
CAPACITIES = (1, 2, 4)

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
    "thorough",
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


class Service(RuleBasedStateMachine):
    """Drives the domain functions; keeps a model of who should hold what."""

    app: Flask

    def __init__(self) -> None:
        super().__init__()
        reset_state(self.app)
        self.ctx = self.app.app_context()
        self.ctx.push()
        self.queue = ticket_queue()
        admin = User(username="admin", password_hash="x", role="admin", capacity=None)
        db.session.add(admin)
        agents = [
            User(username=f"agent{i}", password_hash="x", role="agent", capacity=c)
            for i, c in enumerate(CAPACITIES)
        ]
        db.session.add_all(agents)
        db.session.commit()
        self.admin = admin.id
        self.capacity = {a.id: a.capacity or 0 for a in agents}
        self.active = {a.id: True for a in agents}
        self.tickets: set[int] = set()  # every ticket not deleted
        self.holds: dict[int, set[int]] = {a: set() for a in self.capacity}  # assigned, unsold
        self.sold: dict[int, int] = {}  # ticket -> seller
        self.in_flight: dict[int, set[int]] = {a: set() for a in self.capacity}  # dead fetches
        # Tickets Redis does not know about yet (an unpushed INSERT, a wipe):
        # until the relay or a rebuild runs, I4 may not hold.
        self.queue_incomplete = False

    def teardown(self) -> None:
        db.session.rollback()
        db.session.remove()
        self.ctx.pop()

    # -- helpers -------------------------------------------------------------
    def pool(self) -> list[int]:
        """Unassigned tickets a fetch can get, oldest first."""
        taken = set(self.sold) | {t for held in self.holds.values() for t in held}
        reserved = {t for ids in self.in_flight.values() for t in ids}
        return sorted(self.tickets - taken - reserved)

    def pick(self, data: st.DataObject, items: Any) -> Any:
        return data.draw(st.sampled_from(sorted(items)))

    # -- admin ---------------------------------------------------------------
    @rule(count=st.integers(1, 3))
    def create(self, count: int) -> None:
        for _ in range(count):
            ticket = create_ticket(
                db.session, self.queue, title="t", description="", actor_id=self.admin
            )
            self.tickets.add(ticket.id)

    @rule()
    def create_unpushed(self) -> None:
        """The API died between the INSERT's commit and the push."""
        ticket_id = db.session.scalar(
            sa.insert(Ticket)
            .values(title="t", description="", status="unassigned")
            .returning(Ticket.id)
        )
        db.session.commit()
        assert ticket_id is not None
        self.tickets.add(ticket_id)
        self.queue_incomplete = True

    @precondition(lambda self: self.tickets)
    @rule(data=st.data())
    def edit(self, data: st.DataObject) -> None:
        ticket_id = self.pick(data, self.tickets)
        before = db.session.execute(
            sa.select(Ticket.status, Ticket.agent_id).where(Ticket.id == ticket_id)
        ).one()
        score = self.queue.client.zscore(self.queue.queue_key, ticket_id)
        update_ticket(db.session, ticket_id, {"title": "edited", "description": "more"})
        after = db.session.execute(
            sa.select(Ticket.status, Ticket.agent_id).where(Ticket.id == ticket_id)
        ).one()
        db.session.rollback()
        assert tuple(after) == tuple(before)
        assert self.queue.client.zscore(self.queue.queue_key, ticket_id) == score

    @precondition(lambda self: self.tickets)
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        ticket_id = self.pick(data, self.tickets)
        delete_ticket(db.session, self.queue, ticket_id, actor_id=self.admin)
        self.tickets.discard(ticket_id)
        self.sold.pop(ticket_id, None)
        for held in self.holds.values():
            held.discard(ticket_id)
        for ids in self.in_flight.values():
            ids.discard(ticket_id)  # the delete ends its reservation too

    @precondition(lambda self: any(self.active.values()))
    @rule(data=st.data())
    def deactivate(self, data: st.DataObject) -> None:
        agent = self.pick(data, [a for a, on in self.active.items() if on])
        update_user(db.session, self.queue, agent, {"is_active": False}, actor_id=self.admin)
        self.active[agent] = False
        self.holds[agent] = set()  # back to the pool, at the front by id

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
        pool = self.pool()
        room = self.capacity[agent] - len(self.holds[agent])
        got = {t.id for t in assign(db.session, self.queue, caller(agent), LEASE).tickets}
        new = sorted(got - self.holds[agent])
        assert self.holds[agent] <= got, "a fetch lost a ticket the agent held"
        assert len(got) <= self.capacity[agent]
        if not self.queue_incomplete:
            # I3: the oldest tickets, in order. A dead fetch of this agent
            # still occupies slots in Redis until the reaper ends it.
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
        sold = sell(db.session, self.queue, caller(agent), ticket_id)
        assert (sold.status, sold.agent_id) == ("sold", agent)
        self.holds[agent].discard(ticket_id)
        self.sold[ticket_id] = agent

    @precondition(lambda self: self.sold)
    @rule(data=st.data())
    def sell_again(self, data: st.DataObject) -> None:
        ticket_id = self.pick(data, self.sold)
        seller = self.sold[ticket_id]
        other = next(a for a in self.capacity if a != seller)
        with pytest.raises(errors.Conflict):
            sell(db.session, self.queue, caller(seller), ticket_id)
        with pytest.raises(errors.NotFound):
            sell(db.session, self.queue, caller(other), ticket_id)

    # -- failures and repairs ------------------------------------------------
    @precondition(lambda self: any(self.active.values()))
    @rule(data=st.data())
    def fetch_dies_after_pop(self, data: st.DataObject) -> None:
        """A fetch pops and reserves, then its process dies before the confirm."""
        agent = self.pick(data, [a for a, on in self.active.items() if on])
        popped = self.queue.reserve(
            agent, self.capacity[agent], LEASE, sorted(self.holds[agent])
        ).ids
        self.in_flight[agent] |= set(popped)

    @rule()
    def leases_end_and_reaper_runs(self) -> None:
        for member in self.queue.client.zrange(self.queue.reserved_key, 0, -1):
            self.queue.client.zadd(self.queue.reserved_key, {member: 0})
        result = reap(db.session, self.queue)
        dead = {t for ids in self.in_flight.values() for t in ids}
        assert set(result.returned) == dead & self.tickets
        # Dropped: the dead fetches' deleted tickets, and the reservations
        # confirmed tickets kept until their agent's next fetch.
        taken = set(self.sold) | {t for held in self.holds.values() for t in held}
        assert dead - self.tickets <= set(result.dropped) <= (dead - self.tickets) | taken
        self.in_flight = {a: set() for a in self.capacity}

    @rule()
    def redis_loses_its_data(self) -> None:
        self.queue.client.flushdb()
        self.in_flight = {a: set() for a in self.capacity}  # their reservations are gone
        self.queue_incomplete = True

    @rule()
    def rebuild_runs(self) -> None:
        summary = rebuild(db.session, self.queue)
        assert summary.completed
        self.queue_incomplete = False

    @rule()
    def relay_runs(self) -> None:
        relay(db.session, self.queue)
        self.queue_incomplete = False

    # -- invariants ----------------------------------------------------------
    @invariant()
    def postgres_agrees_with_the_model(self) -> None:
        rows = db.session.execute(sa.select(Ticket.id, Ticket.status, Ticket.agent_id)).all()
        db.session.rollback()
        assert {r.id for r in rows} == self.tickets
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
        members = queue.client.zrange(queue.queue_key, 0, -1, withscores=True)
        queued = [int(m) for m, _ in members]
        assert all(float(m) == s for m, s in members)  # I3: scored by id
        reserved = reserved_ids(queue)
        pool = set(self.pool())
        assert set(queued) <= pool  # I5: nothing queued that is not unassigned
        assert not set(queued) & reserved
        if not self.queue_incomplete:
            assert pool <= set(queued) | reserved  # I4: nothing lost
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
