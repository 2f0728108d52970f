"""Per-process handles that live on the app: the Redis client and its scripts."""

from __future__ import annotations

from flask import current_app

from .queue import TicketQueue


def ticket_queue() -> TicketQueue:
    queue: TicketQueue = current_app.extensions["ticket_queue"]
    return queue
