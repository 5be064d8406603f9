"""`gateway db upgrade`: apply the versioned alembic migrations (never `create_all`).

Only `gateway db upgrade` and `gateway run` create or migrate a store (`prepare(…, migrate=True)`);
every other command checks that the store exists and is at `HEAD` (`prepare(…, migrate=False)`)
and refuses with `StoreNotReady` otherwise: a mistyped `database.url` must not quietly become a
fresh, empty store. A store at `HEAD` is told by one SELECT, without loading alembic and its
scripts, which would slow every command; tests/test_pipeline.py checks that `HEAD` is the head of the
migration scripts.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.errors import StoreNotReady, StoreRejected, StoreUnavailable
from store.engine import describe, sqlite_file
from store.faults import store_errors

if TYPE_CHECKING:
    from alembic.config import Config

_HERE = Path(__file__).parent

# The newest revision in migrations/versions/: a new migration changes this line too.
HEAD = "0013"


def alembic_config(url: str = "") -> Config:
    from alembic.config import Config

    cfg = Config(str(_HERE / "alembic.ini"))
    cfg.set_main_option("script_location", str(_HERE / "migrations"))
    if url:
        cfg.set_main_option("sqlalchemy.url", url)
    return cfg


async def current_revision(engine: AsyncEngine) -> str | None:
    """The store's alembic revision, or None when it has none yet (a new, empty database).
    A store that cannot be reached raises (`StoreUnavailable`, or `StoreNotReady` when the
    PostgreSQL database does not exist)."""
    try:
        with store_errors("opening the store"):
            async with engine.connect() as conn:
                if not await conn.run_sync(lambda c: inspect(c).has_table("alembic_version")):
                    return None
                rows = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
    except (StoreUnavailable, StoreRejected) as exc:
        if getattr(getattr(exc.__cause__, "orig", None), "sqlstate", None) == "3D000":  # PostgreSQL: no such database
            raise StoreNotReady(f"no database {describe(engine.url.render_as_string(hide_password=False))}: "
                                "create it (createdb), then run `gateway db upgrade`") from None
        raise
    return str(rows[0][0]) if len(rows) == 1 else None


async def upgrade(engine: AsyncEngine, revision: str = "head") -> str | None:
    """Migrate to `revision`; the revision the store was at before (None: it was empty)."""
    before = await current_revision(engine)
    if revision in ("head", HEAD) and before == HEAD:
        return before

    def _upgrade(connection: Connection) -> None:
        from alembic import command

        cfg = alembic_config()
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)

    with store_errors("migrating the store"):
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade)
    return before


def upgrade_sync(engine: AsyncEngine) -> None:
    asyncio.run(upgrade(engine))


def create_folder(url: str) -> None:
    """The folder of a SQLite file, made by the commands that may create a store."""
    path = sqlite_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)


def require_file(url: str) -> None:
    """Before connecting: connecting to a missing SQLite file would create it."""
    path = sqlite_file(url)
    if path is not None and not path.exists():
        raise StoreNotReady(f"no store at {path} (check database.url, or create it with `gateway db upgrade`)")


async def require_head(engine: AsyncEngine) -> None:
    """The store exists and is at this gateway's schema, or `StoreNotReady` says what to do."""
    found = await current_revision(engine)
    if found == HEAD:
        return
    where = describe(engine.url.render_as_string(hide_password=False))
    if found is None:
        raise StoreNotReady(f"the store at {where} has no schema (check database.url, "
                            "or create it with `gateway db upgrade`)")
    raise StoreNotReady(f"the store at {where} is at schema {found}, this gateway needs {HEAD}: "
                        "run `gateway db upgrade`")
