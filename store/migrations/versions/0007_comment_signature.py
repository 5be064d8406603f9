"""the signature of a comment, stored apart from its visible text

A mail's last signature block ("-- ", "Med venlig hilsen", "Sent from my iPhone") is kept
with the comment but apart, so the case page and the agent can show or hide it (issue 22).
"" for comments without one, and for every comment written before this revision.

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("comment") as batch:
        batch.add_column(sa.Column("signature", sa.String(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("comment") as batch:
        batch.drop_column("signature")
