"""IMAP UIDs and UIDVALIDITY as 64-bit integers

Both are unsigned 32-bit numbers in IMAP (RFC 3501): values above 2^31 (common for
UIDVALIDITY, which many servers derive from the clock or choose at random) do not fit a
PostgreSQL `integer`. SQLite's INTEGER is already 64-bit, so only PostgreSQL changes.

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("imap_folder_state", "uidvalidity", type_=sa.BigInteger(), existing_nullable=True)
        op.alter_column("imap_folder_state", "last_uid", type_=sa.BigInteger(), existing_nullable=False)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("imap_folder_state", "last_uid", type_=sa.Integer(), existing_nullable=False)
        op.alter_column("imap_folder_state", "uidvalidity", type_=sa.Integer(), existing_nullable=True)
