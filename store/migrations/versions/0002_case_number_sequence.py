"""case numbers from a sequence on PostgreSQL

On PostgreSQL several gateway nodes create cases at once; a sequence hands out numbers without
a hot counter row (a gap left by a rolled-back transaction is fine). SQLite keeps the counter
row: it has one writer at a time anyway.

Revision ID: 0002
Revises: 0001
"""
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE SEQUENCE IF NOT EXISTS case_number_seq START 1")
        op.execute("SELECT setval('case_number_seq', GREATEST((SELECT value FROM counter WHERE name = 'case'), 1),"
                   " (SELECT value FROM counter WHERE name = 'case') IS NOT NULL)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP SEQUENCE IF EXISTS case_number_seq")
