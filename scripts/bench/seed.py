"""The benchmark's own state: a database and a Redis db, filled in bulk.

Every run starts from a known state: ``agents`` agents with ids 1..agents,
online, each holding ``held`` tickets (the oldest: agent ``k`` holds
``(k-1)*held+1 .. k*held``), then ``unassigned`` queued tickets behind them.
By default every ticket and agent is in the ``general`` queue, as in a
deployment that never names one; with ``queues`` > 1 the tickets are dealt
round-robin over queues ``q00``, ``q01``, ... and each agent belongs to
``per_agent`` of them, spread evenly. Users and tickets are written with
``INSERT ... SELECT generate_series`` and one precomputed password hash; Redis
is rebuilt from PostgreSQL with the product's own ``rebuild()``, and tokens
are minted with flask-jwt-extended inside an app context, not through the API.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from flask_jwt_extended import create_access_token

from service.auth import new_session

from . import TICKET_DESCRIPTION, TICKET_TITLE
from .cpu import BENCH_APP

if TYPE_CHECKING:
    from service.queue import TicketQueue

ROOT = Path(__file__).resolve().parents[2]
# Long enough for any run; the product's default lifetime is an hour.
TOKEN_LIFETIME = timedelta(hours=12)


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str
    jwt_secret: str

    def service_env(self) -> dict[str, str]:
        """The environment the product (and the bench apps) run with."""
        return {
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "JWT_SECRET_KEY": self.jwt_secret,
        }


def with_application_name(url: str, name: str) -> str:
    """``url`` with its connections named ``name`` in ``pg_stat_activity``: how the
    CPU meter tells the workers' backends, the API's and the benchmark's apart."""
    named = sa.engine.make_url(url).update_query_dict({"application_name": name})
    return named.render_as_string(hide_password=False)


def ensure_database(url: str) -> bool:
    """Create the database if it is missing; True if it was created."""
    target = sa.engine.make_url(url)
    admin = sa.create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.scalar(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": target.database}
            )
            if not exists:
                conn.execute(sa.text(f'CREATE DATABASE "{target.database}"'))
            return not exists
    finally:
        admin.dispose()


