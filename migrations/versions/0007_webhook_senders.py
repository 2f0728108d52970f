"""webhook senders: a per-endpoint claim, and the oldest pending delivery per endpoint

- webhooks.sender_token, webhooks.sender_until: a sender process claims an
  endpoint (one batch in flight per endpoint, across processes) until
  sender_until, renewing the claim before each attempt; a process that died
  holding it loses it when sender_until passes. With no token, sender_until is
  when the endpoint was last served (the least recently served goes first).
- ix_webhook_deliveries_pending (webhook_id, event_id) WHERE pending: the
  oldest pending event of an endpoint in one index probe (the metrics gauge).

webhook_deliveries is empty wherever this runs (nothing wrote to it before),
so the index is built in the migration's transaction.

Revision ID: 0007
Revises: 0006
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('webhooks') as batch:
        batch.add_column(sa.Column('sender_token', sa.String(length=32), nullable=True))
        batch.add_column(sa.Column('sender_until', sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        'ix_webhook_deliveries_pending', 'webhook_deliveries',
        ['webhook_id', 'event_id'],
        postgresql_where=sa.text("status = 'pending'"),
        sqlite_where=sa.text("status = 'pending'"),
    )


def downgrade():
    op.drop_index('ix_webhook_deliveries_pending', table_name='webhook_deliveries')
    with op.batch_alter_table('webhooks') as batch:
        batch.drop_column('sender_until')
        batch.drop_column('sender_token')
