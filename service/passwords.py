"""Password hashing with argon2: every check costs the same, off the event loop, a few at a time.

* **The same cost for every failed login.** An unknown or inactive username is
  checked against a hash of a random password, so a failed login takes as long
  whether or not the account exists: the timing tells nothing.
* **Off the event loop.** A check is about a tenth of a second of CPU. Under
  gevent it runs on the hub's pool of real threads (argon2 releases the GIL),
  so the worker's other connections are served meanwhile.
* **A bounded number at once.** At most ``CONCURRENT_HASHES`` checks run in a
  process; more wait their turn. With the login limits (service/ratelimit.py)
  this bounds the CPU a password spray can take.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

CONCURRENT_HASHES = 2

T = TypeVar("T")

_hasher = PasswordHasher()
_slots = threading.BoundedSemaphore(CONCURRENT_HASHES)
_decoy: list[str] = []


def _off_the_loop(work: Callable[[], T]) -> T:
    """Run ``work`` on a real thread when gevent serves this process, else right here."""
    with _slots:
        try:
            from gevent import get_hub
            from gevent.monkey import is_module_patched
        except ImportError:  # pragma: no cover - gevent is a runtime dependency
            return work()
        if not is_module_patched("threading"):
            return work()
        result: T = get_hub().threadpool.apply(work)
        return result


def hash_password(password: str) -> str:
    return _off_the_loop(lambda: _hasher.hash(password))


def _decoy_hash() -> str:
    """A hash of a random password, made once per process, for accounts that do not exist."""
    if not _decoy:
        _decoy.append(hash_password(secrets.token_urlsafe(16)))
    return _decoy[0]


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches ``password_hash``; with no hash (no such account, or
    one that may not log in), the same work against a decoy, and False."""
    decoy = _decoy_hash()  # made on the first check of either kind: no first-time tell
    target = password_hash or decoy

    def check() -> bool:
        try:
            return _hasher.verify(target, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    matched = _off_the_loop(check)
    return matched and password_hash is not None
