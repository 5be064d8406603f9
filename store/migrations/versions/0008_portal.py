"""Serviceportalen: passwords, sessions, single-use links, attempt counters

Revision ID: 0008
Revises: 0007
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_TIME = sqlmodel.sql.sqltypes.UTCDateTime
_TEXT = sqlmodel.sql.sqltypes.AutoString


def upgrade() -> None:
    op.create_table(
        "portal_password",
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("app_user.id"), primary_key=True),
        sa.Column("password_hash", _TEXT(length=255), nullable=False),
        sa.Column("set_at", _TIME(), nullable=False),
    )
    op.create_table(
        "portal_session",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("token_hash", _TEXT(length=64), nullable=False, unique=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("app_user.id"), nullable=False),
        sa.Column("method", _TEXT(length=20), nullable=False),
        sa.Column("created_at", _TIME(), nullable=False),
        sa.Column("last_seen_at", _TIME(), nullable=False),
        sa.Column("expires_at", _TIME(), nullable=False),
    )
    op.create_index("ix_portal_session_user_id", "portal_session", ["user_id"])
    op.create_index("ix_portal_session_expires_at", "portal_session", ["expires_at"])
    op.create_table(
        "portal_link",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("selector", _TEXT(length=32), nullable=False, unique=True),
        sa.Column("email", _TEXT(length=320), nullable=False),
        sa.Column("purpose", _TEXT(length=10), nullable=False),
        sa.Column("next_path", _TEXT(length=500), nullable=True),
        sa.Column("created_at", _TIME(), nullable=False),
        sa.Column("expires_at", _TIME(), nullable=False),
        sa.Column("used_at", _TIME(), nullable=True),
    )
    op.create_index("ix_portal_link_email", "portal_link", ["email"])
    op.create_index("ix_portal_link_expires_at", "portal_link", ["expires_at"])
    op.create_table(
        "portal_throttle",
        sa.Column("key", _TEXT(length=100), primary_key=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_attempt_at", _TIME(), nullable=False),
        sa.Column("blocked_until", _TIME(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("portal_throttle")
    op.drop_index("ix_portal_link_expires_at", table_name="portal_link")
    op.drop_index("ix_portal_link_email", table_name="portal_link")
    op.drop_table("portal_link")
    op.drop_index("ix_portal_session_expires_at", table_name="portal_session")
    op.drop_index("ix_portal_session_user_id", table_name="portal_session")
    op.drop_table("portal_session")
    op.drop_table("portal_password")
