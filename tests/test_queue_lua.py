"""TicketQueue and its Lua scripts, on fakeredis (which runs Lua): no servers needed."""

from __future__ import annotations

import time

import fakeredis
import pytest
from helpers import in_general, queued_ids

from service.models import GENERAL
from service.queue import PRIORITY_SHIFT, Placement, TicketQueue, make_redis, score

LEASE = 30
URGENT, HIGH, NORMAL, LOW = range(4)


@pytest.fixture
def redis_client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(decode_responses=True)


@pytest.fixture
def queue(redis_client: fakeredis.FakeRedis) -> TicketQueue:
    return TicketQueue(redis_client)


def leases(queue: TicketQueue) -> dict[int, float]:
    return {int(i): s for i, s in queue.client.zrange(queue.reserved_key, 0, -1, withscores=True)}


def at(queue_name: str, rank: int, *ids: int) -> list[Placement]:
    return [Placement(i, queue_name, score(rank, i)) for i in ids]


def reserve(queue: TicketQueue, agent: int, capacity: int, known=(), queues=(GENERAL,)):
    return queue.reserve(agent, capacity, LEASE, known=list(known), queues=list(queues))


# -- enqueue ---------------------------------------------------------------------
def test_enqueue_orders_by_ticket_id_whatever_the_push_order(queue):
    assert len(queue.enqueue(in_general(10, 3))) == 2
    assert len(queue.enqueue(in_general(7))) == 1
    assert len(queue.enqueue(in_general(1))) == 1  # an older ticket returned goes ahead
    assert queued_ids(queue) == [1, 3, 7, 10]


def test_enqueue_is_idempotent(queue):
    assert len(queue.enqueue(in_general(1, 2, 3))) == 3
    assert len(queue.enqueue(in_general(2, 3, 4))) == 1
    assert len(queue.enqueue(in_general(1, 1, 1))) == 0
    assert queue.enqueue([]) == []
    assert queued_ids(queue) == [1, 2, 3, 4]


def test_priority_orders_before_age(queue):
    queue.enqueue(at(GENERAL, NORMAL, 1, 2) + at(GENERAL, LOW, 3) + at(GENERAL, URGENT, 9))
    queue.enqueue(at(GENERAL, HIGH, 5))
    assert queued_ids(queue) == [9, 5, 1, 2, 3]
    # Scores stay exact integers, priority above any id the column can hold.
    assert queue.client.zscore(queue.queue_key(GENERAL), "3") == 3 * PRIORITY_SHIFT + 3


def test_enqueue_with_a_new_score_moves_a_queued_ticket(queue):
    queue.enqueue(in_general(1, 2, 3))
    assert queue.enqueue(at(GENERAL, URGENT, 3)) == []  # not new, but moved
    assert queued_ids(queue) == [3, 1, 2]


def test_enqueue_leaves_the_queue_a_ticket_moved_out_of(queue):
    queue.enqueue(in_general(1, 2))
    moved = Placement(2, "billing", score(NORMAL, 2), left=GENERAL)
    assert queue.enqueue([moved]) == [2]
    assert queued_ids(queue) == [1]
    assert queued_ids(queue, "billing") == [2]


def test_enqueue_skips_a_reserved_ticket(queue):
    queue.enqueue(in_general(1))
    assert reserve(queue, 7, 1).ids == [1]
    assert queue.enqueue(in_general(1)) == []  # in flight: queueing it would hand it out twice
    assert queued_ids(queue) == []


def test_remove_takes_ids_out_of_their_queues_and_the_reservations(queue):
    queue.enqueue(in_general(1, 2, 3) + at("billing", NORMAL, 4))
    reserve(queue, 7, 1)
    queue.remove([1, 2, 4], [GENERAL, "billing"])
    assert queued_ids(queue) == [3]
    assert queued_ids(queue, "billing") == []
    assert leases(queue) == {}
    queue.remove([], [GENERAL])  # nothing to do, no error


# -- reserve ---------------------------------------------------------------------
def test_reserve_pops_the_oldest_first_and_records_leases(queue):
    queue.enqueue(in_general(5, 3, 9, 1))
    before = time.time()
    reservation = reserve(queue, 7, 2)
    assert (reservation.used, reservation.popped, reservation.queue_left) == (
        0,
        in_general(1, 3),
        2,
    )
    assert queued_ids(queue) == [5, 9]
    assert queue.held(7) == {1, 3}
    deadlines = leases(queue)
    assert set(deadlines) == {1, 3}
    for deadline in deadlines.values():
        assert before + LEASE - 2 <= deadline <= time.time() + LEASE + 2


