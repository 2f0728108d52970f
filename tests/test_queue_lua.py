"""TicketQueue and its Lua scripts, on fakeredis (which runs Lua): no servers needed."""

from __future__ import annotations

import time

import fakeredis
import pytest
from helpers import queued_ids

from service.queue import Reservation, TicketQueue, make_redis

LEASE = 30


@pytest.fixture
def redis_client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(decode_responses=True)


@pytest.fixture
def queue(redis_client: fakeredis.FakeRedis) -> TicketQueue:
    return TicketQueue(redis_client)


def leases(queue: TicketQueue) -> dict[int, float]:
    return {int(i): s for i, s in queue.client.zrange(queue.reserved_key, 0, -1, withscores=True)}


# -- push ------------------------------------------------------------------------
def test_push_orders_by_ticket_id_whatever_the_push_order(queue):
    assert len(queue.enqueue([10, 3])) == 2
    assert len(queue.enqueue([7])) == 1
    assert len(queue.enqueue([1])) == 1  # an older ticket returned to the pool goes ahead
    assert queued_ids(queue) == [1, 3, 7, 10]


def test_push_is_idempotent(queue):
    assert len(queue.enqueue([1, 2, 3])) == 3
    assert len(queue.enqueue([2, 3, 4])) == 1
    assert len(queue.enqueue([1, 1, 1])) == 0
    assert len(queue.enqueue([])) == 0
    assert queued_ids(queue) == [1, 2, 3, 4]


def test_remove_takes_an_id_out_of_the_queue_and_the_reservations(queue):
    queue.enqueue([1, 2, 3])
    queue.reserve(agent_id=7, capacity=1, lease_seconds=LEASE, known=[])
    queue.remove([1, 2])
    assert queued_ids(queue) == [3]
    assert leases(queue) == {}
    queue.remove([])  # nothing to do, no error


# -- reserve ---------------------------------------------------------------------
def test_reserve_pops_the_oldest_first_and_records_leases(queue):
    queue.enqueue([5, 3, 9, 1])
    before = time.time()
    reservation = queue.reserve(agent_id=7, capacity=2, lease_seconds=LEASE, known=[])
    assert reservation == Reservation(used=0, ids=[1, 3], queue_left=2)
    assert queued_ids(queue) == [5, 9]
    assert queue.held(7) == {1, 3}
    deadlines = leases(queue)
    assert set(deadlines) == {1, 3}
    for deadline in deadlines.values():
        assert before + LEASE - 2 <= deadline <= time.time() + LEASE + 2


def test_reserve_never_pops_more_than_the_free_slots(queue):
    queue.enqueue(range(1, 21))
    queue.client.sadd(queue.held_key(7), 100, 101)
    reservation = queue.reserve(agent_id=7, capacity=5, lease_seconds=LEASE, known=[100, 101])
    assert reservation.used == 2
    assert reservation.ids == [1, 2, 3]
    assert queue.held(7) == {100, 101, 1, 2, 3}
    # Full now, counting the three in flight: a second call pops nothing.
    again = queue.reserve(agent_id=7, capacity=5, lease_seconds=LEASE, known=[100, 101])
    assert again == Reservation(used=5, ids=[], queue_left=17, in_flight=[1, 2, 3])
    assert set(leases(queue)) == {1, 2, 3}
    assert queued_ids(queue) == list(range(4, 21))


def test_reserve_rebuilds_a_lost_held_set_from_postgresqls_list(queue):
    """A wiped held set: PostgreSQL's 14 tickets still leave one free slot, not 15."""
    queue.enqueue(range(1, 21))
    known = list(range(100, 114))
    reservation = queue.reserve(agent_id=7, capacity=15, lease_seconds=LEASE, known=known)
    assert reservation.used == 14
    assert reservation.ids == [1]
    assert queue.held(7) == {*known, 1}
    assert queued_ids(queue) == list(range(2, 21))


def test_reserve_drops_held_ids_neither_known_nor_in_flight(queue):
    """Sold, released or given back since: they no longer take a slot."""
    queue.enqueue(range(1, 21))
    queue.client.sadd(queue.held_key(8), *range(100, 110))
    reservation = queue.reserve(agent_id=8, capacity=5, lease_seconds=LEASE, known=[100, 101])
    assert reservation.used == 2
    assert reservation.ids == [1, 2, 3]
    assert queue.held(8) == {100, 101, 1, 2, 3}


