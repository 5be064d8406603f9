"""Erasing a person (GDPR art. 17): their text, files, raw mails and name go; what others need
of the cases stays as a pseudonymised skeleton. Plain functions over a caller's transaction.

The use-case (gateway/privacy.py) runs them in this order, each step idempotent, so an erasure
cut off halfway is finished by running it again:

1. `erase_identity`: the address is blocked (mail from it registers nobody), the user record
   becomes a pseudonym, notifications to them are cancelled and what they said is dropped,
   the subjects of their cases and their name in others' notifications are replaced.
2. `erase_comments`: a page of their comments at a time: text replaced, attachment rows gone
   (the files follow once nothing names them: gateway/retention.py `sweep_blobs`).
3. `erase_inbound`: a page of the mails they sent at a time (`person.inbound_ids`): raw bytes
   deleted, the row kept as a pseudonymised, `expired` skeleton (a mail still queued is never
   processed now).

SQLite zeroes what these delete (`secure_delete`, store/engine.py); the WAL is cut afterwards.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlmodel import Session, SQLModel

from store.models import Attachment, InboundRaw, MessageIndex, Outbox, StatusChange
from store.person import (
    CASE,
    ERASED_TEXT,
    IN,
    B,
    C,
    P,
    Person,
    U,
    inbound_of,
    pseudonym_name,
)

OUT = Outbox.__table__  # type: ignore[attr-defined]
A = Attachment.__table__  # type: ignore[attr-defined]
RAW = InboundRaw.__table__  # type: ignore[attr-defined]
S = StatusChange.__table__  # type: ignore[attr-defined]
MI = MessageIndex.__table__  # type: ignore[attr-defined]

# What a notification row may keep once what it said is gone: nothing that names or quotes anyone.
BARE_CONTEXT_KEYS = ("case_number", "status", "previous_status", "follows_number")
CANCELLED = "cancelled"


def bare_context(context: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (context or {}).items() if k in BARE_CONTEXT_KEYS}


# --- the survey (--dry-run) ---------------------------------------------------------------------


def survey(conn: Connection, person: Person) -> dict[str, Any]:
    """What an erasure would touch, counted."""
    uid = person.user_id

    def count(query: Any) -> int:
        return int(conn.execute(query).scalar() or 0)

    mails = select(IN.c.id).where(inbound_of(person))
    out = {
        "user": uid is not None, "already_erased": person.erased, "blocked": person.blocked,
        "mails": count(select(func.count()).select_from(mails.subquery())),
        "raw_bytes": count(select(func.coalesce(func.sum(func.length(RAW.c.raw)), 0))
                           .where(RAW.c.inbound_id.in_(mails))),
        "notifications": count(select(func.count()).select_from(OUT).where(OUT.c.recipient == person.address)),
        "notifications_cancelled": count(select(func.count()).select_from(OUT).where(
            OUT.c.recipient == person.address, OUT.c.state.in_(["pending", "held"]))),
    }
    if uid is not None:
        mine = select(C.c.id).where(C.c.author_id == uid)
        out.update({
            "comments": count(select(func.count()).select_from(mine.subquery())),
            "attachments": count(select(func.count()).select_from(A).where(A.c.comment_id.in_(mine))),
            "attachment_bytes": count(select(func.coalesce(func.sum(A.c.size), 0)).where(A.c.comment_id.in_(mine))),
            "cases_as_requester": count(select(func.count()).select_from(CASE).where(CASE.c.requester_id == uid)),
            "cases_as_party": count(select(func.count()).select_from(P).where(P.c.user_id == uid)),
        })
    return out


# --- 1. identity, notifications, subjects -------------------------------------------------------


# Rows that serve only the person's logins (Serviceportalen's passwords, sessions and mailed
# links, issue 19): deleted outright. Found by table name, so a store without them skips them.
LOGIN_ROWS_BY_USER = ("portal_password", "portal_session")
LOGIN_ROWS_BY_EMAIL = ("portal_link",)


def erase_identity(session: Session, person: Person, now: datetime) -> None:
    conn = session.connection()
    _block(conn, person, now)
    _delete_logins(conn, person)
    old_name = None
    if person.user_id is not None:
        old_name = conn.execute(select(U.c.name).where(U.c.id == person.user_id)).scalar()
        conn.execute(update(U).where(U.c.id == person.user_id).values(
            email=person.pseudonym, name=pseudonym_name(person.user_id), organisation_id=None, language=None,
            bouncing_since=None, bounce_reason=None, token_generation=U.c.token_generation + 1,
            erased_at=func.coalesce(U.c.erased_at, now)))
        _erase_case_heads(conn, person.user_id, old_name)
    _erase_notifications(conn, person, now)


def _delete_logins(conn: Any, person: Person) -> None:
    tables = SQLModel.metadata.tables
    for name in LOGIN_ROWS_BY_USER:
        if name in tables and person.user_id is not None:
            conn.execute(delete(tables[name]).where(tables[name].c.user_id == person.user_id))
    for name in LOGIN_ROWS_BY_EMAIL:
        if name in tables:
            conn.execute(delete(tables[name]).where(tables[name].c.email == person.address))


def _block(conn: Any, person: Person, now: datetime) -> None:
    insert = (postgresql if conn.dialect.name == "postgresql" else sqlite).insert
    conn.execute(insert(B).values(email=person.address, user_id=person.user_id, blocked_at=now)
                 .on_conflict_do_nothing(index_elements=["email"]))


def _erase_notifications(conn: Any, person: Person, now: datetime) -> None:
    """Their notifications: those not sent yet are cancelled (one being sent right now goes);
    what every one said, and the address, give way to the pseudonym."""
    mine = OUT.c.recipient == person.address
    conn.execute(update(OUT).where(mine, OUT.c.state.in_(["pending", "held"]) | (
        (OUT.c.state == "sending") & (OUT.c.claimed_until < now))).values(
        state=CANCELLED, claimed_until=None, last_error="the recipient's data was erased"))
    rows = conn.execute(select(OUT.c.id, OUT.c.context).where(mine)).all()
    for row_id, context in rows:
        conn.execute(update(OUT).where(OUT.c.id == row_id).values(
            recipient=person.pseudonym or "", recipient_name="", context=bare_context(context),
            pruned_at=func.coalesce(OUT.c.pruned_at, now)))


def _erase_case_heads(conn: Any, user_id: int, old_name: str | None) -> None:
    """The subjects of the cases they opened (their words), their close reasons, their name in
    others' notifications, and their address and words in the case history."""
    theirs = select(CASE.c.id).where(CASE.c.requester_id == user_id)
    conn.execute(update(CASE).where(CASE.c.id.in_(theirs)).values(subject=ERASED_TEXT, close_reason=None))
    conn.execute(update(S).where(S.c.by_id == user_id).values(by_label=pseudonym_name(user_id)[:100], reason=None))
    involved = theirs.union(select(P.c.case_id).where(P.c.user_id == user_id))
    own = {int(i) for (i,) in conn.execute(theirs)}
    rows = conn.execute(select(OUT.c.id, OUT.c.case_id, OUT.c.context).where(OUT.c.case_id.in_(involved))).all()
    for row_id, case_id, context in rows:
        changed = _scrub_context(dict(context or {}), case_id in own, old_name, user_id)
        if changed is not None:
            conn.execute(update(OUT).where(OUT.c.id == row_id).values(context=changed))