def test_reserve_takes_the_best_across_the_agents_queues(queue):
    queue.enqueue(at(GENERAL, NORMAL, 1, 4) + at("billing", NORMAL, 2, 6) + at("fr", HIGH, 8))
    queue.enqueue(at("vip", URGENT, 3))  # not one of the agent's queues
    reservation = reserve(queue, 7, 4, queues=[GENERAL, "billing", "fr"])
    # High first, then the oldest normal ones, whichever queue they are in.
    assert reservation.popped == at("fr", HIGH, 8) + at(GENERAL, NORMAL, 1) + at(
        "billing", NORMAL, 2
    ) + at(GENERAL, NORMAL, 4)
    assert reservation.queue_left == 1
    assert queued_ids(queue, "billing") == [6]
    assert queued_ids(queue, "vip") == [3]


def test_reserve_pops_a_ticket_found_in_two_queues_once(queue):
    """A fault left id 5 in two queues: it is handed out once and leaves both."""
    queue.enqueue(in_general(5, 6) + at("billing", NORMAL, 7))
    queue.client.zadd(queue.queue_key("billing"), {"5": score(NORMAL, 5)})
    reservation = reserve(queue, 7, 2, queues=[GENERAL, "billing"])
    assert reservation.ids == [5, 6]
    assert queued_ids(queue, "billing") == [7]


def test_reserve_never_pops_more_than_the_free_slots(queue):
    queue.enqueue(in_general(*range(1, 21)))
    queue.client.sadd(queue.held_key(7), 100, 101)
    reservation = reserve(queue, 7, 5, known=[100, 101])
    assert reservation.used == 2
    assert reservation.ids == [1, 2, 3]
    assert queue.held(7) == {100, 101, 1, 2, 3}
    # Full now, counting the three in flight: a second call pops nothing.
    again = reserve(queue, 7, 5, known=[100, 101])
    assert (again.used, again.ids, again.queue_left, again.in_flight) == (5, [], 17, [1, 2, 3])
    assert set(leases(queue)) == {1, 2, 3}
    assert queued_ids(queue) == list(range(4, 21))


def test_reserve_rebuilds_a_lost_held_set_from_postgresqls_list(queue):
    """A wiped held set: PostgreSQL's 14 tickets still leave one free slot, not 15."""
    queue.enqueue(in_general(*range(1, 21)))
    known = list(range(100, 114))
    reservation = reserve(queue, 7, 15, known=known)
    assert reservation.used == 14
    assert reservation.ids == [1]
    assert queue.held(7) == {*known, 1}
    assert queued_ids(queue) == list(range(2, 21))


def test_reserve_drops_held_ids_neither_known_nor_in_flight(queue):
    """Sold, released or given back since: they no longer take a slot."""
    queue.enqueue(in_general(*range(1, 21)))
    queue.client.sadd(queue.held_key(8), *range(100, 110))
    reservation = reserve(queue, 8, 5, known=[100, 101])
    assert reservation.used == 2
    assert reservation.ids == [1, 2, 3]
    assert queue.held(8) == {100, 101, 1, 2, 3}


def test_reserve_clears_the_leases_of_ids_postgresql_lists_and_keeps_those_in_flight(queue):
    """The fetch that confirmed 1 and 2 left their leases; the next reserve clears
    them. 3 is not in the list (in flight, or confirmed after it was read): it keeps
    its lease and its slot."""
    queue.enqueue(in_general(*range(1, 11)))
    assert reserve(queue, 7, 3).ids == [1, 2, 3]
    reservation = reserve(queue, 7, 5, known=[1, 2])
    assert reservation.used == 3
    assert reservation.ids == [4, 5]
    assert reservation.in_flight == [3]
    assert set(leases(queue)) == {3, 4, 5}
    assert queue.held(7) == {1, 2, 3, 4, 5}


def test_reserve_for_an_agent_over_capacity_pops_nothing(queue):
    queue.enqueue(in_general(1, 2))
    queue.client.sadd(queue.held_key(7), 50, 51, 52)
    reservation = reserve(queue, 7, 2, known=[50, 51, 52])
    assert (reservation.used, reservation.ids, reservation.queue_left) == (3, [], 2)
    assert queued_ids(queue) == [1, 2]


