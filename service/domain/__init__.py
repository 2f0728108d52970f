"""Domain logic: plain functions over a session and a ``TicketQueue``.

Views, workers and scripts call these; none of them re-implements a rule.
Functions that must touch Redis after PostgreSQL commit their own
transaction first (Redis may only ever reflect committed truth).
"""
