"""Fault-injection points for the crash tests.

Off unless the test-only environment enables them: ``TQ_FAULT_INJECTION=1``
and ``TQ_FAULT_KILL_AT=<point>`` make the process SIGKILL itself at that point,
so a test can prove that a crash between any two steps loses nothing.
"""

from __future__ import annotations

import os
import signal

_ENABLED = os.environ.get("TQ_FAULT_INJECTION") == "1"
_KILL_AT = frozenset(filter(None, os.environ.get("TQ_FAULT_KILL_AT", "").split(",")))

POINTS = (
    "ticket.after_insert",  # the INSERT committed, the push to Redis not yet made
    "assign.after_reserve",  # ids popped and reserved, PostgreSQL not yet asked
    "assign.before_commit",  # the confirm ran but did not commit
    "assign.after_confirm",  # the confirm committed, Redis not yet settled
    "sell.after_commit",  # the sale committed, the held set not yet updated
)


def fault_point(name: str) -> None:
    if _ENABLED and name in _KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)
