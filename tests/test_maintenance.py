"""Relay, reaper, reconcile, rebuild and audit on real PostgreSQL and Redis."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import Factory, service_env
from flask import Flask
from helpers import caller, in_general, insert_unqueued, queued_ids, reserved_ids
from live import ROOT

from service.domain.assignment import assign, sell
from service.domain.audit import Violation, audit
from service.domain.queue_repair import push_missing, sweep_queue
from service.domain.reaper import reap
from service.domain.rebuild import rebuild
from service.domain.reconcile import reconcile
from service.domain.relay import relay
from service.domain.tickets import delete_ticket
from service.extensions import db
from service.models import GENERAL, RevokedSession, Ticket, utcnow
from service.queue import TicketQueue, score
from service.state import ticket_queue

LEASE = 30
NORMAL = 2


@pytest.fixture
def ctx(app: Flask) -> Iterator[TicketQueue]:
    """An app context; yields the app's TicketQueue."""
    with app.app_context():
        yield ticket_queue()
        db.session.rollback()


def queued(queue: TicketQueue) -> list[tuple[str, float]]:
    return [
        (m, s) for m, s in queue.client.zrange(queue.queue_key(GENERAL), 0, -1, withscores=True)
    ]


def at_place(ids: list[int]) -> list[tuple[str, float]]:
    """(member, score) of normal tickets of the general queue, at their places."""
    return [(str(i), float(score(NORMAL, i))) for i in ids]


def depth(queue: TicketQueue) -> tuple[int, int]:
    """(ids in the general queue, reservations)."""
    counts, reserved = queue.depth([GENERAL])
    return counts[GENERAL], reserved


def expire_all(queue: TicketQueue) -> None:
    """Make every reservation's lease end in the past (a crashed fetch, long ago)."""
    for member in queue.client.zrange(queue.reserved_key, 0, -1):
        queue.client.zadd(queue.reserved_key, {member: 0})


def crashed_fetch(queue: TicketQueue, agent_id: int, capacity: int = 15) -> list[int]:
    """Pop and reserve as a fetch does, then 'die' before PostgreSQL confirms."""
    known = db.session.scalars(
        sa.select(Ticket.id).where(Ticket.agent_id == agent_id, Ticket.status == "assigned")
    ).all()
    db.session.rollback()
    return queue.reserve(agent_id, capacity, LEASE, known, [GENERAL]).ids


def status_of(ticket_id: int) -> tuple[str, int | None] | None:
    row = db.session.execute(
        sa.select(Ticket.status, Ticket.agent_id).where(Ticket.id == ticket_id)
    ).one_or_none()
    db.session.rollback()
    return None if row is None else (row[0], row[1])


# -- relay -------------------------------------------------------------------
def test_relay_queues_tickets_postgres_has_and_redis_lacks(ctx, factory):
    queue = ctx
    agent = factory.agents(1)[0]
    pushed_ok = factory.bulk_tickets(3)  # queued normally
    lost = insert_unqueued(4)  # INSERT committed, push never happened
    insert_unqueued(2, status="assigned", agent_id=agent)  # not the relay's business
    assert relay(db.session, queue) == 4
    assert queued(queue) == at_place(sorted(pushed_ok + lost))
    # Idempotent: a second pass finds nothing to do.
    assert relay(db.session, queue) == 0


def test_relay_leaves_reserved_tickets_alone(ctx, factory):
    queue = ctx
    agent = factory.agents(1)[0]
    ids = factory.bulk_tickets(5)
    in_flight = crashed_fetch(queue, agent, capacity=2)
    assert in_flight == ids[:2]
    assert relay(db.session, queue) == 0
    assert queued_ids(queue) == ids[2:]


def test_relay_reads_the_outbox_not_the_backlog(ctx, factory):
    """An idle relay costs the same with a large backlog as with none: it reads the
    outbox (empty) and never the unassigned tickets."""
    queue = ctx
    factory.bulk_tickets(2000)
    assert relay(db.session, queue) == 0  # the outbox rows of the bulk insert
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    sa.event.listen(db.engine, "before_cursor_execute", record)
    try:
        assert relay(db.session, queue) == 0
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", record)
    assert len(statements) <= 2, statements
    assert all("tickets" not in s.split("FROM", 1)[-1] for s in statements), statements


