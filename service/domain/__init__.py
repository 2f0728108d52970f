"""Domain logic: plain functions over a session and a ``TicketQueue``.

Views, workers and scripts call these; none of them re-implements a rule.
Functions that must touch Redis after PostgreSQL commit their own
transaction first (Redis may only ever reflect committed truth).
"""

from typing import Any, TypeAlias

from sqlalchemy.orm import Session, scoped_session

# A plain session (workers, scripts) or Flask-SQLAlchemy's scoped one (views).
DbSession: TypeAlias = Session | scoped_session[Any]
