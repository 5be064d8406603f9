"""raw bytes of inbox mails in a table of their own

SQLite writes a whole new record on every UPDATE, overflow pages included: with the raw bytes
in `inbound_mail`, claiming a mail and finishing it copied the whole mail twice more. The bytes
move to `inbound_raw`, written once and only read after that.

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "inbound_raw",
        sa.Column("inbound_id", sa.Integer(), sa.ForeignKey("inbound_mail.id"), primary_key=True),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
    )
    op.execute("INSERT INTO inbound_raw (inbound_id, raw) SELECT id, raw FROM inbound_mail WHERE raw IS NOT NULL")
    # SQLite 3.35+ drops a plain column in place (no table rebuild, so no foreign key trouble).
    op.execute("ALTER TABLE inbound_mail DROP COLUMN raw")


def downgrade() -> None:
    op.add_column("inbound_mail", sa.Column("raw", sa.LargeBinary(), nullable=True))
    op.execute("UPDATE inbound_mail SET raw = (SELECT raw FROM inbound_raw WHERE inbound_raw.inbound_id = inbound_mail.id)")
    op.drop_table("inbound_raw")
