"""users.queue_names: an agent's queues beside its row, for the fetch's one SELECT

The fetch reads the agent's row, queues and unsold tickets in one SELECT. Reading
the queues from agent_queues made that SELECT join and aggregate, and psycopg2
plans every statement afresh: planning alone cost the fast path about 0.1 ms,
a seventh of its PostgreSQL time. So the agent's row also keeps its queue names
(sorted, comma-separated; empty for none; NULL for an admin). agent_queues stays
the table the queue-side questions use (who is in a queue); the one function that
writes an agent's queues writes both in one transaction, and the audit checks
that they agree.

Revision ID: 0006
Revises: 0005
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade():
    op.add_column('users', sa.Column('queue_names', sa.Text(), nullable=True))
    # Agents are few (thousands): fill them in one pass, the same on SQLite.
    conn = op.get_bind()
    names = {}
    for agent_id, queue in conn.execute(
        sa.text("SELECT agent_id, queue FROM agent_queues ORDER BY agent_id, queue")
    ):
        names.setdefault(agent_id, []).append(queue)
    agents = [row[0] for row in conn.execute(sa.text("SELECT id FROM users WHERE role = 'agent'"))]
    if agents:
        conn.execute(
            sa.text("UPDATE users SET queue_names = :names WHERE id = :id"),
            [{"id": a, "names": ",".join(names.get(a, []))} for a in agents],
        )


def downgrade():
    with op.batch_alter_table('users') as batch:
        batch.drop_column('queue_names')