def migrate(env: dict[str, str]) -> None:
    """``flask --app wsgi db upgrade``, exactly as an operator runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"flask db upgrade failed ({done.returncode}):\n{done.stderr[-3000:]}")


@dataclass(frozen=True)
class SeedInfo:
    agents: int
    capacity: int
    held: int
    unassigned: int
    queued: int
    seconds: float


class Seeder:
    """Owns an app (the product's, for its models, rebuild and JWT settings)."""

    def __init__(self, settings: Settings) -> None:
        from service import create_app

        # Bulk inserts, VACUUM, the rebuild and the audit of a million tickets
        # take longer than the service's statement timeout allows a request.
        # Named, so that the CPU meter does not count its backend as the API's.
        env = {
            **settings.service_env(),
            "DATABASE_URL": with_application_name(settings.database_url, BENCH_APP),
            "DB_STATEMENT_TIMEOUT_MS": "900000",
        }
        self.app = create_app(env=env)

    def close(self) -> None:
        from service.extensions import db

        with self.app.app_context():
            db.session.remove()
            db.engine.dispose()
        self.app.extensions["ticket_queue"].client.close()

    @property
    def queue(self) -> TicketQueue:
        queue: TicketQueue = self.app.extensions["ticket_queue"]
        return queue

    def seed(
        self,
        agents: int,
        capacity: int,
        held: int,
        unassigned: int,
        queues: int = 1,
        per_agent: int = 1,
    ) -> SeedInfo:
        """Replace all state: ``agents`` agents holding ``held`` tickets each, then
        ``unassigned`` queued tickets, in ``queues`` queues (see the module's text)."""
        from service.database import patience

        if queues > 1 and not 1 <= per_agent <= queues:
            raise ValueError(f"agents can be in 1..{queues} queues, not {per_agent}")
        # A million rows take longer than a request's statement may.
        with patience(3600):
            return self._seed(agents, capacity, held, unassigned, queues, per_agent)

    def _seed(
        self, agents: int, capacity: int, held: int, unassigned: int, queues: int, per_agent: int
    ) -> SeedInfo:
        import time

        from service.auth import hash_password
        from service.domain.rebuild import rebuild
        from service.extensions import db

        started = time.monotonic()
        with self.app.app_context():
            session = db.session
            session.execute(
                sa.text(
                    "TRUNCATE users, tickets, ticket_events, revoked_sessions, queue_outbox,"
                    " agent_queues RESTART IDENTITY CASCADE"
                )
            )
            session.execute(sa.text("DELETE FROM queues WHERE name <> 'general'"))
            # Queue k's name: "general" alone, else q00, q01, ...
            name = "'general'" if queues == 1 else "'q' || lpad((({k}) % :queues)::text, 2, '0')"
            if queues > 1:
                session.execute(
                    sa.text(
                        f"INSERT INTO queues (name) SELECT {name.format(k='g')}"
                        " FROM generate_series(0, :queues - 1) AS g"
                    ),
                    {"queues": queues},
                )
            session.execute(
                sa.text(
                    "INSERT INTO users (username, password_hash, role, is_active, capacity,"
                    " status, status_since, created_at) SELECT 'bench-agent-' || g, :hash,"
                    " 'agent', true, :capacity, 'online', now(), now()"
                    " FROM generate_series(1, :n) AS g"
                ),
                {"hash": hash_password("bench-password"), "capacity": capacity, "n": agents},
            )
            # Agent a's j-th queue: a + j * (queues / per_agent), so that the
            # agents' memberships overlap evenly and cover every queue.
            session.execute(
                sa.text(
                    "INSERT INTO agent_queues (agent_id, queue)"
                    f" SELECT u.id, {name.format(k='u.id + j * :stride')}"
                    " FROM users AS u, generate_series(0, :per_agent - 1) AS j"
                ),
                {
                    "queues": queues,
                    "per_agent": per_agent if queues > 1 else 1,
                    "stride": max(queues // max(per_agent, 1), 1),
                },
            )
            # The agent's row names its queues too: the product's fetch reads them there.
            session.execute(
                sa.text(
                    "UPDATE users SET queue_names = q.names FROM (SELECT agent_id,"
                    " string_agg(queue, ',' ORDER BY queue) AS names FROM agent_queues"
                    " GROUP BY agent_id) AS q WHERE users.id = q.agent_id"
                )
            )
            # Held tickets first (the oldest), then the queue behind them. A held
            # ticket is in its agent's first queue, as if it had come from there.
            session.execute(
                sa.text(
                    "INSERT INTO tickets (title, description, status, agent_id, queue,"
                    " created_at, updated_at, assigned_at)"
                    " SELECT :title || ' ' || g, :description, 'assigned',"
                    f" 1 + (g - 1) / :held, {name.format(k='1 + (g - 1) / :held')},"
                    " now(), now(), now() FROM generate_series(1, :n) AS g"
                ),
                {
                    "title": TICKET_TITLE,
                    "description": TICKET_DESCRIPTION,
                    "held": max(held, 1),
                    "n": agents * held,
                    "queues": queues,
                },
            )
            session.execute(
                sa.text(
                    "INSERT INTO tickets (title, description, status, queue, created_at,"
                    f" updated_at) SELECT :title || ' ' || g, :description, 'unassigned',"
                    f" {name.format(k='g')}, now(), now()"
                    " FROM generate_series(:first, :last) AS g"
                ),
                {
                    "title": TICKET_TITLE,
                    "description": TICKET_DESCRIPTION,
                    "first": agents * held + 1,
                    "last": agents * held + unassigned,
                    "queues": queues,
                },
            )
            # The rebuild below queues every ticket: the outbox's notes of the
            # inserts would only give the workers a million rows to drain.
            session.execute(sa.text("TRUNCATE queue_outbox"))
            session.commit()
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE users, agent_queues, tickets, ticket_events")
                # Write the seed's dirty pages out now, not in the middle of the
                # next run (where a million rows' checkpoint took CPU from it).
                conn.exec_driver_sql("CHECKPOINT")
            self.queue.client.flushdb()
            rebuild(session, self.queue)
            queued = self.queue_depth()[0]
        return SeedInfo(
            agents, capacity, agents * held, unassigned, queued, time.monotonic() - started
        )

    def write_tokens(self, path: Path, agents: int, first: int = 1) -> None:
        """One line per agent (ids ``first`` on): ``<id> <access token>``."""
        with self.app.app_context():
            lines = [
                f"{agent} "
                + create_access_token(
                    identity=str(agent),
                    additional_claims={"role": "agent", "ver": 0, "sid": new_session()},
                    expires_delta=TOKEN_LIFETIME,
                )
                for agent in range(first, first + agents)
            ]
        path.write_text("\n".join(lines) + "\n")

    def add_waiting_agents(self, count: int, capacity: int, queue: str) -> int:
        """``count`` more agents, online, holding nothing, in ``queue`` alone, which
        has no tickets: a fetch of theirs with ``?wait=`` waits. Their first id."""
        from service.extensions import db

        with self.app.app_context():
            session = db.session
            session.execute(
                sa.text(
                    "INSERT INTO queues (name, description, created_at)"
                    " VALUES (:queue, 'agents who wait', now()) ON CONFLICT (name) DO NOTHING"
                ),
                {"queue": queue},
            )
            first = int(session.scalar(sa.text("SELECT coalesce(max(id), 0) + 1 FROM users")))
            session.execute(
                sa.text(
                    "INSERT INTO users (username, password_hash, role, is_active, capacity,"
                    " status, created_at) SELECT 'bench-waiting-' || g, 'x', 'agent', true,"
                    " :capacity, 'online', now() FROM generate_series(1, :n) AS g"
                ),
                {"capacity": capacity, "n": count},
            )
            session.execute(
                sa.text(
                    "INSERT INTO agent_queues (agent_id, queue)"
                    " SELECT id, :queue FROM users WHERE id >= :first"
                ),
                {"queue": queue, "first": first},
            )
            session.execute(
                sa.text("UPDATE users SET queue_names = :queue WHERE id >= :first"),
                {"queue": queue, "first": first},
            )
            session.commit()
        return first

    def queue_depth(self) -> tuple[int, int]:
        """(queued in every queue, reserved) in Redis."""
        counts, reserved = self.queue.depth(sorted(self.queue.queue_names()))
        return sum(counts.values()), reserved
