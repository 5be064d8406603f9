"""Fetching a stored attachment, for whoever may see the case: the HTTP API, `gateway cases
attachment` and the portal all come through `open_attachment`, so the rule is written once.

An agent sees every attachment of a case; a requester only those of the public comments of a
case they are party to (the same rule as the case itself, `CaseRef.admits`). Whatever the file
claims to be, it is served as a download (`download_headers`), never rendered by a browser.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import Session, select
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.errors import NotFound
from gateway.lifecycle import Forbidden, safe_name
from store import queries
from store.blobs import BlobStore
from store.models import Attachment, Comment
from store.transact import run_in

_MAX_ID = 2**63 - 1  # beyond: no row, and the drivers refuse the number
_SPELLED = str.maketrans({"æ": "ae", "Æ": "AE", "ø": "oe", "Ø": "OE", "ß": "ss"})  # NFKD keeps these whole


@dataclass(frozen=True, slots=True)
class AttachmentFile:
    id: int
    name: str  # safe to show; still only ever a download's suggested name
    size: int
    content_type: str  # as the sender declared it
    path: Path  # the content, in the blob store


async def open_attachment(sessions: async_sessionmaker[AsyncSession], blobs: BlobStore, number: str,
                          attachment_id: int, requester: str | None) -> AttachmentFile:
    """Attachment `attachment_id` of case `number`, for an agent (`requester` None) or for the
    requester with that address. `NotFound` when it is not on that case or not for their eyes
    (an internal note's file), or when its content is gone; `Forbidden` for a non-party."""
    async with sessions() as session:
        row = await run_in(session, _attachment_for, number, attachment_id, requester)
    path = blobs.path(row.sha256)
    if not path.is_file():
        raise NotFound(f"the content of attachment {attachment_id} of {number} is missing from the blob store")
    assert row.id is not None
    return AttachmentFile(row.id, safe_name(row.name), row.size, row.content_type, path)


def _attachment_for(session: Session, number: str, attachment_id: int, requester: str | None) -> Attachment:
    case = queries.require_case(session, number)
    if requester is not None:
        user = queries.user_by_email(session, requester)
        if user is None or not queries.case_ref(session, case).admits(queries.user_ref(user)):
            raise Forbidden(f"not a party of {case.number}")
    found = None
    if 0 < attachment_id <= _MAX_ID:
        query = (select(Attachment, Comment.public).join(Comment, Attachment.comment_id == Comment.id)  # type: ignore[arg-type]
                 .where(Attachment.id == attachment_id, Comment.case_id == case.id))
        found = session.exec(query).first()
    if found is None or (requester is not None and not found[1]):
        raise NotFound(f"no attachment {attachment_id} on {case.number}")
    return found[0]


def download_headers(name: str) -> dict[str, str]:
    """A download that no browser renders or keeps: RFC 6266 with an ASCII fallback name."""
    return {"Content-Disposition": f"attachment; filename=\"{ascii_name(name)}\"; "
                                   f"filename*=UTF-8''{quote(name, safe='')}",
            "X-Content-Type-Options": "nosniff", "Cache-Control": "private, no-store"}


def ascii_name(name: str) -> str:
    """The name in plain ASCII for old clients: accents dropped, anything unsafe in a quoted
    header value (quotes, backslashes, controls, ;) replaced by _."""
    plain = unicodedata.normalize("NFKD", name.translate(_SPELLED)).encode("ascii", "ignore").decode("ascii")
    kept = "".join(ch if ch.isalnum() or ch in " ._-()[]+,=@" else "_" for ch in plain).strip(" .")
    return kept[:150] or "attachment"