def test_relay_scans_in_pages(ctx):
    queue = ctx
    ids = insert_unqueued(25)
    assert relay(db.session, queue, batch=7) == 25
    assert queued_ids(queue) == ids


def test_push_rechecks_postgres_before_pushing(ctx, factory, monkeypatch):
    """An id the scan saw unassigned but a fetch took since is not pushed."""
    queue = ctx
    agent = factory.agents(1)[0]
    taken = insert_unqueued(1, status="assigned", agent_id=agent)
    free = insert_unqueued(1)
    # As if the scan had read both as unassigned a moment before.
    assert push_missing(db.session, queue, taken + free) == free
    assert queued_ids(queue) == free


def test_enqueue_never_queues_a_reserved_id(ctx, factory):
    queue = ctx
    agent = factory.agents(1)[0]
    ids = factory.bulk_tickets(2)
    popped = crashed_fetch(queue, agent, capacity=1)
    assert queue.enqueue(in_general(*ids)) == []  # one is queued already, the other reserved
    assert queued_ids(queue) == [i for i in ids if i not in popped]


# -- reaper ------------------------------------------------------------------
def test_reaper_returns_expired_reservations_to_the_queue_head(ctx, factory):
    queue = ctx
    agent = factory.agents(1)[0]
    ids = factory.bulk_tickets(6)
    popped = crashed_fetch(queue, agent, capacity=3)
    assert popped == ids[:3]
    assert reap(db.session, queue).returned == []  # the lease has not ended yet
    expire_all(queue)
    result = reap(db.session, queue)
    assert result.returned == popped and result.dropped == []
    assert queued_ids(queue) == ids  # back ahead of the younger ones
    assert queue.held(agent) == set()  # the dead fetch no longer counts against the agent
    assert depth(queue) == (6, 0)
    # The next fetch gets the oldest tickets again.
    holding = assign(db.session, queue, caller(agent), LEASE)
    assert [t.id for t in holding.tickets] == ids


def test_reaper_drops_reservations_of_taken_sold_and_deleted_tickets(ctx, factory, admin):
    queue = ctx
    agent, other = factory.agents(2)
    factory.bulk_tickets(4)
    popped = crashed_fetch(queue, agent, capacity=4)
    # What happened in PostgreSQL before the process died: one confirmed to
    # the agent, one sold by it, one deleted by an admin; one still free.
    db.session.execute(
        sa.update(Ticket).where(Ticket.id.in_(popped[:2])).values(status="assigned", agent_id=agent)
    )
    db.session.execute(sa.update(Ticket).where(Ticket.id == popped[1]).values(status="sold"))
    db.session.commit()
    db.session.execute(sa.delete(Ticket).where(Ticket.id == popped[2]))
    db.session.commit()
    expire_all(queue)
    result = reap(db.session, queue)
    assert result.returned == [popped[3]]
    assert result.dropped == popped[:3]
    assert depth(queue) == (1, 0)
    assert queued_ids(queue) == [popped[3]]
    # The confirmed ticket stays in the agent's held set; free and deleted ones leave it.
    assert popped[0] in queue.held(agent)
    assert popped[2] not in queue.held(agent) and popped[3] not in queue.held(agent)
    assert queue.held(other) == set()


def test_reaper_spares_a_reservation_taken_again_with_a_fresh_lease(ctx, factory):
    """The Lua move re-checks the lease: an id re-reserved since the reaper looked stays put."""
    queue = ctx
    agent = factory.agents(1)[0]
    ids = factory.bulk_tickets(1)
    crashed_fetch(queue, agent, capacity=1)
    now = queue.now()
    # The reaper read the reservation as expired at `now - 10` ...
    assert queue.reap([(p.ticket_id, p) for p in in_general(*ids)], cutoff=now - 10) == []
    assert depth(queue) == (0, 1)
    # ... and a reservation already gone is not queued either.
    queue.client.zrem(queue.reserved_key, *ids)
    assert queue.reap([(p.ticket_id, p) for p in in_general(*ids)], cutoff=now + 100) == []
    assert depth(queue) == (0, 0)