def test_reserve_clears_the_leases_of_ids_postgresql_lists_and_keeps_those_in_flight(queue):
    """The fetch that confirmed 1 and 2 left their leases; the next reserve clears
    them. 3 is not in the list (in flight, or confirmed after it was read): it keeps
    its lease and its slot."""
    queue.enqueue(range(1, 11))
    assert queue.reserve(agent_id=7, capacity=3, lease_seconds=LEASE, known=[]).ids == [1, 2, 3]
    reservation = queue.reserve(agent_id=7, capacity=5, lease_seconds=LEASE, known=[1, 2])
    assert reservation.used == 3
    assert reservation.ids == [4, 5]
    assert reservation.in_flight == [3]
    assert set(leases(queue)) == {3, 4, 5}
    assert queue.held(7) == {1, 2, 3, 4, 5}


def test_reserve_for_an_agent_over_capacity_pops_nothing(queue):
    queue.enqueue([1, 2])
    queue.client.sadd(queue.held_key(7), 50, 51, 52)
    reservation = queue.reserve(agent_id=7, capacity=2, lease_seconds=LEASE, known=[50, 51, 52])
    assert reservation == Reservation(used=3, ids=[], queue_left=2)
    assert queued_ids(queue) == [1, 2]


def test_reserve_from_a_short_or_empty_queue(queue):
    queue.enqueue([4, 8])
    assert queue.reserve(agent_id=1, capacity=15, lease_seconds=LEASE, known=[]) == Reservation(
        used=0, ids=[4, 8], queue_left=0
    )
    assert queue.reserve(agent_id=2, capacity=15, lease_seconds=LEASE, known=[]) == Reservation(
        used=0, ids=[], queue_left=0
    )
    assert queue.held(2) == set()
    assert not queue.client.exists(queue.held_key(2))


def test_reserve_keeps_agents_apart(queue):
    queue.enqueue(range(1, 7))
    assert queue.reserve(agent_id=1, capacity=2, lease_seconds=LEASE, known=[]).ids == [1, 2]
    assert queue.reserve(agent_id=2, capacity=3, lease_seconds=LEASE, known=[]).ids == [3, 4, 5]
    assert queue.held(1) == {1, 2}
    assert queue.held(2) == {3, 4, 5}
    assert set(leases(queue)) == {1, 2, 3, 4, 5}


# -- settle ----------------------------------------------------------------------
def test_settle_clears_confirmed_drops_vanished_and_returns_refused(queue):
    queue.enqueue(range(1, 8))
    reservation = queue.reserve(agent_id=7, capacity=5, lease_seconds=LEASE, known=[])
    assert reservation.ids == [1, 2, 3, 4, 5]
    held_after = queue.settle(7, confirmed=[1, 2], dropped=[3], returned=[4, 5])
    assert held_after == 2
    assert queue.held(7) == {1, 2}  # confirmed stay held
    assert leases(queue) == {}  # every reservation answered
    assert queued_ids(queue) == [4, 5, 6, 7]  # refused ids back at the head; 3 is gone


def test_settle_only_returns_ids_whose_reservation_was_still_ours(queue):
    queue.enqueue([1, 2, 3])
    queue.reserve(agent_id=7, capacity=3, lease_seconds=LEASE, known=[])
    # The reaper got there first: 2's lease ended, so it took 2 out of the
    # reservations and out of agent 7's held set and queued it; agent 8 popped it.
    queue.client.zrem(queue.reserved_key, 2)
    queue.client.srem(queue.held_key(7), 2)
    queue.client.zadd(queue.queue_key, {"2": 2})
    assert queue.reserve(agent_id=8, capacity=1, lease_seconds=LEASE, known=[]).ids == [2]
    held_after = queue.settle(7, confirmed=[], dropped=[], returned=[1, 2, 3])
    assert held_after == 0
    assert queue.held(7) == set()
    assert queued_ids(queue) == [1, 3]  # 2 was not ours to return any more
    assert set(leases(queue)) == {2}  # agent 8's reservation is untouched
    assert queue.held(8) == {2}


