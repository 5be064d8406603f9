"""A person's data on request (GDPR art. 15, 17, 20) and the audit trail
(docs/operations.md, "Data protection").

- `export_person`: everything stored about an address, as a zip (gateway/export.py).
- `erase_person`: their raw mails and attachments deleted from the store and the disk, their
  comments' text and their name replaced by a pseudonym, notifications to them cancelled, and
  their address blocked: mail from it is handled as from an unknown sender under
  `policy.unknown_sender`, except that it never registers them again (gateway/pipeline/plan.py)
  until `allow_address`. The cases stay as skeletons, with what others wrote on them. An agent
  is not erased here: their actions are the case history.
- `allow_address`: the block goes; their next mail registers a new user.

Each records who did it, when and why (`reason` is required) in `audit_event`; `audit_list`
shows those entries with the agents' actions from the case history. Log lines carry ids and
counts only, never the address.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.addresses import canonical
from gateway.datastore import DataStore
from gateway.errors import NotFound, Refused
from gateway.export import write_export
from gateway.lifecycle import InvalidInput
from gateway.model import Role
from gateway.retention import sweep_blobs
from store import audit, erasure
from store.person import PSEUDONYM_DOMAIN, Person, find_person, inbound_ids

log = logging.getLogger("gateway.privacy")

COMMENTS_PAGE = 100
# What an operator runs on PostgreSQL after an erasure (docs/operations.md, "Data protection").
VACUUM = ("VACUUM (FULL, ANALYZE) comment, attachment, inbound_mail, inbound_raw, support_case, app_user, "
          "outbox, status_change, message_index")
MAILS_PAGE = 20  # raw mails of up to 35 MB each: one SQLite transaction stays short


def _address(email: str | None) -> str:
    address = canonical(email)
    if address is None:
        raise InvalidInput(f"not a valid e-mail address: {email!r}")
    return address


def _reason(reason: str | None) -> str:
    text = (reason or "").replace("\x00", "").strip()
    if not text:
        raise InvalidInput("give the reason (--reason TEXT): it is kept in the audit trail")
    return text[:1000]


async def _person(data: DataStore, address: str) -> tuple[Person, dict[str, Any]]:
    person = await data.tx.read(find_person, address)
    found = await data.tx.read(erasure.survey, person)
    if person.user_id is None and not person.blocked and not found["mails"] and not found["notifications"]:
        raise NotFound(f"nothing is stored about {address}")
    return person, found


async def export_person(data: DataStore, email: str | None, out: str | Path, actor: str, reason: str | None,
                        via: str | None = None, internal: bool = False) -> dict[str, Any]:
    address, why, target = _address(email), _reason(reason), Path(out)
    if target.exists() or target.with_name(target.name + ".part").exists():
        raise Refused(f"{target} exists already; name a new file")
    person, _ = await _person(data, address)
    now = data.clock.now()
    manifest = {"address": address, "exported_at": now, "exported_by": actor, "via": via, "reason": why}
    counts = await write_export(data, person, target, manifest, internal)
    await data.tx.run(audit.record, now, actor, "export", address, why, {"file": target.name, **counts}, via)
    log.info("privacy.exported", extra={"user_id": person.user_id, **counts})
    return {"email": address, "file": str(target), **counts}


async def erase_person(data: DataStore, email: str | None, actor: str, reason: str | None, dry_run: bool = False,
                       via: str | None = None) -> dict[str, Any]:
    address, why = _address(email), _reason(reason)
    if address.endswith("@" + PSEUDONYM_DOMAIN):
        raise Refused(f"{address} is a pseudonym already; erase by the person's own address")
    person, found = await _person(data, address)
    if person.role == Role.AGENT.value:
        raise Refused(f"{address} is an agent: an agent's actions are the case history and stay")
    if dry_run:
        return {"email": address, "dry_run": True, **found}
    started, now = time.time(), data.clock.now()
    await data.tx.run(erasure.erase_identity, person, now)
    released = await _erase_comments(data, person)
    mails = await data.tx.read(inbound_ids, person)  # after the block: what comes now is new mail
    for start in range(0, len(mails), MAILS_PAGE):
        await data.tx.run(erasure.erase_inbound, mails[start:start + MAILS_PAGE], person.pseudonym)
    # Files touched since the erasure began are being stored again by someone else: they stay.
    files = await sweep_blobs(data, sorted(released), started)
    detail = {**found, "files_deleted": len(files)}
    await data.tx.run(audit.record, now, actor, "erase", address, why, detail, via)
    wal = await data.cut_wal()
    log.info("privacy.erased", extra={"user_id": person.user_id, "files_deleted": len(files), "wal_truncated": wal})
    result = {"email": address, "dry_run": False, **detail, "wal_truncated": wal}
    if data.engine.dialect.name == "postgresql":
        result["then_run"] = VACUUM  # until then the old row versions are still in the table files
    return result


async def _erase_comments(data: DataStore, person: Person) -> set[str]:
    released: set[str] = set()
    after: int | None = 0
    while person.user_id is not None and after is not None:
        after, shas = await data.tx.run(erasure.erase_comments, person.user_id, after, COMMENTS_PAGE)
        released.update(shas)
    return released


async def allow_address(data: DataStore, email: str | None, actor: str, reason: str | None,
                        via: str | None = None) -> dict[str, Any]:
    address, why = _address(email), _reason(reason)
    if not await data.tx.run(erasure.unblock, address):
        raise NotFound(f"{address} is not blocked")
    await data.tx.run(audit.record, data.clock.now(), actor, "allow", address, why, {}, via)
    log.info("privacy.allowed")
    return {"email": address, "blocked": False}


async def audit_list(data: DataStore, limit: int = 100, before: datetime | None = None) -> list[dict[str, Any]]:
    if limit < 1:
        raise InvalidInput("--limit must be at least 1")
    return await data.tx.read(audit.list_events, min(limit, 10_000), before)