def test_reaper_respects_its_limit(ctx, factory):
    queue = ctx
    agent = factory.agents(1)[0]
    factory.bulk_tickets(5)
    crashed_fetch(queue, agent, capacity=5)
    expire_all(queue)
    assert len(reap(db.session, queue, limit=2).returned) == 2
    assert len(reap(db.session, queue, limit=2).returned) == 2
    assert len(reap(db.session, queue, limit=2).returned) == 1
    assert depth(queue) == (5, 0)


# -- reconcile ---------------------------------------------------------------
def test_reconcile_resyncs_held_sets_that_disagree(ctx, factory):
    queue = ctx
    a, b, c = factory.agents(3)
    factory.bulk_tickets(10)
    fetched_a = [t.id for t in assign(db.session, queue, caller(a), LEASE).tickets]  # takes all 10
    assert len(fetched_a) == 10
    extra = factory.bulk_tickets(3)
    in_flight = crashed_fetch(queue, c, capacity=1)  # c's fetch in flight: must survive
    # Drift: a lost two ids (a failed cleanup), b lists one it never got.
    queue.client.srem(queue.held_key(a), fetched_a[0], fetched_a[1])
    queue.client.sadd(queue.held_key(b), extra[-1])
    assert reconcile(db.session, queue).agents_fixed == 2
    assert queue.held(a) == set(fetched_a)
    assert queue.held(b) == set()
    assert queue.held(c) == set(in_flight)
    assert reconcile(db.session, queue).agents_fixed == 0


def test_reconcile_clears_held_sets_of_sold_tickets(ctx, factory):
    queue = ctx
    agent = factory.agents(1)[0]
    factory.bulk_tickets(2)
    held = [t.id for t in assign(db.session, queue, caller(agent), LEASE).tickets]
    sell(db.session, queue, caller(agent), held[0])
    queue.client.sadd(queue.held_key(agent), held[0])  # the sale's cleanup "failed"
    assert reconcile(db.session, queue).agents_fixed == 1
    assert queue.held(agent) == {held[1]}


def test_the_rebuild_clears_held_sets_of_unknown_agents(ctx, factory):
    """Reconcile looks at known agents only; a held set of an id that is no agent
    (Redis junk) is the rebuild's, which looks at every held set Redis has."""
    queue = ctx
    queue.mark_built("epoch")
    queue.client.sadd(queue.held_key(999_999), 42)
    assert reconcile(db.session, queue).agents_fixed == 0
    assert rebuild(db.session, queue).held_fixed == 1
    assert queue.held(999_999) == set()


def test_reconcile_repairs_a_lost_cleanup_of_an_agent_beyond_the_rolling_sweep(
    ctx, factory, monkeypatch
):
    """The agents whose tickets changed since the last pass are checked, wherever the
    rolling sweep is: a sale's lost cleanup is repaired on the next pass."""
    from service.domain import reconcile as module

    queue = ctx
    agents = factory.agents(4)
    factory.bulk_tickets(8)
    monkeypatch.setattr(module, "AGENT_BATCH", 1)  # the sweep sees one agent per pass
    reconcile(db.session, queue)  # the first pass starts the events' cursor
    held = [t.id for t in assign(db.session, queue, caller(agents[3]), LEASE).tickets]
    sell(db.session, queue, caller(agents[3]), held[0])
    queue.client.sadd(queue.held_key(agents[3]), held[0])  # the sale's cleanup "failed"
    assert queue.cursor(module.AGENTS_CURSOR) == agents[0]  # the sweep is far from agent 4
    result = reconcile(db.session, queue)
    assert result.agents_fixed == 1
    assert queue.held(agents[3]) == set(held[1:])