def test_reserve_from_a_short_or_empty_queue(queue):
    queue.enqueue(in_general(4, 8))
    first = reserve(queue, 1, 15)
    assert (first.used, first.ids, first.queue_left) == (0, [4, 8], 0)
    second = reserve(queue, 2, 15)
    assert (second.used, second.ids, second.queue_left) == (0, [], 0)
    assert queue.held(2) == set()
    assert not queue.client.exists(queue.held_key(2))


def test_reserve_with_no_queues_pops_nothing(queue):
    queue.enqueue(in_general(1))
    assert reserve(queue, 1, 15, queues=[]).ids == []
    assert queued_ids(queue) == [1]


def test_reserve_keeps_agents_apart(queue):
    queue.enqueue(in_general(*range(1, 7)))
    assert reserve(queue, 1, 2).ids == [1, 2]
    assert reserve(queue, 2, 3).ids == [3, 4, 5]
    assert queue.held(1) == {1, 2}
    assert queue.held(2) == {3, 4, 5}
    assert set(leases(queue)) == {1, 2, 3, 4, 5}


# -- settle ----------------------------------------------------------------------
def test_settle_clears_confirmed_drops_vanished_and_returns_refused_to_their_places(queue):
    queue.enqueue(in_general(*range(1, 6)) + at("billing", HIGH, 6, 7))
    reservation = reserve(queue, 7, 5, queues=[GENERAL, "billing"])
    assert reservation.ids == [6, 7, 1, 2, 3]
    refused = [p for p in reservation.popped if p.ticket_id in (7, 3)]
    held_after = queue.settle(7, confirmed=[6, 1], dropped=[2], returned=refused)
    assert held_after == 2
    assert queue.held(7) == {6, 1}  # confirmed stay held
    assert leases(queue) == {}  # every reservation answered
    assert queued_ids(queue) == [3, 4, 5]  # refused ids back at their places; 2 is gone
    assert queued_ids(queue, "billing") == [7]
    assert queue.client.zscore(queue.queue_key("billing"), "7") == score(HIGH, 7)


def test_settle_only_returns_ids_whose_reservation_was_still_ours(queue):
    queue.enqueue(in_general(1, 2, 3))
    reserve(queue, 7, 3)
    # The reaper got there first: 2's lease ended, so it took 2 out of the
    # reservations and out of agent 7's held set and queued it; agent 8 popped it.
    queue.client.zrem(queue.reserved_key, 2)
    queue.client.srem(queue.held_key(7), 2)
    queue.client.zadd(queue.queue_key(GENERAL), {"2": score(NORMAL, 2)})
    assert reserve(queue, 8, 1).ids == [2]
    held_after = queue.settle(7, confirmed=[], dropped=[], returned=in_general(1, 2, 3))
    assert held_after == 0
    assert queue.held(7) == set()
    assert queued_ids(queue) == [1, 3]  # 2 was not ours to return any more
    assert set(leases(queue)) == {2}  # agent 8's reservation is untouched
    assert queue.held(8) == {2}


def test_settle_never_requeues_an_id_whose_reservation_is_gone(queue):
    queue.enqueue(in_general(1, 2))
    reserve(queue, 7, 2)
    # The reservation of 1 ended (the reaper, or a wipe of `reserved`); 1 is
    # still listed in the held set.
    queue.client.zrem(queue.reserved_key, 1)
    assert queue.settle(7, confirmed=[], dropped=[], returned=in_general(1, 2)) == 0
    assert queued_ids(queue) == [2]
    assert queue.held(7) == set()


def test_settle_with_nothing_to_do_reports_the_held_size(queue):
    queue.client.sadd(queue.held_key(7), 1, 2)
    assert queue.settle(7, confirmed=[], dropped=[], returned=[]) == 2


def test_settle_of_a_dropped_id_never_requeues_it(queue):
    queue.enqueue(in_general(1))
    reserve(queue, 7, 1)
    assert queue.settle(7, confirmed=[], dropped=[1], returned=[]) == 0
    assert queued_ids(queue) == []
    assert leases(queue) == {}


# -- reap --------------------------------------------------------------------------
def test_reap_returns_ended_leases_to_their_places_and_leaves_fresh_ones(queue):
    queue.enqueue(in_general(1, 2) + at("billing", URGENT, 3))
    reserve(queue, 7, 3, queues=[GENERAL, "billing"])
    queue.client.zadd(queue.reserved_key, {"1": 10.0, "3": 10.0})  # leases long over
    ends = [(1, in_general(1)[0]), (2, in_general(2)[0]), (3, at("billing", URGENT, 3)[0])]
    assert sorted(queue.reap(ends, cutoff=100.0, held_agents=[7])) == [1, 3]
    assert queued_ids(queue) == [1]
    assert queued_ids(queue, "billing") == [3]
    assert set(leases(queue)) == {2}  # its lease runs on
    assert queue.held(7) == {2}


