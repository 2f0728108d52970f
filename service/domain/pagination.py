"""Keyset cursors over id order.

A cursor is the last id of the page before, as a decimal string, and any such
string is a cursor: one beyond every id gives an empty page. So a client can
never send a well-formed cursor the server refuses (the document gives the
pattern), and nothing in it needs hiding: it only says where a page ends.
"""

from __future__ import annotations

from typing import Any

# The largest id of any table (a 64-bit key); a larger cursor is past every id.
MAX_ID = 2**63 - 1


def encode_cursor(last_id: int) -> str:
    return str(last_id)


def decode_cursor(cursor: str | None) -> int | None:
    """The id a page starts after (the schema has checked the cursor is digits)."""
    if cursor is None:
        return None
    return min(int(cursor), MAX_ID)


def page(rows: list[Any], limit: int) -> tuple[list[Any], str | None]:
    """Split ``limit + 1`` fetched rows into a page and the cursor of the next one."""
    if len(rows) > limit:
        rows = rows[:limit]
        return rows, encode_cursor(rows[-1].id)
    return rows, None
