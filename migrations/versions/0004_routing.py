"""routing: queues, ticket priority, agents' queues and presence

- queues: named queues; "general" always exists.
- tickets.queue (default "general") and tickets.priority (0 urgent, 1 high,
  2 normal (the default), 3 low). Every existing ticket is in general at normal.
  No foreign key on the queue: a queue can be deleted once no unassigned or
  assigned ticket is in it, and sold tickets keep its name as history; the
  service checks the name when a ticket enters a queue, under a lock on it.
- agent_queues: which queues each agent takes work from; every existing agent
  is in general.
- users.status (online, away, offline; agents only, every existing agent
  online), status_since, last_seen_at.
- ticket_events.kind gains "updated".
- queue_outbox also notes a move of an unassigned ticket to another queue or
  priority, with the queue it left.

Online-safe on a large tickets table (PostgreSQL): the new columns have
constant defaults (no rewrite), the check is added NOT VALID and validated
without blocking writes, and the new indexes are built
CONCURRENTLY, outside the migration's transaction.

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

KINDS_BEFORE = "('created', 'assigned', 'sold', 'released', 'deleted')"
KINDS_AFTER = "('created', 'updated', 'assigned', 'sold', 'released', 'deleted')"


def _postgres():
    return op.get_bind().dialect.name == 'postgresql'


def upgrade():
    op.create_table(
        'queues',
        sa.Column('name', sa.String(length=40), nullable=False),
        sa.Column('description', sa.String(length=500), server_default='', nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True),
                  server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint('name'),
    )
    op.execute("INSERT INTO queues (name, description) VALUES"
               " ('general', 'Every ticket and agent that names no other queue')")

    op.create_table(
        'agent_queues',
        sa.Column('agent_id', sa.Integer(), nullable=False),
        sa.Column('queue', sa.String(length=40), nullable=False),
        sa.ForeignKeyConstraint(['agent_id'], ['users.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['queue'], ['queues.name']),
        sa.PrimaryKeyConstraint('agent_id', 'queue'),
    )
    op.create_index('ix_agent_queues_queue', 'agent_queues', ['queue', 'agent_id'])
    op.execute("INSERT INTO agent_queues (agent_id, queue)"
               " SELECT id, 'general' FROM users WHERE role = 'agent'")

    with op.batch_alter_table('users') as batch:
        batch.add_column(sa.Column('status', sa.String(length=8), nullable=True))
        batch.add_column(sa.Column('status_since', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE users SET status = 'online', status_since = created_at"
               " WHERE role = 'agent'")
    if _postgres():
        # (On SQLite a check constraint means rebuilding the table, which would lose
        # the expression index on lower(username); the service checks it anyway.)
        op.create_check_constraint(
            'ck_users_status', 'users', "status IS NULL OR status IN ('online', 'away', 'offline')"
        )

    if _postgres():
        # Constant defaults: PostgreSQL records them without rewriting the table.
        op.execute("ALTER TABLE tickets ADD COLUMN queue varchar(40) NOT NULL DEFAULT 'general'")
        op.execute("ALTER TABLE tickets ADD COLUMN priority smallint NOT NULL DEFAULT 2")
        op.execute("ALTER TABLE tickets ADD CONSTRAINT ck_tickets_priority"
                   " CHECK (priority BETWEEN 0 AND 3) NOT VALID")
        # Checking the existing rows takes no lock that blocks writes.
        op.execute("ALTER TABLE tickets VALIDATE CONSTRAINT ck_tickets_priority")
        op.execute("ALTER TABLE ticket_events DROP CONSTRAINT ck_ticket_events_kind")
        op.execute(f"ALTER TABLE ticket_events ADD CONSTRAINT ck_ticket_events_kind"
                   f" CHECK (kind IN {KINDS_AFTER}) NOT VALID")
        op.execute("ALTER TABLE ticket_events VALIDATE CONSTRAINT ck_ticket_events_kind")
        op.add_column('queue_outbox', sa.Column('left_queue', sa.String(length=40)))
        op.execute(
            """
            CREATE OR REPLACE FUNCTION tq_note_unassigned() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP = 'UPDATE' AND OLD.status = 'unassigned' AND OLD.queue <> NEW.queue THEN
                    INSERT INTO queue_outbox (ticket_id, left_queue) VALUES (NEW.id, OLD.queue);
                ELSE
                    INSERT INTO queue_outbox (ticket_id) VALUES (NEW.id);
                END IF;
                RETURN NULL;
            END
            $$
            """
        )
        op.execute("DROP TRIGGER tickets_note_released ON tickets")
        op.execute(
            """
            CREATE TRIGGER tickets_note_released AFTER UPDATE OF status, queue, priority
            ON tickets FOR EACH ROW WHEN (
                NEW.status = 'unassigned' AND (
                    OLD.status <> 'unassigned'
                    OR OLD.queue <> NEW.queue
                    OR OLD.priority <> NEW.priority
                )
            )
            EXECUTE FUNCTION tq_note_unassigned()
            """
        )
        # Built without blocking writes; not inside the migration's transaction.
        with op.get_context().autocommit_block():
            op.execute("CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_tickets_queue_order"
                       " ON tickets (queue, priority, id) WHERE status = 'unassigned'")
            op.execute("CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_tickets_queue_id"
                       " ON tickets (queue, id)")
    else:
        op.execute("DROP TRIGGER tickets_note_released")
        with op.batch_alter_table('tickets', recreate='always',
                                  table_kwargs={'sqlite_autoincrement': True}) as batch:
            batch.add_column(sa.Column('queue', sa.String(length=40),
                                       server_default='general', nullable=False))
            batch.add_column(sa.Column('priority', sa.SmallInteger(),
                                       server_default='2', nullable=False))
            batch.create_check_constraint('ck_tickets_priority', 'priority BETWEEN 0 AND 3')
        with op.batch_alter_table('ticket_events', recreate='always',
                                  table_kwargs={'sqlite_autoincrement': True}) as batch:
            batch.drop_constraint('ck_ticket_events_kind', type_='check')
            batch.create_check_constraint('ck_ticket_events_kind', f"kind IN {KINDS_AFTER}")
        with op.batch_alter_table('queue_outbox', recreate='always',
                                  table_kwargs={'sqlite_autoincrement': True}) as batch:
            batch.add_column(sa.Column('left_queue', sa.String(length=40)))
        op.create_index('ix_tickets_queue_order', 'tickets', ['queue', 'priority', 'id'],
                        sqlite_where=sa.text("status = 'unassigned'"))
        op.create_index('ix_tickets_queue_id', 'tickets', ['queue', 'id'])
        # The recreated table lost its triggers: both, with the moves.
        op.execute("DROP TRIGGER IF EXISTS tickets_note_inserted")
        op.execute(
            """
            CREATE TRIGGER tickets_note_inserted AFTER INSERT ON tickets
            FOR EACH ROW WHEN NEW.status = 'unassigned'
            BEGIN INSERT INTO queue_outbox (ticket_id) VALUES (NEW.id); END
            """
        )
        op.execute(
            """
            CREATE TRIGGER tickets_note_released AFTER UPDATE OF status, queue, priority
            ON tickets FOR EACH ROW WHEN NEW.status = 'unassigned' AND (
                OLD.status <> 'unassigned' OR OLD.queue <> NEW.queue
                OR OLD.priority <> NEW.priority
            )
            BEGIN
                INSERT INTO queue_outbox (ticket_id, left_queue) VALUES (NEW.id,
                    CASE WHEN OLD.status = 'unassigned' AND OLD.queue <> NEW.queue
                         THEN OLD.queue END);
            END
            """
        )


def downgrade():
    if _postgres():
        op.execute("DROP INDEX IF EXISTS ix_tickets_queue_id")
        op.execute("DROP INDEX IF EXISTS ix_tickets_queue_order")
        op.execute("DROP TRIGGER tickets_note_released ON tickets")
        op.execute(
            """
            CREATE OR REPLACE FUNCTION tq_note_unassigned() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO queue_outbox (ticket_id) VALUES (NEW.id);
                RETURN NULL;
            END
            $$
            """
        )
        op.execute(
            """
            CREATE TRIGGER tickets_note_released AFTER UPDATE OF status ON tickets
            FOR EACH ROW WHEN (NEW.status = 'unassigned' AND OLD.status <> 'unassigned')
            EXECUTE FUNCTION tq_note_unassigned()
            """
        )
        op.drop_column('queue_outbox', 'left_queue')
        op.execute("DELETE FROM ticket_events WHERE kind = 'updated'")
        op.execute("ALTER TABLE ticket_events DROP CONSTRAINT ck_ticket_events_kind")
        op.execute(f"ALTER TABLE ticket_events ADD CONSTRAINT ck_ticket_events_kind"
                   f" CHECK (kind IN {KINDS_BEFORE})")
        op.execute("ALTER TABLE tickets DROP CONSTRAINT ck_tickets_priority")
        op.drop_column('tickets', 'priority')
        op.drop_column('tickets', 'queue')
        op.drop_constraint('ck_users_status', 'users', type_='check')
    with op.batch_alter_table('users') as batch:
        batch.drop_column('last_seen_at')
        batch.drop_column('status_since')
        batch.drop_column('status')
    op.drop_index('ix_agent_queues_queue', table_name='agent_queues')
    op.drop_table('agent_queues')
    op.drop_table('queues')
