"""events: each event keeps the ticket as the change left it; webhooks and their deliveries

- ticket_events.data: the ticket's row after the change (before it, for a
  deletion), written in the same statement as the event, so a stream or a
  webhook delivered later tells what the change did, not what came after.
  Older events have none.
- webhooks: where integrations want events sent, and which.
- webhook_deliveries: one per (webhook, event) to send, with its attempts.
- feed_positions: how far a reader of the events has durably got (the webhook
  fan-out), with the gap it waits on (service/domain/feed.py).

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade():
    op.add_column('ticket_events', sa.Column('data', sa.JSON(), nullable=True))
    op.create_table(
        'webhooks',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('url', sa.String(length=2048), nullable=False),
        sa.Column('events', sa.JSON(), nullable=False),
        sa.Column('secret', sa.String(length=256), nullable=False),
        sa.Column('active', sa.Boolean(), server_default=sa.text('true'), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sqlite_autoincrement=True,
    )
    op.create_table(
        'webhook_deliveries',
        sa.Column('webhook_id', sa.Integer(), nullable=False),
        sa.Column('event_id', sa.BigInteger(), nullable=False),
        sa.Column('status', sa.String(length=16), server_default='pending', nullable=False),
        sa.Column('attempts', sa.Integer(), server_default=sa.text('0'), nullable=False),
        sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('last_status_code', sa.Integer(), nullable=True),
        sa.Column('last_error', sa.String(length=500), nullable=True),
        sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("status IN ('pending', 'delivered', 'failed')",
                           name='ck_webhook_deliveries_status'),
        sa.ForeignKeyConstraint(['webhook_id'], ['webhooks.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('webhook_id', 'event_id'),
    )
    # The senders' question: which deliveries are due, oldest first, per webhook.
    op.create_index(
        'ix_webhook_deliveries_due', 'webhook_deliveries',
        ['webhook_id', 'next_attempt_at', 'event_id'],
        postgresql_where=sa.text("status = 'pending'"),
        sqlite_where=sa.text("status = 'pending'"),
    )
    op.create_table(
        'feed_positions',
        sa.Column('name', sa.String(length=40), nullable=False),
        sa.Column('after', sa.BigInteger(), nullable=False),
        sa.Column('hole_newest', sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint('name'),
    )


def downgrade():
    op.drop_table('feed_positions')
    op.drop_index('ix_webhook_deliveries_due', table_name='webhook_deliveries')
    op.drop_table('webhook_deliveries')
    op.drop_table('webhooks')
    with op.batch_alter_table('ticket_events') as batch:
        batch.drop_column('data')