def test_the_queue_sweep_takes_out_strays_and_queues_what_redis_lost(ctx, factory):
    queue = ctx
    agent = factory.agents(1)[0]
    ids = factory.bulk_tickets(4)
    held = [t.id for t in assign(db.session, queue, caller(agent), LEASE).tickets]
    lost = insert_unqueued(1)
    db.session.execute(sa.text("TRUNCATE queue_outbox"))  # beyond the outbox's sight
    db.session.commit()
    queue.client.zadd(
        queue.queue_key(GENERAL), {str(held[0]): score(NORMAL, held[0])}
    )  # a stale entry of a held ticket
    queue.client.zadd(queue.queue_key(GENERAL), {"x": 2})
    assert relay(db.session, queue) == 0  # nothing in the outbox
    fixes = sweep_queue(db.session, queue)
    assert (fixes.extra, fixes.out_of_order, fixes.missing) == (2, 0, 1)
    assert queued_ids(queue) == lost
    assert held == ids


def test_the_queue_sweep_covers_the_queue_a_page_per_pass(ctx, factory):
    queue = ctx
    ids = factory.bulk_tickets(10)
    queue.client.zrem(queue.queue_key(GENERAL), *ids)  # Redis lost them all
    found = [sweep_queue(db.session, queue, batch=4).missing for _ in range(3)]
    assert found == [4, 4, 2]
    assert queued_ids(queue) == ids
    assert queue.cursor("sweep:queue") is None  # the round is done: it starts over


# -- rebuild -----------------------------------------------------------------
def world(factory: Factory, queue: TicketQueue) -> dict[str, Any]:
    """Some agents holding and having sold tickets, a queue, a revoked token."""
    a, b = factory.agents(2, capacity=3)
    ids = factory.bulk_tickets(10)
    held_a = [t.id for t in assign(db.session, queue, caller(a), LEASE).tickets]
    held_b = [t.id for t in assign(db.session, queue, caller(b), LEASE).tickets]
    sell(db.session, queue, caller(a), held_a[0])
    db.session.add(RevokedSession(sid="revoked-jti", expires_at=utcnow() + timedelta(hours=1)))
    db.session.commit()
    return {
        "a": a,
        "b": b,
        "ids": ids,
        "held_a": held_a[1:],
        "held_b": held_b,
        "unassigned": ids[6:],
    }


def assert_built(queue: TicketQueue, w: dict[str, Any]) -> None:
    assert queued(queue) == at_place(w["unassigned"])
    assert queue.held(w["a"]) == set(w["held_a"])
    assert queue.held(w["b"]) == set(w["held_b"])
    assert queue.client.exists(queue.revoked_key("revoked-jti"))
    assert queue.is_built()


def test_rebuild_after_a_wipe_restores_everything(ctx, factory):
    queue = ctx
    w = world(factory, queue)
    queue.client.flushdb()
    summary = rebuild(db.session, queue)
    assert (summary.missing, summary.extra, summary.out_of_order) == (4, 0, 0)
    assert (summary.held_fixed, summary.reservations_cleared, summary.revoked) == (2, 0, 1)
    assert summary.unassigned == 4 and summary.completed and not summary.dry_run
    assert_built(queue, w)
    assert audit(db.session, queue, recheck_after=0) == []
    # A second rebuild finds nothing to fix (the epoch changes, nothing else).
    again = rebuild(db.session, queue)
    assert (again.missing, again.extra, again.out_of_order, again.held_fixed) == (0, 0, 0, 0)
    assert (again.reservations_cleared, again.revoked) == (0, 0)


def test_rebuild_after_an_upgrade_drops_the_older_layout(ctx, factory):
    """Redis as the one-queue layout left it: its queue and epoch. The new layout counts
    as unbuilt; the rebuild fills it and deletes the old keys, which nothing reads."""
    queue = ctx
    w = world(factory, queue)
    queue.client.flushdb()
    queue.client.zadd("{tq}:queue", {str(i): i for i in w["unassigned"]})
    queue.client.set("{tq}:epoch", "old")
    assert not queue.is_built()
    dry = rebuild(db.session, queue, dry_run=True)
    assert dry.missing == 4 and queue.client.exists("{tq}:queue", "{tq}:epoch") == 2
    summary = rebuild(db.session, queue)
    assert summary.completed and queue.client.exists("{tq}:queue", "{tq}:epoch") == 0
    assert_built(queue, w)
    assert audit(db.session, queue, recheck_after=0) == []


