"""data protection: retention marks, erased users, blocked addresses, the audit trail (issue 21)

- `support_case.raw_deleted_at`, `.anonymised_at`: what the retention jobs have done to a
  closed case (its mails' raw bytes deleted; only the skeleton left), with indexes that let them
  find the cases due without reading every closed case on each run.
- `inbound_mail` state `expired` (raw bytes deleted) and an index on (outcome, state,
  processed_at) for the set-aside mail's retention.
- `outbox.pruned_at`: what a sent notification said was deleted; `outbox` state `cancelled`.
- `app_user.erased_at`, `blocked_address`: an erased person's pseudonymised record, and their
  address kept from registering again by mail until an operator allows it.
- `audit_event`: who exported, erased or allowed whose data, when and why.
- `comment.author_id` indexed: a person's comments, for export and erasure.

Revision ID: 0011
Revises: 0010
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_TIME = sqlmodel.sql.sqltypes.UTCDateTime


def upgrade() -> None:
    op.add_column("app_user", sa.Column("erased_at", _TIME(), nullable=True))
    op.add_column("support_case", sa.Column("raw_deleted_at", _TIME(), nullable=True))
    op.add_column("support_case", sa.Column("anonymised_at", _TIME(), nullable=True))
    op.add_column("outbox", sa.Column("pruned_at", _TIME(), nullable=True))
    op.create_index("ix_case_raw_due", "support_case", ["status", "raw_deleted_at", "status_changed_at"])
    op.create_index("ix_case_anonymise_due", "support_case", ["status", "anonymised_at", "status_changed_at"])
    op.create_index("ix_inbound_expiry", "inbound_mail", ["outcome", "state", "processed_at"])
    op.create_index("ix_outbox_prune_due", "outbox", ["state", "pruned_at", "sent_at"])
    op.create_index("ix_comment_author_id", "comment", ["author_id"])
    op.create_table(
        "audit_event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", _TIME(), nullable=False),
        sa.Column("actor", sqlmodel.sql.sqltypes.AutoString(length=320), nullable=False),
        sa.Column("via", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
        sa.Column("action", sqlmodel.sql.sqltypes.AutoString(length=30), nullable=False),
        sa.Column("subject", sqlmodel.sql.sqltypes.AutoString(length=320), nullable=True),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=1000), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_audit_event_at", "audit_event", ["at"])
    op.create_index("ix_audit_event_subject", "audit_event", ["subject"])
    op.create_table(
        "blocked_address",
        sa.Column("email", sqlmodel.sql.sqltypes.AutoString(length=320), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("blocked_at", _TIME(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["app_user.id"]),
        sa.PrimaryKeyConstraint("email"),
    )


def downgrade() -> None:
    op.drop_table("blocked_address")
    op.drop_index("ix_audit_event_subject", table_name="audit_event")
    op.drop_index("ix_audit_event_at", table_name="audit_event")
    op.drop_table("audit_event")
    op.drop_index("ix_comment_author_id", table_name="comment")
    op.drop_index("ix_outbox_prune_due", table_name="outbox")
    op.drop_index("ix_inbound_expiry", table_name="inbound_mail")
    op.drop_index("ix_case_anonymise_due", table_name="support_case")
    op.drop_index("ix_case_raw_due", table_name="support_case")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("pruned_at")
    with op.batch_alter_table("support_case") as batch:
        batch.drop_column("anonymised_at")
        batch.drop_column("raw_deleted_at")
    with op.batch_alter_table("app_user") as batch:
        batch.drop_column("erased_at")
