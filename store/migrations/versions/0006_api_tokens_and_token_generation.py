"""API tokens per agent or service, requester-token revocation, and who acted through what

- `api_token`: a bearer token of the HTTP API, kept only as its SHA-256; an agent's own, or a
  service's that may act for agents (issue 17 item 3).
- `app_user.token_generation`: requester tokens carry the generation they were issued in;
  `gateway users revoke-tokens` bumps it, so every earlier token is refused (item 4).
- `status_change.via`, `comment.via`: the service a change was made through, beside the agent
  it was made for (item 3).

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_token",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("token_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("last_used_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("revoked_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["app_user.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_index("ix_api_token_user_id", "api_token", ["user_id"])
    op.add_column("app_user", sa.Column("token_generation", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("status_change", sa.Column("via", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True))
    op.add_column("comment", sa.Column("via", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("comment") as batch:
        batch.drop_column("via")
    with op.batch_alter_table("status_change") as batch:
        batch.drop_column("via")
    with op.batch_alter_table("app_user") as batch:
        batch.drop_column("token_generation")
    op.drop_index("ix_api_token_user_id", table_name="api_token")
    op.drop_table("api_token")
