"""`gateway db upgrade`: apply the versioned alembic migrations (never `create_all`).

Every command and every start of the daemon calls `upgrade`. A store already at the newest
revision is told by one SELECT, without loading alembic and its scripts (~250 ms a command);
tests/test_pipeline.py checks that `HEAD` is the head of the migration scripts.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

if TYPE_CHECKING:
    from alembic.config import Config

_HERE = Path(__file__).parent

# The newest revision in migrations/versions/: a new migration changes this line too.
HEAD = "0012"


def alembic_config(url: str = "") -> Config:
    from alembic.config import Config

    cfg = Config(str(_HERE / "alembic.ini"))
    cfg.set_main_option("script_location", str(_HERE / "migrations"))
    if url:
        cfg.set_main_option("sqlalchemy.url", url)
    return cfg


async def current_revision(engine: AsyncEngine) -> str | None:
    """The store's alembic revision, or None when it has none yet (a new, empty database)."""
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
    except Exception:  # no such table: never migrated
        return None
    return str(rows[0][0]) if len(rows) == 1 else None


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    if revision in ("head", HEAD) and await current_revision(engine) == HEAD:
        return

    def _upgrade(connection: Connection) -> None:
        from alembic import command

        cfg = alembic_config()
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)

    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)


def upgrade_sync(engine: AsyncEngine) -> None:
    asyncio.run(upgrade(engine))
