"""Reads for a person's export (GDPR art. 15, 20), a page at a time: the use-case
(gateway/export.py) writes each page into the zip before it reads the next, so no list of
rows and no file is ever whole in memory. Raw mails are read in chunks (`raw_chunk`).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from store.models import Attachment, InboundRaw, Outbox, StatusChange, joined_text
from store.person import CASE, IN, C, Person, U

A = Attachment.__table__  # type: ignore[attr-defined]
OUT = Outbox.__table__  # type: ignore[attr-defined]
S = StatusChange.__table__  # type: ignore[attr-defined]
RAW = InboundRaw.__table__  # type: ignore[attr-defined]

PAGE = 200


def case_head(conn: Connection, case_id: int) -> dict[str, Any]:
    """A case as the export shows it: its fields, the people named on it, and its history."""
    requester, assignee = U.alias("requester"), U.alias("assignee")
    row = conn.execute(select(CASE, requester.c.email.label("requester"), assignee.c.email.label("assignee"))
                       .select_from(CASE.join(requester, requester.c.id == CASE.c.requester_id)
                                    .outerjoin(assignee, assignee.c.id == CASE.c.assignee_id))
                       .where(CASE.c.id == case_id)).mappings().one()
    history = conn.execute(select(S.c.at, S.c.by_label, S.c.via, S.c.from_status, S.c.to_status, S.c.reason)
                           .where(S.c.case_id == case_id).order_by(S.c.at, S.c.id)).mappings()
    head = {key: row[key] for key in ("number", "subject", "status", "requester", "assignee", "close_reason",
                                      "created_at", "updated_at", "status_changed_at", "raw_deleted_at",
                                      "anonymised_at")}
    head["history"] = [dict(h) for h in history]
    return head


def comments_page(conn: Connection, case_id: int, user_id: int, internal: bool, after_id: int,
                  limit: int = PAGE) -> list[dict[str, Any]]:
    """The case's comments the person may see (public ones and their own; internal notes only
    with `internal`), with their attachments' metadata."""
    author = U.alias("author")
    query = (select(C, author.c.email.label("author")).select_from(C.outerjoin(author, author.c.id == C.c.author_id))
             .where(C.c.case_id == case_id, C.c.id > after_id).order_by(C.c.id).limit(limit))
    if not internal:
        query = query.where(C.c.public.is_(True) | (C.c.author_id == user_id))
    rows = conn.execute(query).mappings().all()
    files: dict[int, list[dict[str, Any]]] = {}
    if rows:
        for a in conn.execute(select(A).where(A.c.comment_id.in_([r["id"] for r in rows])).order_by(A.c.id)).mappings():
            files.setdefault(a["comment_id"], []).append(
                {"id": a["id"], "name": a["name"], "size": a["size"], "sha256": a["sha256"],
                 "content_type": a["content_type"], "inline": a["inline"]})
    return [{"id": r["id"], "author": r["author"], "mine": r["author_id"] == user_id, "created_at": r["created_at"],
             "source": r["source"], "public": r["public"], "kind": r["kind"], "via": r["via"],
             "visible_text": r["visible_text"], "signature": r["signature"],
             "full_text": r["full_text"] or joined_text(r["visible_text"], r["signature"]), "html": r["html"],
             "attachments": files.get(r["id"], [])} for r in rows]


def notifications_page(conn: Connection, person: Person, after_id: int, limit: int = PAGE) -> list[dict[str, Any]]:
    """Notifications to the address (or, once erased, to the pseudonym)."""
    to = [person.address] + ([person.pseudonym] if person.pseudonym else [])
    number = select(CASE.c.number).where(CASE.c.id == OUT.c.case_id).scalar_subquery()
    rows = conn.execute(select(OUT, number.label("case")).where(OUT.c.recipient.in_(to), OUT.c.id > after_id)
                        .order_by(OUT.c.id).limit(limit)).mappings()
    return [{key: r[key] for key in ("id", "created_at", "event", "case", "recipient", "recipient_name", "language",
                                     "message_id", "context", "state", "attempts", "sent_at", "last_error",
                                     "pruned_at")} for r in rows]


def inbound_rows(conn: Connection, ids: list[int]) -> list[dict[str, Any]]:
    """The inbox records of these mails (`person.inbound_ids`), with the size of the raw bytes
    still kept."""
    raw_size = select(func.length(RAW.c.raw)).where(RAW.c.inbound_id == IN.c.id).scalar_subquery()
    number = select(CASE.c.number).where(CASE.c.id == IN.c.case_id).scalar_subquery()
    rows = conn.execute(select(IN, raw_size.label("raw_kept"), number.label("case"))
                        .where(IN.c.id.in_(ids)).order_by(IN.c.id)).mappings()
    return [{key: r[key] for key in ("id", "received_at", "source", "envelope_from", "envelope_to", "size",
                                     "message_id", "state", "outcome", "reason", "case", "processed_at", "subject",
                                     "from_addr", "raw_kept")} for r in rows]


def raw_chunk(conn: Connection, inbound_id: int, start: int, length: int) -> bytes:
    """`length` bytes of a raw mail from offset `start` (0-based), so the export never holds a
    35 MB mail at once. SQLite: its incremental blob I/O (its substr() would load the whole value
    for every chunk); PostgreSQL: substr() on the server."""
    dbapi = conn.connection.driver_connection
    if isinstance(dbapi, sqlite3.Connection):
        try:
            with dbapi.blobopen("inbound_raw", "raw", inbound_id, readonly=True) as blob:
                blob.seek(start)
                return blob.read(length)
        except sqlite3.OperationalError:  # no such row (any more)
            return b""
    chunk = conn.execute(select(func.substr(RAW.c.raw, start + 1, length))
                         .where(RAW.c.inbound_id == inbound_id)).scalar()
    return bytes(chunk or b"")
