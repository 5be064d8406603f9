"""per-sender and per-recipient indexes that include the time

The loop detector counts a sender's processed mails in the last hour; the notification rate
limits count a recipient's outbox rows in the last day and a case's rows to one recipient in
the last hour. With indexes on the address or the case alone, the counts read every row the
address ever had: under a flood from one address (the very case they guard against) each
mail cost more than the one before it.

Revision ID: 0005
Revises: 0004
"""
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_inbound_from_processed", "inbound_mail", ["from_addr", "processed_at"])
    op.drop_index("ix_inbound_mail_from_addr", table_name="inbound_mail")
    op.create_index("ix_outbox_recipient_created", "outbox", ["recipient", "created_at"])
    op.drop_index("ix_outbox_recipient", table_name="outbox")
    op.create_index("ix_outbox_case_recipient_created", "outbox", ["case_id", "recipient", "created_at"])
    op.drop_index("ix_outbox_case_id", table_name="outbox")


def downgrade() -> None:
    op.create_index("ix_outbox_case_id", "outbox", ["case_id"])
    op.drop_index("ix_outbox_case_recipient_created", table_name="outbox")
    op.create_index("ix_outbox_recipient", "outbox", ["recipient"])
    op.drop_index("ix_outbox_recipient_created", table_name="outbox")
    op.create_index("ix_inbound_mail_from_addr", "inbound_mail", ["from_addr"])
    op.drop_index("ix_inbound_from_processed", table_name="inbound_mail")
