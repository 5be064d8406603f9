"""What the IMAP reader remembers per account and folder (`imap_folder_state`): UIDVALIDITY,
the last UID done (flag mode resumes there), the tries of messages the store refused, and
when the folder was last fetched (for the metrics)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from store.faults import store_errors
from store.models import ImapFolderState

FS = ImapFolderState.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class FolderState:
    uidvalidity: int | None = None
    last_uid: int = 0
    failures: dict[str, int] = field(default_factory=dict)


def _dialect_insert(engine: AsyncEngine) -> Any:
    return (postgresql if engine.dialect.name == "postgresql" else sqlite).insert


async def load_state(engine: AsyncEngine, account: str, folder: str) -> FolderState:
    with store_errors("imap state"):
        async with engine.connect() as conn:
            row = (await conn.execute(select(FS.c.uidvalidity, FS.c.last_uid, FS.c.failures)
                                      .where(FS.c.account == account, FS.c.folder == folder))).first()
    if row is None:
        return FolderState()
    return FolderState(row.uidvalidity, int(row.last_uid), dict(row.failures or {}))


async def save_state(engine: AsyncEngine, account: str, folder: str, state: FolderState,
                     fetched_at: datetime | None) -> None:
    def values() -> dict[str, Any]:
        # IMAP numbers are unsigned 32-bit: bound as BIGINT whatever the model says (migration 0003)
        out: dict[str, Any] = {"uidvalidity": bindparam(None, state.uidvalidity, BigInteger),
                               "last_uid": bindparam(None, state.last_uid, BigInteger), "failures": state.failures}
        return out if fetched_at is None else {**out, "last_fetch_at": fetched_at}

    stmt = _dialect_insert(engine)(FS).values(account=account, folder=folder, **values())
    stmt = stmt.on_conflict_do_update(index_elements=["account", "folder"], set_=values())
    with store_errors("imap state"):  # trouble while reading an account: one more reason to back off
        async with engine.begin() as conn:
            await conn.execute(stmt)