def _scrub_context(context: dict[str, Any], own_case: bool, old_name: str | None,
                   user_id: int) -> dict[str, Any] | None:
    before = dict(context)
    if own_case and "case_subject" in context:
        context["case_subject"] = ERASED_TEXT
    if old_name and context.get("actor_name") == old_name:
        context["actor_name"] = pseudonym_name(user_id)
    return context if context != before else None


# --- 2. comments --------------------------------------------------------------------------------


def erase_comments(session: Session, user_id: int, after_id: int, limit: int) -> tuple[int | None, list[str]]:
    """One page of their comments (ids after `after_id`): the last id done (None: no more),
    and the sha256 of the attachments whose rows went."""
    conn = session.connection()
    ids = [int(i) for (i,) in conn.execute(select(C.c.id).where(C.c.author_id == user_id, C.c.id > after_id)
                                           .order_by(C.c.id).limit(limit))]
    if not ids:
        return None, []
    shas = [str(s) for (s,) in conn.execute(select(A.c.sha256).where(A.c.comment_id.in_(ids)))]
    conn.execute(delete(A).where(A.c.comment_id.in_(ids)))
    conn.execute(update(C).where(C.c.id.in_(ids)).values(visible_text=ERASED_TEXT, full_text="", signature="",
                                                          html=None))
    return ids[-1], shas


# --- 3. mails they sent ---------------------------------------------------------------------------


def erase_inbound(session: Session, ids: list[int], pseudonym: str | None) -> None:
    """These mails they sent (`person.inbound_ids`): raw bytes gone, the rows pseudonymised
    skeletons, their Message-IDs no longer thread."""
    conn = session.connection()
    message_ids = [m for (m,) in conn.execute(select(IN.c.message_id).where(IN.c.id.in_(ids))) if m]
    scrub_inbound(conn, ids, from_addr=pseudonym)
    if message_ids:
        conn.execute(delete(MI).where(MI.c.message_id.in_(message_ids), MI.c.ours.is_(False)))


def scrub_inbound(conn: Any, ids: list[int], from_addr: str | None = None) -> None:
    """Raw bytes deleted and what was read from them dropped; the row stays (`expired`) for the
    counts and the dedup key (the same mail read again from a mailbox is not taken anew). A mail
    still waiting is never processed now; a worker holding one loses its claim and rolls back."""
    conn.execute(delete(RAW).where(RAW.c.inbound_id.in_(ids)))
    conn.execute(update(IN).where(IN.c.id.in_(ids)).values(
        state="expired", subject=None, from_addr=from_addr, envelope_from=None, envelope_to=[], message_id=None,
        reason=None, last_error=None, claimed_until=None, claimed_by=None))


def unblock(session: Session, address: str) -> bool:
    """`gateway users allow`: the address may register again by mail; False when it was not blocked."""
    return bool(session.connection().execute(delete(B).where(B.c.email == address.lower())).rowcount)
