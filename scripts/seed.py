"""Bulk-insert unassigned tickets for benchmarks: ``python scripts/seed.py 1000000``.

One ``INSERT ... SELECT generate_series`` statement, so a million tickets take
seconds. PostgreSQL only. The tickets are not queued: run
``scripts/rebuild_queue.py`` (or the workers) afterwards.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sqlalchemy import text

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from service.domain import DbSession  # noqa: E402

_SEED = text(
    """
    INSERT INTO tickets (title, description, status, created_at, updated_at)
    SELECT 'seeded ticket ' || g, '', 'unassigned', now(), now()
    FROM generate_series(1, :count) AS g
    """
)


def seed_tickets(session: DbSession, count: int) -> None:
    """Insert ``count`` unassigned tickets in one statement and commit."""
    from service.database import patience

    # A million rows take longer than the service's per-statement limit.
    with patience(3600):
        session.execute(text("SET LOCAL statement_timeout = 0"))
        session.execute(_SEED, {"count": count})
        session.commit()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("count", type=int, help="how many tickets to insert")
    args = parser.parse_args(argv)

    from service import create_app
    from service.config import refuse
    from service.extensions import db

    app = create_app()  # a bad setting stops it with one line and exit status 2
    if app.config["EMBEDDED"]:
        refuse("seed.py fills PostgreSQL for benchmarks: set DATABASE_URL and REDIS_URL")
    with app.app_context():
        started = time.monotonic()
        seed_tickets(db.session, args.count)
        print(f"inserted {args.count} tickets in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
