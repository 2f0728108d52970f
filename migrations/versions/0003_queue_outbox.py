"""queue outbox: every ticket that becomes unassigned is noted in the same transaction

A trigger on tickets writes a row to queue_outbox whenever a ticket is inserted
unassigned or becomes unassigned (a release), whoever wrote it: the service, a
script, or SQL behind the service's back. The relay drains these rows and
makes sure each such ticket is queued in Redis, so it no longer compares the
whole backlog with Redis to find the few tickets whose push was lost: its work
follows the changes, not the backlog.

The trigger does not fire for the hot path's writes (an assignment, a sale):
its condition is checked on the new row and is false for them.

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'queue_outbox',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('ticket_id', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sqlite_autoincrement=True,
    )
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(
            """
            CREATE FUNCTION tq_note_unassigned() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO queue_outbox (ticket_id) VALUES (NEW.id);
                RETURN NULL;
            END
            $$
            """
        )
        op.execute(
            """
            CREATE TRIGGER tickets_note_inserted AFTER INSERT ON tickets
            FOR EACH ROW WHEN (NEW.status = 'unassigned')
            EXECUTE FUNCTION tq_note_unassigned()
            """
        )
        op.execute(
            """
            CREATE TRIGGER tickets_note_released AFTER UPDATE OF status ON tickets
            FOR EACH ROW WHEN (NEW.status = 'unassigned' AND OLD.status <> 'unassigned')
            EXECUTE FUNCTION tq_note_unassigned()
            """
        )
    else:
        op.execute(
            """
            CREATE TRIGGER tickets_note_inserted AFTER INSERT ON tickets
            FOR EACH ROW WHEN NEW.status = 'unassigned'
            BEGIN INSERT INTO queue_outbox (ticket_id) VALUES (NEW.id); END
            """
        )
        op.execute(
            """
            CREATE TRIGGER tickets_note_released AFTER UPDATE OF status ON tickets
            FOR EACH ROW WHEN NEW.status = 'unassigned' AND OLD.status <> 'unassigned'
            BEGIN INSERT INTO queue_outbox (ticket_id) VALUES (NEW.id); END
            """
        )


def downgrade():
    op.execute("DROP TRIGGER IF EXISTS tickets_note_released ON tickets"
               if op.get_bind().dialect.name == 'postgresql'
               else "DROP TRIGGER IF EXISTS tickets_note_released")
    op.execute("DROP TRIGGER IF EXISTS tickets_note_inserted ON tickets"
               if op.get_bind().dialect.name == 'postgresql'
               else "DROP TRIGGER IF EXISTS tickets_note_inserted")
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("DROP FUNCTION IF EXISTS tq_note_unassigned()")
    op.drop_table('queue_outbox')
