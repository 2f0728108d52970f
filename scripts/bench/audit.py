"""The invariant audit run after every scenario; any violation fails the benchmark.

The product is checked with its own audit (``service.domain.audit.audit``); the
PostgreSQL-only baseline, which keeps no Redis state, with a SQL check of I1 and I2.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

# I2: no agent holds more unsold tickets than its capacity.
OVER_CAPACITY = sa.text(
    "SELECT t.agent_id, count(*) AS held, u.capacity FROM tickets t"
    " JOIN users u ON u.id = t.agent_id WHERE t.status = 'assigned'"
    " GROUP BY t.agent_id, u.capacity HAVING count(*) > u.capacity ORDER BY t.agent_id LIMIT 20"
)
# I1: a ticket was handed to one agent only (unless it went back to the pool
# in between), and the agent PostgreSQL names is the one it was handed to; a
# sold ticket stays with its seller.
TWO_HOLDERS = sa.text(
    "SELECT e.ticket_id, count(DISTINCT e.agent_id) AS holders FROM ticket_events e"
    " WHERE e.kind = 'assigned' AND NOT EXISTS (SELECT 1 FROM ticket_events r"
    " WHERE r.ticket_id = e.ticket_id AND r.kind = 'released')"
    " GROUP BY e.ticket_id HAVING count(DISTINCT e.agent_id) > 1 ORDER BY e.ticket_id LIMIT 20"
)
WRONG_HOLDER = sa.text(
    "SELECT t.id, t.agent_id, e.kind, e.agent_id AS event_agent FROM tickets t"
    " JOIN ticket_events e ON e.ticket_id = t.id"
    " WHERE t.status IN ('assigned', 'sold') AND e.kind IN ('assigned', 'sold')"
    " AND e.agent_id IS DISTINCT FROM t.agent_id AND NOT EXISTS (SELECT 1 FROM ticket_events r"
    " WHERE r.ticket_id = t.id AND r.kind = 'released')"
    " ORDER BY t.id LIMIT 20"
)


def sql_audit(conn: sa.Connection) -> list[str]:
    """I1 and I2 in plain SQL: what any target (the baseline too) must keep."""
    found = [
        f"I2: agent {r.agent_id} holds {r.held} unsold tickets, capacity {r.capacity}"
        for r in conn.execute(OVER_CAPACITY)
    ]
    found += [
        f"I1: ticket {r.ticket_id} was assigned to {r.holders} agents"
        for r in conn.execute(TWO_HOLDERS)
    ]
    found += [
        f"I1: ticket {r.id} is with agent {r.agent_id} but its {r.kind} event names {r.event_agent}"
        for r in conn.execute(WRONG_HOLDER)
    ]
    return found


def audit_product(app: Any) -> tuple[str, list[str]]:
    """(which audit ran, violations) for the product's state: the product's own audit."""
    from service.domain.audit import audit
    from service.extensions import db

    with app.app_context():
        violations = [str(v) for v in audit(db.session, app.extensions["ticket_queue"])]
        db.session.rollback()
    return "service.domain.audit", violations


def audit_baseline(app: Any) -> tuple[str, list[str]]:
    """The baseline keeps no Redis state: only the SQL check applies."""
    from service.extensions import db

    with app.app_context(), db.engine.connect() as conn:
        return "bench SQL (I1, I2)", sql_audit(conn)
