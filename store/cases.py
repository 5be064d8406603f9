"""Cases as the use-cases see them: read (and locked) as the rules see them (`CaseRef`), the
writes of the agents' and requesters' actions (`gateway.lifecycle`) by id, the notifications
they queue, the timed close (`gateway.jobs`) and a case's files. Plain functions over the
caller's sync session, inside its one transaction (`store.transact`); values, never rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlmodel import Session

from gateway.errors import NotFound
from gateway.model import CaseRef, Event, Status, UserRef
from store import outbox, writes
from store.models import Attachment, Comment, SupportCase
from store.queries import case_id_by_number, case_ref_by_id
from store.writes import clean_text

_C = SupportCase.__table__  # type: ignore[attr-defined]
_A = Attachment.__table__  # type: ignore[attr-defined]
_M = Comment.__table__  # type: ignore[attr-defined]
_MAX_ID = 2**63 - 1  # beyond: no row, and the drivers refuse the number
SYSTEM = "system"  # who the timed job acts as (store/stats.py counts its closes by this label)


def case_ref(session: Session, number: str) -> CaseRef:
    """The case with this number (any case), or NotFound."""
    case_id = case_id_by_number(session, number)
    case = case_ref_by_id(session, case_id) if case_id is not None else None
    if case is None:
        raise NotFound(f"no case {number}")
    return case


def lock_case(session: Session, number: str) -> CaseRef:
    """Take the case's write lock first, so two actions on one case never interleave, and read it.

    A no-op UPDATE is the portable lock: a row lock on PostgreSQL, the database write lock on
    SQLite (taken before anything is read, so no stale snapshot can be written over).
    """
    session.execute(update(_C).where(func.upper(_C.c.number) == number.upper()).values(number=_C.c.number))
    return case_ref(session, number)


def assign(session: Session, case_id: int, assignee_id: int, now: datetime) -> None:
    session.execute(update(_C).where(_C.c.id == case_id).values(assignee_id=assignee_id, updated_at=now))


def set_close_reason(session: Session, case_id: int, reason: str | None) -> None:
    session.execute(update(_C).where(_C.c.id == case_id).values(close_reason=clean_text(reason, 1000) or None))


def change_status(session: Session, case: CaseRef, to: Status, now: datetime, by: UserRef,
                  reason: str | None = None, via: str | None = None) -> None:
    """`case` (as it is now) moves to `to`, with its history row: `by` acted, through the
    service `via` (an API service token) if any."""
    writes.set_status(session, case.id, to, now, by.id, by.email, reason, via)


def notify(session: Session, case: CaseRef, event: Event, context: dict[str, Any], now: datetime, language: str,
           message_id_domain: str, actor_id: int | None = None, only: UserRef | None = None) -> list[str]:
    """Queue `event` to the requester and every party but the actor, or to `only`; their
    Message-IDs."""
    recipients = [outbox.recipient_of(only, language)] if only is not None else \
        outbox.recipients_for(session, case, actor_id, language)
    head = outbox.CaseHead(case.id, case.number, case.subject, case.status.value)
    return outbox.enqueue(session, head, event, recipients, now, message_id_domain, context)


# --- the timed close (rules §3 rule 4) -------------------------------------------------------------


def done_before(session: Session, cutoff: datetime) -> list[tuple[int, str, datetime]]:
    """Cases in `udfoert` since before `cutoff`: id, number, since when."""
    rows = session.execute(select(_C.c.id, _C.c.number, _C.c.status_changed_at).where(
        _C.c.status == Status.UDFOERT.value, _C.c.status_changed_at < cutoff).order_by(_C.c.id)).all()
    return [(int(case_id), str(number), since) for case_id, number, since in rows]


def close_done(session: Session, case_id: int, cutoff: datetime, now: datetime, days: int, language: str,
               message_id_domain: str) -> bool:
    """Close the case by "system" if it is still in `udfoert` since before `cutoff`. A
    conditional UPDATE that only one runner can win; the loser changes no row and writes nothing."""
    won = session.connection().execute(update(_C).where(
        _C.c.id == case_id, _C.c.status == Status.UDFOERT.value, _C.c.status_changed_at < cutoff,
    ).values(status=Status.LUKKET.value, updated_at=now, status_changed_at=now))
    if won.rowcount != 1:
        return False
    writes.record_change(session, case_id, Status.UDFOERT, Status.LUKKET, now, None, SYSTEM, f"{days} days in udfoert")
    case = case_ref_by_id(session, case_id)
    assert case is not None
    notify(session, case, Event.STATUS, {"previous_status": Status.UDFOERT.value, "actor_name": ""}, now, language,
           message_id_domain)
    return True


# --- a case's files ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CaseFile:
    """An attachment of a case's comment; its content is the blob `sha256`."""

    id: int
    name: str  # as the sender named it: not safe to show as it is
    size: int
    content_type: str  # as the sender declared it
    sha256: str
    public: bool  # of a public comment (not an internal note)


def file_of(session: Session, case_id: int, attachment_id: int) -> CaseFile | None:
    """Attachment `attachment_id` if it belongs to a comment of the case."""
    if not 0 < attachment_id <= _MAX_ID:
        return None
    row = session.execute(select(_A.c.id, _A.c.name, _A.c.size, _A.c.content_type, _A.c.sha256, _M.c.public)
                          .join(_M, _A.c.comment_id == _M.c.id)
                          .where(_A.c.id == attachment_id, _M.c.case_id == case_id)).first()
    return CaseFile(*row) if row is not None else None
