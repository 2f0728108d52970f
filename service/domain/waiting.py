"""A fetch that waits for work (``?wait=``): the normal fetch, then, if it assigned
nothing because the agent's queues are empty, a wait for a ticket to arrive.

The wait costs no query: the process's hub (service/live.py) wakes the fetch
when the Lua script that queued a ticket in one of the agent's queues
published it (at most as many fetches per process as tickets arrived). A
woken fetch runs the normal fetch again, whose row locks decide who gets a
ticket: of two agents woken for one ticket, one gets it and the other waits
on. It answers as soon as it has assigned something, when the agent can no
longer take work (away, offline, full, in no queue), when its session or
account ends (401), and at the end of the wait with what the agent holds.
"""

from __future__ import annotations

import time

from flask import g, request

from .. import errors
from ..auth import Claims, session_revoked
from ..live import Live, Mark, Waiter, watch_client
from ..queue import TicketQueue
from . import DbSession, assignment
from .assignment import Holding


def assign_waiting(
    session: DbSession,
    queue: TicketQueue,
    caller: Claims,
    lease_seconds: int,
    wait_seconds: float,
    live: Live,
) -> Holding:
    """``assignment.assign``, waiting up to ``wait_seconds`` for a ticket when it
    would assign nothing because the agent's queues are empty."""
    # What the hub had heard before the fetch: an arrival it hears between the
    # fetch and the registration below wakes the waiter at once. A process
    # whose hub has not started yet has heard nothing: its first waiter fetches
    # once more as soon as the hub listens.
    started_hub = live.started()
    mark = started_hub.mark() if started_hub is not None else Mark(-1, 0)
    result = assignment.assign(session, queue, caller, lease_seconds)
    if result.assigned or not result.takes_work:
        return result
    hub = live.hub()
    place = hub.slots.take("wait", caller.user_id)  # 429 past the limits: nothing changed
    hub.wake_keeper()
    started = time.monotonic()
    deadline = started + wait_seconds
    waiter = Waiter(caller.user_id, caller.session, result.queues)
    hub.register(waiter, mark)
    unwatch = watch_client(request.environ, lambda: hub.gone(waiter))
    try:
        while True:
            session.rollback()  # hold no connection while waiting
            reason = hub.wait(waiter, deadline - time.monotonic())
            if reason == "gone":
                return result  # the client closed its connection: nobody reads the answer
            if reason is None or reason == "shutdown":
                # Nothing arrived (or the process stops): what the agent holds now.
                return assignment.holding(session, caller)
            if session_revoked(caller.session, caller.user_id):  # as every fetch checks
                raise errors.Unauthorized("the token was revoked", code="token_revoked")
            mark = hub.mark()
            result = assignment.assign(session, queue, caller, lease_seconds)
            hub.fetched(waiter, result.queue_left)
            if result.assigned or not result.takes_work:
                return result
            hub.rearm(waiter, result.queues, mark)
    finally:
        unwatch()
        hub.unregister(waiter)
        hub.slots.free(place)
        g.waited_seconds = time.monotonic() - started