def test_reap_drops_a_reservation_with_nowhere_to_go(queue):
    queue.enqueue(in_general(1))
    reserve(queue, 7, 1)
    queue.client.zadd(queue.reserved_key, {"1": 10.0})
    assert queue.reap([(1, None)], cutoff=100.0) == [1]
    assert queued_ids(queue) == [] and leases(queue) == {}


# -- resync ----------------------------------------------------------------------
def test_resync_keeps_in_flight_reservations_and_drops_stale_ids(queue):
    queue.enqueue(in_general(30, 31))
    reserve(queue, 7, 1)  # 30 is in flight
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


# -- reading -------------------------------------------------------------------------
def test_depth_counts_each_queue_and_the_reservations(queue):
    queue.enqueue(in_general(*range(1, 6)) + at("billing", LOW, 6))
    reserve(queue, 7, 2)
    assert queue.depth([GENERAL, "billing", "empty"]) == (
        {GENERAL: 3, "billing": 1, "empty": 0},
        2,
    )


def test_queued_between_splits_ticket_ids_from_garbage(queue):
    queue.enqueue(in_general(1, 2, 3) + at(GENERAL, URGENT, 9))
    queue.client.zadd(queue.queue_key(GENERAL), {"junk": 5})
    ids, odd = queue.queued_between(GENERAL, None, None)
    assert ids == [(9, score(URGENT, 9)), (1, score(NORMAL, 1))] + [
        (i, score(NORMAL, i)) for i in (2, 3)
    ]
    assert odd == [("junk", 5.0)]
    ids, _ = queue.queued_between(GENERAL, float(score(NORMAL, 1)), float(score(NORMAL, 2)))
    assert ids == [(2, score(NORMAL, 2))]


def test_lookup_and_absent_read_each_ticket_in_its_own_queue(queue):
    queue.enqueue(in_general(1) + at("billing", NORMAL, 2))
    reserve(queue, 7, 1)  # 1 is reserved now
    places = in_general(1, 2, 3)  # 2 waits in billing, not in general
    queued, reserved = queue.lookup(places)
    assert queued == [None, None, None]
    assert [r is not None for r in reserved] == [True, False, False]
    assert queue.absent(places) == [2, 3]
    assert queue.absent(at("billing", NORMAL, 2)) == []


def test_queue_names_and_drop_queue(queue):
    queue.enqueue(in_general(1) + at("billing", NORMAL, 2))
    assert queue.queue_names() == {GENERAL, "billing"}
    queue.drop_queue("billing")
    assert queue.queue_names() == {GENERAL}
    assert not queue.is_empty()
    queue.drop_queue(GENERAL)
    assert queue.is_empty()


# -- token blocklist and presence ------------------------------------------------------
def test_revocation_is_trusted_only_once_built(queue, redis_client):
    assert queue.revocation("abc") == (False, False)
    queue.mark_built("epoch-1")
    assert queue.revocation("abc") == (False, True)
    queue.revoke("abc", 120)
    assert queue.revocation("abc") == (True, True)
    assert 0 < redis_client.ttl(queue.revoked_key("abc")) <= 120
    queue.revoke("short", 0)  # an already expired token still gets a short entry
    assert redis_client.ttl(queue.revoked_key("short")) >= 1


def test_revocation_notes_the_agent_seen_unless_the_session_logged_out(queue):
    before = time.time()
    assert queue.revocation("live", seen_agent=7) == (False, False)
    (seen,) = queue.seen([7]).values()
    assert before <= seen <= time.time()
    queue.revoke("gone", 60)
    assert queue.revocation("gone", seen_agent=8) == (True, False)
    assert queue.seen([7, 8]) == {7: seen}
    assert queue.seen_after(before - 1, 10) == [(7, seen)]
    assert queue.seen_after(seen, 10) == []


def test_every_key_shares_one_hash_tag(queue):
    keys = [queue.queue_key(GENERAL), queue.reserved_key, queue.epoch_key, queue.held_key(1)]
    keys += [queue.revoked_key("jti"), queue.seen_key, queue.cursor_key("x")]
    assert all(key.startswith("{tq}:") for key in keys)
    other = TicketQueue(queue.client, prefix="{other}")
    other.enqueue(in_general(1))
    assert queued_ids(other) == [1]
    assert queued_ids(queue) == []


