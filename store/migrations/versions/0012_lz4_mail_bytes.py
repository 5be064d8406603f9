"""PostgreSQL: the big columns of a mail compressed with lz4, not pglz (issue 23)

PostgreSQL compresses a value over ~2 KB before it stores it out of line (TOAST), with pglz by
default. A mail's raw bytes (`inbound_raw.raw`) are compressed by the backend of the inbox
writer inside the SMTP edge's group commit, before its 250s: on 20 KB mails pglz was 55% of
that backend's CPU (`perf`, docs/benchmarks.md). lz4 compresses the same mails to the same size
at a third to a quarter of the CPU, and decompresses faster when the worker reads them. The
texts of a comment are written the same way on every new case and answer.

Only what is written from now on is compressed with lz4 (a column's compression applies to new
values; the old ones keep theirs and read as before). Nothing on SQLite, nor on a PostgreSQL
built without lz4 (then pglz stays).

Revision ID: 0012
Revises: 0011
"""
from alembic import op
from sqlalchemy import text

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_COLUMNS = (("inbound_raw", "raw"), ("comment", "visible_text"), ("comment", "full_text"), ("comment", "html"))


def _lz4_available() -> bool:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return False
    values = bind.execute(text("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")).scalar()
    return bool(values) and "lz4" in values


def _set(method: str) -> None:
    if _lz4_available():
        for table, column in _COLUMNS:
            op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET COMPRESSION {method}")


def upgrade() -> None:
    _set("lz4")


def downgrade() -> None:
    _set("pglz")
