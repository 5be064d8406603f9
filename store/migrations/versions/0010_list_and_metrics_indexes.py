"""indexes for the newest-first lists and for /metrics read from the store

Cases are listed newest first by last change, a page at a time: (updated_at, id). /metrics
reads the mails processed and the notifications sent since its last scrape, and counts the
timed job's closes: partial indexes that hold only processed mails, sent notifications and
the system's history rows, so the SMTP edge's inserts and the queue's own rows never write
them.

Revision ID: 0010
Revises: 0009
"""
import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def _partial(name: str, table: str, column: str, where: str) -> None:
    op.create_index(name, table, [column], sqlite_where=sa.text(where), postgresql_where=sa.text(where))


def upgrade() -> None:
    op.create_index("ix_case_updated", "support_case", ["updated_at", "id"])
    _partial("ix_inbound_processed", "inbound_mail", "processed_at", "processed_at IS NOT NULL")
    _partial("ix_outbox_sent", "outbox", "sent_at", "sent_at IS NOT NULL")
    _partial("ix_status_change_system", "status_change", "to_status", "by_label = 'system'")


def downgrade() -> None:
    op.drop_index("ix_status_change_system", table_name="status_change")
    op.drop_index("ix_outbox_sent", table_name="outbox")
    op.drop_index("ix_inbound_processed", table_name="inbound_mail")
    op.drop_index("ix_case_updated", table_name="support_case")
