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

from gateway.errors import NotFound
from gateway.lifecycle import Forbidden, safe_name
from store import cases, users
from store.blobs import BlobStore
from store.engine import Sessions
from store.transact import run_in, transaction

_SPELLED = str.maketrans({"æ": "ae", "Æ": "AE", "ø": "oe", "Ø": "OE", "ß": "ss"})  # NFKD keeps these whole


@dataclass(frozen=True, slots=True)
class AttachmentFile:
    id: int
    name: str  # safe to show; still only ever a download's suggested name
    size: int
    content_type: str  # as the sender declared it
    path: Path  # the content, in the blob store


async def open_attachment(sessions: Sessions, blobs: BlobStore, number: str, attachment_id: int,
                          requester: str | None) -> AttachmentFile:
    """Attachment `attachment_id` of case `number`, for an agent (`requester` None) or for the
    requester with that address. `NotFound` when it is not on that case or not for their eyes
    (an internal note's file), or when its content is gone; `Forbidden` for a non-party."""
    async with transaction(sessions) as session:
        case = await run_in(session, cases.case_ref, number)
        if requester is not None:
            user = await run_in(session, users.find, requester)
            if user is None or not case.admits(user):
                raise Forbidden(f"not a party of {case.number}")
        found = await run_in(session, cases.file_of, case.id, attachment_id)
    if found is None or (requester is not None and not found.public):
        raise NotFound(f"no attachment {attachment_id} on {case.number}")
    path = blobs.path(found.sha256)
    if not path.is_file():
        raise NotFound(f"the content of attachment {attachment_id} of {number} is missing from the blob store")
    return AttachmentFile(found.id, safe_name(found.name), found.size, found.content_type, path)


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