def test_settle_never_requeues_an_id_whose_reservation_is_gone(queue):
    queue.enqueue([1, 2])
    queue.reserve(agent_id=7, capacity=2, lease_seconds=LEASE, known=[])
    # The reservation of 1 ended (the reaper, or a wipe of `reserved`); 1 is
    # still listed in the held set.
    queue.client.zrem(queue.reserved_key, 1)
    assert queue.settle(7, confirmed=[], dropped=[], returned=[1, 2]) == 0
    assert queued_ids(queue) == [2]
    assert queue.held(7) == set()


def test_settle_with_nothing_to_do_reports_the_held_size(queue):
    queue.client.sadd(queue.held_key(7), 1, 2)
    assert queue.settle(7, confirmed=[], dropped=[], returned=[]) == 2


def test_settle_of_a_dropped_id_never_requeues_it(queue):
    queue.enqueue([1])
    queue.reserve(agent_id=7, capacity=1, lease_seconds=LEASE, known=[])
    assert queue.settle(7, confirmed=[], dropped=[1], returned=[]) == 0
    assert queued_ids(queue) == []
    assert leases(queue) == {}


# -- resync ----------------------------------------------------------------------
def test_resync_keeps_in_flight_reservations_and_drops_stale_ids(queue):
    queue.enqueue([30, 31])
    queue.reserve(agent_id=7, capacity=1, lease_seconds=LEASE, known=[])  # 30 is in flight
    queue.client.sadd(queue.held_key(7), 2, 99)  # 2 sold since, 99 never existed
    size = queue.resync_held(7, [1, 5])  # PostgreSQL: the agent holds 1 and 5
    assert size == 3
    assert queue.held(7) == {1, 5, 30}
    # 30's reservation lingers, but PostgreSQL has it as someone else's: it goes.
    assert queue.resync_held(7, [1, 5], gone=[30]) == 2
    assert queue.held(7) == {1, 5}


def test_resync_to_nothing(queue):
    queue.client.sadd(queue.held_key(7), 1, 2, 3)
    assert queue.resync_held(7, []) == 0
    assert queue.held(7) == set()


def test_resync_of_a_lost_set_restores_it(queue):
    assert queue.resync_held(7, [3, 1, 2]) == 3
    assert queue.held(7) == {1, 2, 3}


def test_forget_and_drop_held(queue):
    queue.client.sadd(queue.held_key(7), 1, 2, 3)
    queue.forget_held(7, [2])
    queue.forget_held(7, [])
    assert queue.held(7) == {1, 3}
    queue.drop_agent(7)
    assert queue.held(7) == set()


def test_depth_counts_queued_and_reserved(queue):
    queue.enqueue(range(1, 6))
    queue.reserve(agent_id=7, capacity=2, lease_seconds=LEASE, known=[])
    assert queue.depth() == (3, 2)


def test_revocation_is_trusted_only_once_built(queue, redis_client):
    assert queue.revocation("abc") == (False, False)
    queue.mark_built("epoch-1")
    assert queue.revocation("abc") == (False, True)
    queue.revoke("abc", 120)
    assert queue.revocation("abc") == (True, True)
    assert 0 < redis_client.ttl(queue.revoked_key("abc")) <= 120
    queue.revoke("short", 0)  # an already expired token still gets a short entry
    assert redis_client.ttl(queue.revoked_key("short")) >= 1


def test_every_key_shares_one_hash_tag(queue):
    keys = [queue.queue_key, queue.reserved_key, queue.epoch_key, queue.held_key(1)]
    keys.append(queue.revoked_key("jti"))
    assert all(key.startswith("{tq}:") for key in keys)
    other = TicketQueue(queue.client, prefix="{other}")
    other.enqueue([1])
    assert queued_ids(other) == [1]
    assert queued_ids(queue) == []


def test_the_embedded_client_runs_the_scripts():
    embedded = TicketQueue(make_redis(None, cluster=False))
    embedded.enqueue([2, 1])
    assert embedded.reserve(agent_id=1, capacity=1, lease_seconds=LEASE, known=[]).ids == [1]
    assert embedded.settle(1, confirmed=[1], dropped=[], returned=[]) == 1
    # Each embedded client is its own in-process server.
    assert TicketQueue(make_redis(None, cluster=False)).depth() == (0, 0)
