"""A process with more than 1,024 open files still talks to PostgreSQL.

A server process holding a thousand event streams and waiting fetches has
sockets numbered past 1,024, so its new PostgreSQL connections do too. The
driver's wait (service/database.py, ``bound_waits``) must not use ``select()``,
which cannot watch a descriptor past FD_SETSIZE (1,024): every request that
needed a new connection answered 500 in the benchmark's open-connections
scenario until it used ``poll()``.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from flask import Flask

from service.extensions import db

NUMBERED_PAST = 1100


@contextmanager
def files_held_open() -> Iterator[None]:
    """Hold open files until the next descriptor is numbered past 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = NUMBERED_PAST + 200
    assert hard == resource.RLIM_INFINITY or hard >= wanted, (
        f"this test needs {wanted} open files; the hard limit is {hard}"
    )
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    held = []
    try:
        while not held or held[-1] < NUMBERED_PAST:
            held.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_new_connection_numbered_past_1024_works(app: Flask) -> None:
    with app.app_context():
        db.session.remove()
        db.engine.dispose()  # the next statement opens a new connection
        with files_held_open(), db.engine.connect() as conn:
            assert conn.connection.driver_connection.fileno() > 1024
            assert conn.execute(sa.text("SELECT 41 + 1")).scalar() == 42