def test_rebuild_dry_run_reports_without_writing(ctx, factory):
    queue = ctx
    w = world(factory, queue)
    queue.client.flushdb()
    queue.client.zadd(
        queue.queue_key(GENERAL), {str(w["held_b"][0]): score(NORMAL, w["held_b"][0])}
    )  # extra
    queue.client.zadd(queue.queue_key(GENERAL), {str(w["unassigned"][0]): 1})  # out of order
    before = sorted(queue.client.keys("*"))
    snapshot = {k: queue.client.dump(k) for k in before}
    summary = rebuild(db.session, queue, dry_run=True)
    assert summary.dry_run and not summary.completed
    assert (summary.missing, summary.extra, summary.out_of_order) == (3, 1, 1)
    assert (summary.held_fixed, summary.revoked) == (2, 1)
    assert sorted(queue.client.keys("*")) == before
    assert {k: queue.client.dump(k) for k in before} == snapshot
    assert "would fix" in summary.describe()


def test_rebuild_fixes_extra_out_of_order_and_stale_reservations(ctx, factory):
    queue = ctx
    w = world(factory, queue)
    c = factory.agents(1, prefix="late")[0]
    first, second = w["unassigned"][:2]
    queue.client.zadd(
        queue.queue_key(GENERAL), {str(w["held_b"][0]): score(NORMAL, w["held_b"][0])}
    )  # taken: extra
    queue.client.zadd(queue.queue_key(GENERAL), {"987654": 987654})  # deleted long ago: extra
    queue.client.zadd(queue.queue_key(GENERAL), {"not-an-id": 5})  # garbage: extra
    queue.client.zadd(queue.queue_key(GENERAL), {str(second): 0.5})  # out of order
    # A dead fetch's reservation (expired), and a live one on a sold ticket.
    dead = crashed_fetch(queue, c, capacity=1)
    assert dead == [second]
    queue.client.zadd(queue.reserved_key, {str(second): 0})
    queue.client.zadd(queue.reserved_key, {str(w["ids"][0]): queue.now() + 60})
    summary = rebuild(db.session, queue)
    assert (summary.extra, summary.reservations_cleared) == (3, 2)
    assert summary.missing == 0 and summary.out_of_order == 0  # `second` was popped before
    assert_built(queue, w)
    assert queue.held(c) == set() and depth(queue)[0] == 4
    # What reservations are left are the confirmed tickets' own, for their
    # agents' next fetches to clear.
    assert reserved_ids(queue) == set(w["held_a"] + w["held_b"])
    assert queued_ids(queue)[:2] == [first, second]


def test_rebuild_keeps_a_fetch_in_flight(ctx, factory):
    queue = ctx
    agent = factory.agents(1)[0]
    ids = factory.bulk_tickets(3)
    popped = crashed_fetch(queue, agent, capacity=1)  # live lease: still confirming
    summary = rebuild(db.session, queue)
    assert summary.missing == 0 and summary.reservations_cleared == 0
    assert queue.held(agent) == set(popped)
    assert queued_ids(queue) == ids[1:]


def test_rebuild_out_of_order_is_reset(ctx, factory):
    queue = ctx
    ids = factory.bulk_tickets(3)
    queue.client.zadd(queue.queue_key(GENERAL), {str(ids[0]): 10**9})
    summary = rebuild(db.session, queue)
    assert summary.out_of_order == 1
    assert queued(queue) == at_place(ids)