def test_the_embedded_client_runs_the_scripts():
    embedded = TicketQueue(make_redis(None, cluster=False))
    embedded.enqueue(in_general(2, 1))
    assert embedded.reserve(1, 1, LEASE, known=[], queues=[GENERAL]).ids == [1]
    assert embedded.settle(1, confirmed=[1], dropped=[], returned=[]) == 1
    # Each embedded client is its own in-process server.
    assert TicketQueue(make_redis(None, cluster=False)).depth([GENERAL]) == ({GENERAL: 0}, 0)


# -- what the scripts tell waiting fetches, and the places of long connections --------
def published(pubsub) -> list[str]:
    messages = []
    while (message := pubsub.get_message(timeout=0.05)) is not None:
        if message["type"] == "message":
            messages.append(message["data"])
    return messages


@pytest.fixture
def arrivals(queue):
    pubsub = queue.client.pubsub()
    pubsub.subscribe(queue.arrivals_channel)
    published(pubsub)  # the subscription's confirmation
    yield pubsub
    pubsub.close()


def test_enqueue_publishes_what_entered_each_queue(queue, arrivals):
    queue.enqueue(in_general(1, 2) + at("billing", HIGH, 3))
    assert published(arrivals) == ["general=2,billing=1"]
    queue.enqueue(in_general(1, 2))  # already queued: nothing entered
    assert published(arrivals) == []
    reserve(queue, 7, 1)  # popping tells nobody
    assert published(arrivals) == []
    # A move out of billing into general is an arrival in general only.
    queue.enqueue([Placement(3, GENERAL, score(HIGH, 3), left="billing")])
    assert published(arrivals) == ["general=1"]


def test_settle_and_reap_publish_what_went_back(queue, arrivals):
    queue.enqueue(in_general(1, 2, 3))
    published(arrivals)
    reservation = reserve(queue, 7, 3)
    queue.settle(7, confirmed=[1], dropped=[2], returned=reservation.popped[2:])
    assert published(arrivals) == ["general=1"]
    reserve(queue, 8, 1)
    queue.reap([(3, in_general(3)[0])], cutoff=time.time() + LEASE + 60, held_agents=[8])
    assert published(arrivals) == ["general=1"]
    queue.reap([(3, None)], cutoff=time.time() + LEASE + 60)  # nothing reserved: no news
    assert published(arrivals) == []


def test_the_session_check_says_whether_a_stream_is_open_anywhere(queue):
    assert queue.check_session("abc", seen_agent=7).streaming is False
    assert queue.check_session("abc").streaming is False
    assert queue.mark_streaming(30) is False  # the flag was down
    assert queue.mark_streaming(30) is True
    assert queue.check_session("abc", seen_agent=7) == (False, False, True)
    assert queue.check_session("abc") == (False, False, True)


def test_places_are_bounded_per_user_and_in_all_and_end_with_their_lease(queue):
    assert queue.take_slot("stream", 1, "a", 60, per_user=2, total=3) == 0
    assert queue.take_slot("stream", 1, "b", 60, per_user=2, total=3) == 0
    assert queue.take_slot("stream", 1, "c", 60, per_user=2, total=3) == 1  # the user's limit
    assert queue.take_slot("stream", 2, "c", 60, per_user=2, total=3) == 0
    assert queue.take_slot("stream", 3, "d", 60, per_user=2, total=3) == 2  # the total
    assert queue.take_slot("wait", 3, "d", 60, per_user=2, total=3) == 0  # another kind
    queue.free_slot("stream", 1, "a")
    assert queue.take_slot("stream", 3, "d", 60, per_user=2, total=3) == 0
    # A place whose lease passed (its process died) is dropped by the next taker;
    # a renewed one is not.
    assert queue.take_slot("wait", 4, "short", 0.05, per_user=1, total=3) == 0
    assert queue.take_slot("wait", 5, "renewed", 0.05, per_user=1, total=3) == 0
    assert queue.renew_slots("wait", [("renewed", 5), ("gone", 5)], 60) == 1
    time.sleep(0.1)
    assert queue.take_slot("wait", 6, "new", 60, per_user=1, total=3) == 0
    assert queue.take_slot("wait", 7, "more", 60, per_user=1, total=3) == 2
    assert set(queue.client.zrange(queue.slots_key("wait"), 0, -1)) == {"d", "new", "renewed"}
