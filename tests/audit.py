"""Check the invariants straight from PostgreSQL (and Redis), after a load.

The audit trusts nothing the service says about itself: it reads the tables,
replays the ticket event log, and compares Redis with PostgreSQL.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import redis
import sqlalchemy as sa
from helpers import pending


@dataclass
class AuditReport:
    created: int = 0
    unassigned: int = 0
    assigned: int = 0
    sold: int = 0
    queued: int = 0
    reserved: int = 0
    # agent id -> its unsold ticket ids, ascending
    holdings: dict[int, list[int]] = field(default_factory=dict)
    capacities: dict[int, int] = field(default_factory=dict)
    # ticket id -> agent id, for every sold ticket
    sold_by: dict[int, int] = field(default_factory=dict)
    unassigned_ids: list[int] = field(default_factory=list)
    queue: list[tuple[int, float]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"created={self.created} unassigned={self.unassigned} assigned={self.assigned} "
            f"sold={self.sold} queued={self.queued} reserved={self.reserved}"
        )


def _replay_events(
    conn: sa.Connection,
    tickets: dict[int, tuple[str, int | None]],
    capacities: dict[int, int],
) -> list[str]:
    """Replay the event log in id order.

    I1: a ticket is assigned only while unassigned and sold only by its holder,
    and the replay ends where the tickets table is. I2 over time: no agent ever
    held more than its capacity. Event ids are taken inside each transaction,
    so within one ticket they follow causality; and a confirm that counted a
    sale as done took its ids after that sale's, so the replayed count never
    exceeds what the confirm saw.
    """
    problems: list[str] = []
    state: dict[int, tuple[str, int | None]] = {}
    held: dict[int, int] = defaultdict(int)
    peak: dict[int, int] = defaultdict(int)
    rows = conn.execute(
        sa.text("SELECT ticket_id, kind, agent_id FROM ticket_events ORDER BY id")
    ).all()
    for ticket_id, kind, agent_id in rows:
        status, owner = state.get(ticket_id, ("unassigned", None))
        if kind == "assigned":
            if status != "unassigned":
                problems.append(
                    f"ticket {ticket_id} assigned to {agent_id} while {status} by {owner}"
                )
            state[ticket_id] = ("assigned", agent_id)
            held[agent_id] += 1
            peak[agent_id] = max(peak[agent_id], held[agent_id])
        elif kind in ("released", "deleted", "sold"):
            if status == "assigned" and owner is not None:
                held[owner] -= 1
            if kind == "sold" and (status != "assigned" or owner != agent_id):
                problems.append(f"ticket {ticket_id} sold by {agent_id} while {status} by {owner}")
            if kind == "released" and status != "assigned":
                problems.append(f"ticket {ticket_id} released while {status}")
            state[ticket_id] = {
                "released": ("unassigned", None),
                "deleted": ("deleted", None),
                "sold": ("sold", agent_id),
            }[kind]
    for agent_id, most in peak.items():
        if most > capacities.get(agent_id, 0):
            problems.append(f"agent {agent_id} held {most} tickets at once, over its capacity")
    for ticket_id, now in tickets.items():
        replayed = state.get(ticket_id, ("unassigned", None))
        if replayed != now:
            problems.append(f"ticket {ticket_id} is {now} but its events say {replayed}")
    return problems


def audit(
    engine: sa.Engine,
    client: redis.Redis,
    *,
    created: set[int] | None = None,
    settled: bool = False,
    prefix: str = "{tq}",
) -> AuditReport:
    """Read PostgreSQL and Redis and list every broken invariant in ``problems``.

    The event log is replayed (see ``_replay_events``), so a ticket that ever
    reached two agents, or an agent that ever held more than its capacity, shows
    even if the end state looks right.

    ``created`` is the set of ticket ids the test made: nothing may be lost or
    appear from nowhere. ``settled`` means no request is in flight: then Redis
    must agree with PostgreSQL exactly (queue == unassigned, oldest first,
    no reservation but those of assigned tickets, every held set == the
    agent's unsold tickets).
    """
    report = AuditReport()
    problems = report.problems
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT id, status, agent_id, queue, priority FROM tickets ORDER BY id")
        ).all()
        tickets = {row.id: (row.status, row.agent_id) for row in rows}
        # Where each unassigned ticket must wait: its queue, at priority * 2^50 + id.
        places = {
            row.id: (row.queue, float(row.priority * 2**50 + row.id))
            for row in rows
            if row.status == "unassigned"
        }
        report.capacities = {
            row.id: row.capacity
            for row in conn.execute(
                sa.text("SELECT id, capacity FROM users WHERE role = 'agent'")
            ).all()
        }
        problems.extend(_replay_events(conn, tickets, report.capacities))

    report.created = len(tickets)
    holdings: dict[int, list[int]] = defaultdict(list)
    for ticket_id, (status, holder) in tickets.items():
        if status == "unassigned":
            report.unassigned_ids.append(ticket_id)
        elif status == "assigned":
            assert holder is not None
            holdings[holder].append(ticket_id)
        elif status == "sold":
            assert holder is not None
            report.sold_by[ticket_id] = holder
    report.holdings = dict(holdings)
    report.unassigned = len(report.unassigned_ids)
    report.assigned = sum(len(ids) for ids in holdings.values())
    report.sold = len(report.sold_by)

    if created is not None and set(tickets) != created:
        lost = sorted(created - set(tickets))
        extra = sorted(set(tickets) - created)
        problems.append(f"tickets lost {lost[:20]} or appeared {extra[:20]}")
    if report.unassigned + report.assigned + report.sold != report.created:
        problems.append(f"counts do not add up: {report.summary()}")

    # I2: nobody over capacity.
    for agent_id, ids in holdings.items():
        capacity = report.capacities.get(agent_id)
        if capacity is None or len(ids) > capacity:
            problems.append(f"agent {agent_id} holds {len(ids)} > capacity {capacity}")

    # I4: every unassigned ticket can still be handed out.
    queue_keys = sorted(client.scan_iter(match=f"{prefix}:queue:*", count=1000))
    found: dict[int, list[tuple[str, float]]] = defaultdict(list)
    for key in queue_keys:
        name = key[len(f"{prefix}:queue:") :]
        for member, score in client.zrange(key, 0, -1, withscores=True):
            report.queue.append((int(member), score))
            found[int(member)].append((name, score))
    report.queue.sort(key=lambda pair: pair[0])
    reserved = {int(member) for member in client.zrange(f"{prefix}:reserved", 0, -1)}
    queued = [ticket_id for ticket_id, _ in report.queue]
    left = pending(reserved, tickets)
    report.queued, report.reserved = len(queued), len(left)
    stranded = sorted(set(report.unassigned_ids) - set(queued) - reserved)
    if stranded:
        problems.append(
            f"{len(stranded)} unassigned tickets neither queued nor reserved: {stranded[:20]}"
        )

    if settled:
        if queued != report.unassigned_ids:
            stale = sorted(set(queued) - set(report.unassigned_ids))
            problems.append(
                f"the queues ({len(queued)}) are not the unassigned tickets"
                f" ({report.unassigned}), each once; not unassigned: {stale[:20]}"
            )
        misplaced = sorted(
            ticket_id
            for ticket_id, where in found.items()
            if ticket_id in places and where != [places[ticket_id]]
        )
        if misplaced:
            problems.append(f"tickets not in their own queue at their own score: {misplaced[:20]}")
        if left:
            problems.append(
                f"{len(left)} reservations of tickets not assigned left with no fetch"
                f" in flight: {left[:20]}"
            )
        held_keys = set(client.scan_iter(match=f"{prefix}:held:*", count=1000))
        agents = set(holdings) | {int(key.rsplit(":", 1)[1]) for key in held_keys}
        for agent_id in sorted(agents):
            in_redis = {int(i) for i in client.smembers(f"{prefix}:held:{agent_id}")}
            if in_redis != set(holdings.get(agent_id, [])):
                problems.append(
                    f"held set of agent {agent_id} is {sorted(in_redis)}, "
                    f"PostgreSQL says {holdings.get(agent_id, [])}"
                )
    return report