def test_rebuild_interrupted_by_a_wipe_leaves_no_epoch(ctx, factory):
    queue = ctx
    factory.bulk_tickets(3)
    queue.client.flushdb()
    phases: list[str] = []

    def progress(phase: str, done: int, total: int) -> None:
        phases.append(phase)
        if phase == "held sets" and done == 0:
            queue.client.flushdb()  # Redis restarts empty in the middle

    summary = rebuild(db.session, queue, progress=progress)
    assert not summary.completed
    assert not queue.is_built()
    assert {"queue", "held sets"} <= set(phases)
    assert rebuild(db.session, queue).completed


def test_rebuild_of_50k_tickets_is_fast(ctx):
    """A regression guard for the 1M benchmark (scripts/rebuild_queue.py)."""
    from scripts.seed import seed_tickets

    queue = ctx
    seed_tickets(db.session, 50_000)
    started = time.monotonic()
    summary = rebuild(db.session, queue)
    elapsed = time.monotonic() - started
    assert summary.missing == 50_000 and summary.completed
    assert depth(queue) == (50_000, 0)
    # About 1.5 s on a laptop; generous for a loaded CI machine.
    assert elapsed < 20, f"rebuild of 50k tickets took {elapsed:.1f}s"


# -- audit -------------------------------------------------------------------
def invariants(found: list[Violation]) -> list[tuple[str, int | None]]:
    pairs = [(v.invariant, v.ticket_id) for v in found]
    return sorted(pairs, key=lambda p: (p[0], -1 if p[1] is None else p[1]))


def test_audit_passes_on_a_healthy_system(ctx, factory):
    queue = ctx
    world(factory, queue)
    crashed_fetch(queue, factory.agents(1, prefix="c")[0], capacity=1)  # in flight is fine
    assert audit(db.session, queue, recheck_after=0) == []


def test_audit_detects_a_ticket_in_two_held_sets(ctx, factory):
    queue = ctx
    w = world(factory, queue)
    ticket = w["held_a"][0]
    queue.client.sadd(queue.held_key(w["b"]), ticket)
    found = audit(db.session, queue, recheck_after=0)
    assert invariants(found) == [("I1", ticket)]
    assert str(w["a"]) in found[0].message and str(w["b"]) in found[0].message


def test_audit_detects_a_double_assignment_in_the_history(ctx, factory):
    queue = ctx
    w = world(factory, queue)
    ticket = w["held_a"][0]
    # Forge the record of a second agent getting the ticket without a release.
    db.session.execute(
        sa.text(
            "INSERT INTO ticket_events (ticket_id, kind, agent_id, at) "
            "VALUES (:t, 'assigned', :b, now())"
        ),
        {"t": ticket, "b": w["b"]},
    )
    db.session.commit()
    assert invariants(audit(db.session, queue, recheck_after=0)) == [("I1", ticket)]


def test_audit_detects_a_sold_ticket_that_changed_hands(ctx, factory):
    queue = ctx
    w = world(factory, queue)
    sold = w["ids"][0]
    db.session.execute(sa.update(Ticket).where(Ticket.id == sold).values(agent_id=w["b"]))
    db.session.commit()
    assert invariants(audit(db.session, queue, recheck_after=0)) == [("I1", sold)]


def test_audit_detects_an_agent_over_capacity(ctx, factory):
    queue = ctx
    w = world(factory, queue)
    spare = w["unassigned"][0]
    db.session.execute(
        sa.update(Ticket).where(Ticket.id == spare).values(status="assigned", agent_id=w["b"])
    )
    db.session.commit()
    queue.dequeue(GENERAL, [spare])
    found = audit(db.session, queue, recheck_after=0)
    assert [(v.invariant, v.agent_id) for v in found] == [("I2", w["b"])]


def test_audit_detects_queue_disorder(ctx, factory):
    queue = ctx
    w = world(factory, queue)
    ticket = w["unassigned"][1]
    queue.client.zadd(queue.queue_key(GENERAL), {str(ticket): 1})
    assert invariants(audit(db.session, queue, recheck_after=0)) == [("I3", ticket)]


