"""Rebuild Redis from PostgreSQL, safely while the API takes traffic.

    python scripts/rebuild_queue.py            merge PostgreSQL's truth into Redis
    python scripts/rebuild_queue.py --dry-run  report what differs, change nothing
    python scripts/rebuild_queue.py --check    audit the invariants; exit 1 on any violation

The queue, every agent's held set, stale reservations and the token blocklist
are merged (never replaced), then Redis is marked as built. Exit status: 0 on
success, 1 if violations were found (--check) or Redis was wiped while the
rebuild ran (run it again), 2 on a bad configuration.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from service.config import ConfigError, refuse  # noqa: E402

# Phases shorter than this get no progress bar.
BAR_FROM = 10_000


class Bars:
    """One tqdm bar per phase of the rebuild, on large tables only."""

    def __init__(self) -> None:
        self.bars: dict[str, tqdm] = {}

    def __call__(self, phase: str, done: int, total: int) -> None:
        if total < BAR_FROM and phase not in self.bars:
            return
        bar = self.bars.get(phase)
        if bar is None:
            bar = self.bars[phase] = tqdm(
                total=total, desc=phase, unit="id", mininterval=0.5, file=sys.stderr
            )
        bar.total = max(total, done)
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Rebuild Redis's queue and per-agent state from PostgreSQL."
    )
    parser.add_argument("--dry-run", action="store_true", help="report, change nothing")
    parser.add_argument(
        "--check", action="store_true", help="only audit the invariants; exit 1 on a violation"
    )
    args = parser.parse_args(argv)

    # An operator's scan over large tables: allow long statements unless told otherwise.
    os.environ.setdefault("DB_STATEMENT_TIMEOUT_MS", "600000")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    from service import create_app
    from service.domain.audit import audit
    from service.domain.rebuild import rebuild
    from service.extensions import db
    from service.logging import configure_logging

    try:
        configure_logging()
    except ConfigError as exc:
        refuse(exc)
    app = create_app()  # a bad setting stops it with one line and exit status 2
    if app.config["EMBEDDED"]:
        from service.cli import EMBEDDED_REFUSAL

        refuse(EMBEDDED_REFUSAL)
    queue = app.extensions["ticket_queue"]
    with app.app_context():
        if args.check:
            violations = audit(db.session, queue)
            for violation in violations:
                print(violation)
            print(f"{len(violations)} violation(s)" if violations else "no violations")
            return 1 if violations else 0
        bars = Bars()
        try:
            summary = rebuild(db.session, queue, dry_run=args.dry_run, progress=bars)
        finally:
            bars.close()
    print(summary.describe())
    if not args.dry_run and not summary.completed:
        print("Redis lost its data while rebuilding; run the rebuild again", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
