"""Fault-injection points for the crash tests.

Off unless the test-only environment enables them: ``TQ_FAULT_INJECTION=1``
and ``TQ_FAULT_KILL_AT=<point>`` make the process SIGKILL itself at that point,
so a test can prove that a crash between any two steps loses nothing.

``TQ_FAULT_ONCE_FILE=<path>`` makes each kill a one-off: a point fires only
while that file exists, and deletes it before killing. A server's respawned
worker inherits the same environment, so without it every later request that
reaches the point would die too.
"""

from __future__ import annotations

import os
import signal

_ENABLED = os.environ.get("TQ_FAULT_INJECTION") == "1"
_KILL_AT = frozenset(filter(None, os.environ.get("TQ_FAULT_KILL_AT", "").split(",")))
_ONCE_FILE = os.environ.get("TQ_FAULT_ONCE_FILE") or None

POINTS = (
    "ticket.after_insert",  # the INSERT committed, the push to Redis not yet made
    "assign.after_reserve",  # ids popped and reserved, PostgreSQL not yet asked
    "assign.before_commit",  # the confirm ran but did not commit
    "assign.after_confirm",  # the confirm committed, Redis not yet settled
    "sell.after_commit",  # the sale committed, the held set not yet updated
    "ticket.after_move",  # a queue or priority change committed, Redis not yet moved
    "release.after_commit",  # an admin's release committed, the ticket not yet requeued
    "assign_ticket.after_commit",  # an admin's assign committed, Redis not yet updated
    "webhooks.before_fanout_commit",  # deliveries inserted, the feed position not yet moved
    "webhooks.after_send",  # a webhook answered, the outcome not yet recorded
)


def fault_point(name: str) -> None:
    if not (_ENABLED and name in _KILL_AT):
        return
    if _ONCE_FILE is not None:
        try:
            # Deleting the file claims the one kill: of processes racing here,
            # exactly one succeeds.
            os.remove(_ONCE_FILE)
        except FileNotFoundError:
            return
    os.kill(os.getpid(), signal.SIGKILL)