def test_audit_detects_a_lost_ticket(ctx, factory):
    queue = ctx
    w = world(factory, queue)
    ticket = w["unassigned"][2]
    queue.dequeue(GENERAL, [ticket])
    assert invariants(audit(db.session, queue, recheck_after=0)) == [("I4", ticket)]
    assert relay(db.session, queue) == 1
    assert audit(db.session, queue, recheck_after=0) == []


def test_audit_detects_queued_tickets_postgres_does_not_have_as_unassigned(ctx, factory):
    queue = ctx
    w = world(factory, queue)
    taken, sold = w["held_b"][0], w["ids"][0]
    queue.client.zadd(queue.queue_key(GENERAL), {str(i): i for i in (taken, sold, 555_555)})
    queue.client.zadd(queue.queue_key(GENERAL), {"junk": 3})
    found = audit(db.session, queue, recheck_after=0)
    assert invariants(found) == [("I5", None)] + [("I5", i) for i in sorted([taken, sold, 555_555])]
    messages = " ".join(v.message for v in found)
    assert "assigned" in messages and "sold" in messages and "deleted" in messages
    rebuild(db.session, queue)
    assert audit(db.session, queue, recheck_after=0) == []


def test_audit_ignores_what_settles_within_the_recheck_delay(ctx, factory):
    """A ticket created a moment ago and pushed a moment later is in flight, not lost."""
    queue = ctx
    w = world(factory, queue)
    ticket = w["unassigned"][0]
    queue.dequeue(GENERAL, [ticket])
    timer = threading.Timer(0.2, lambda: queue.enqueue(in_general(ticket)))
    timer.start()
    try:
        assert audit(db.session, queue, recheck_after=1.0) == []
    finally:
        timer.join()


def test_audit_after_a_wipe_reports_every_unassigned_ticket(ctx, factory):
    queue = ctx
    w = world(factory, queue)
    queue.client.flushdb()
    found = audit(db.session, queue, recheck_after=0)
    assert invariants(found) == [("I4", i) for i in w["unassigned"]]


def test_deleted_ticket_leaves_the_queue_and_audit_stays_clean(ctx, factory, admin):
    queue = ctx
    ids = factory.bulk_tickets(3)
    delete_ticket(db.session, queue, ids[1], actor_id=admin.id)
    assert status_of(ids[1]) is None
    assert audit(db.session, queue, recheck_after=0) == []


# -- command line --------------------------------------------------------------
def test_cli_queue_audit_and_rebuild(app, runner, factory):
    with app.app_context():
        queue = ticket_queue()
        ids = factory.bulk_tickets(3)
        queue.dequeue(GENERAL, [ids[0]])
    result = runner.invoke(args=["queue", "audit"])
    assert result.exit_code == 1
    assert f"I4: ticket {ids[0]} is unassigned" in result.output
    result = runner.invoke(args=["queue", "rebuild", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "would fix: missing 1, extra 0" in result.output
    result = runner.invoke(args=["queue", "rebuild"])
    assert result.exit_code == 0, result.output
    assert "fixed: missing 1, extra 0" in result.output
    result = runner.invoke(args=["queue", "audit"])
    assert result.exit_code == 0, result.output
    assert "no violations" in result.output


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "scripts/rebuild_queue.py", *args],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **service_env(LOG_LEVEL="WARNING")},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_rebuild_script_dry_run_check_and_rebuild(app, factory):
    with app.app_context():
        queue = ticket_queue()
        ids = factory.bulk_tickets(4)
        queue.client.flushdb()
    dry = run_script("--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "missing 4" in dry.stdout and "would fix" in dry.stdout
    with app.app_context():
        assert depth(ticket_queue()) == (0, 0)
    check = run_script("--check")
    assert check.returncode == 1
    assert all(f"I4: ticket {i} is unassigned" in check.stdout for i in ids)
    done = run_script()
    assert done.returncode == 0, done.stderr
    # Redis was empty: a fill, worded as one.
    assert "filled the empty Redis from PostgreSQL: 4 unassigned ticket(s)" in done.stdout
    with app.app_context():
        assert queued_ids(ticket_queue()) == ids
    clean = run_script("--check")
    assert clean.returncode == 0, clean.stdout + clean.stderr
