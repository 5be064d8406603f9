"""node runs, and who holds an outbox row

A restarted node takes back the claims of its own earlier run at once instead of waiting out
their lease. For that it needs to know its earlier runs: `node_run` keeps each node's run
number (one more at every start), claims are held as `node:run`, and an outbox row now records
its holder too (`outbox.claimed_by`), as an inbox mail already did.

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "node_run",
        sa.Column("node_id", sa.String(length=64), primary_key=True),
        sa.Column("run", sa.Integer(), nullable=False),
        sa.Column("started_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    )
    op.add_column("outbox", sa.Column("claimed_by", sa.String(length=100), nullable=True))


def downgrade() -> None:
    op.drop_column("outbox", "claimed_by")
    op.drop_table("node_run")
