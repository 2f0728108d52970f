"""hardening: token versions, sessions, case-insensitive usernames, ids never reused

- users.token_version: bumped by a password change or a deactivation, so the
  tokens issued before stop working.
- revoked_sessions replaces revoked_tokens: logout ends a whole session (the
  access token, its refresh token, and what was refreshed from it). Tokens
  issued before this revision carry no session and no version, so they stop
  working: everyone logs in again once.
- usernames are unique regardless of case (a unique index on lower(username)).
- SQLite (embedded mode): tickets and ticket_events get AUTOINCREMENT, so a
  deleted ticket's id, and the history kept under it, is never handed to a
  new ticket.

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def _refuse_case_duplicates():
    conn = op.get_bind()
    rows = conn.execute(sa.text(
        "SELECT lower(username) AS name, count(*) AS n FROM users"
        " GROUP BY lower(username) HAVING count(*) > 1 ORDER BY 1"
    )).all()
    if rows:
        names = ", ".join(f"{r.name!r} ({r.n} accounts)" for r in rows[:20])
        raise RuntimeError(
            "usernames must be unique regardless of case, and these are not: "
            f"{names}. Rename or deactivate-and-rename the extra accounts, then migrate again."
        )


def upgrade():
    _refuse_case_duplicates()
    dialect = op.get_bind().dialect.name
    if dialect == 'sqlite':
        for table in ('tickets', 'ticket_events'):
            with op.batch_alter_table(
                table, recreate='always', table_kwargs={'sqlite_autoincrement': True}
            ):
                pass
        # Ids deleted before this revision are not reused either: start after
        # every id the history has seen.
        op.execute(
            "UPDATE sqlite_sequence SET seq = max(seq,"
            " (SELECT coalesce(max(ticket_id), 0) FROM ticket_events))"
            " WHERE name = 'tickets'"
        )
        op.execute(
            "INSERT INTO sqlite_sequence (name, seq) SELECT 'tickets',"
            " max((SELECT coalesce(max(id), 0) FROM tickets),"
            " (SELECT coalesce(max(ticket_id), 0) FROM ticket_events))"
            " WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'tickets')"
        )
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column(
            'token_version', sa.Integer(), server_default=sa.text('0'), nullable=False
        ))
        if dialect == 'postgresql':
            batch_op.drop_constraint('users_username_key', type_='unique')
    if dialect == 'sqlite':
        # SQLite's inline UNIQUE has no name: give it one to drop it (the table is rebuilt).
        with op.batch_alter_table(
            'users', naming_convention={'uq': 'uq_%(table_name)s_%(column_0_name)s'}
        ) as batch_op:
            batch_op.drop_constraint('uq_users_username', type_='unique')
    op.create_index('uq_users_username_lower', 'users', [sa.text('lower(username)')], unique=True)

    op.drop_table('revoked_tokens')
    op.create_table(
        'revoked_sessions',
        sa.Column('sid', sa.String(length=64), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('sid'),
    )
    op.create_index('ix_revoked_sessions_expires_at', 'revoked_sessions', ['expires_at'])


def downgrade():
    dialect = op.get_bind().dialect.name
    op.drop_index('ix_revoked_sessions_expires_at', table_name='revoked_sessions')
    op.drop_table('revoked_sessions')
    op.create_table(
        'revoked_tokens',
        sa.Column('jti', sa.String(length=64), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('jti'),
    )
    op.create_index('ix_revoked_tokens_expires_at', 'revoked_tokens', ['expires_at'])
    op.drop_index('uq_users_username_lower', table_name='users')
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('token_version')
        batch_op.create_unique_constraint(
            'users_username_key' if dialect == 'postgresql' else None, ['username']
        )
