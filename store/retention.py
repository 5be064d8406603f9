"""The retention jobs' reads and writes (gateway/retention.py runs them), over a caller's
transaction. Safe on several nodes at once: every item is taken by a conditional UPDATE that
only one runner wins (on PostgreSQL the loser waits for the winner's row lock, then finds the
condition false); the loser changes nothing and reports nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import case, delete, exists, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlmodel import Session

from gateway.model import Role, Status, UserKind
from store.erasure import BARE_CONTEXT_KEYS, RAW, scrub_inbound
from store.models import Attachment, MessageIndex, Outbox, StatusChange
from store.person import CASE, IN, PSEUDONYM_DOMAIN, C, P, U

A = Attachment.__table__  # type: ignore[attr-defined]
OUT = Outbox.__table__  # type: ignore[attr-defined]
S = StatusChange.__table__  # type: ignore[attr-defined]
MI = MessageIndex.__table__  # type: ignore[attr-defined]

LUKKET = Status.LUKKET.value
SET_ASIDE = ("quarantined", "ignored", "rejected")  # outcomes of mail that made no case of its own
ANONYMOUS = f"anonym@{PSEUDONYM_DOMAIN}"  # the requester of every skeleton case


# --- what is due --------------------------------------------------------------------------------


def closed_cases_due(conn: Connection, mark: str, cutoff: datetime, after_id: int,
                     limit: int) -> list[tuple[int, str, datetime]]:
    """Cases closed before `cutoff` whose `mark` (raw_deleted_at | anonymised_at) is not set."""
    column = CASE.c[mark]
    rows = conn.execute(select(CASE.c.id, CASE.c.number, CASE.c.status_changed_at).where(
        CASE.c.status == LUKKET, column.is_(None), CASE.c.status_changed_at < cutoff, CASE.c.id > after_id,
    ).order_by(CASE.c.id).limit(limit))
    return [(int(i), str(n), at) for i, n, at in rows]


def set_aside_due(conn: Connection, cutoff: datetime, after_id: int, limit: int) -> list[tuple[int, str, datetime]]:
    rows = conn.execute(select(IN.c.id, IN.c.outcome, IN.c.processed_at).where(
        IN.c.outcome.in_(SET_ASIDE), IN.c.state.in_(["done", "quarantined"]), IN.c.processed_at < cutoff,
        IN.c.id > after_id).order_by(IN.c.id).limit(limit))
    return [(int(i), str(o), at) for i, o, at in rows]


def sent_due(conn: Connection, cutoff: datetime, after_id: int, limit: int) -> list[tuple[int, str, datetime]]:
    rows = conn.execute(select(OUT.c.id, OUT.c.event, OUT.c.sent_at).where(
        OUT.c.state == "sent", OUT.c.pruned_at.is_(None), OUT.c.sent_at < cutoff, OUT.c.id > after_id,
    ).order_by(OUT.c.id).limit(limit))
    return [(int(i), str(e), at) for i, e, at in rows]


def referenced(conn: Connection, shas: list[str]) -> set[str]:
    """The blobs among these that an attachment row still names."""
    if not shas:
        return set()
    return {str(s) for (s,) in conn.execute(select(A.c.sha256).where(A.c.sha256.in_(shas)).distinct())}


# --- doing it, each item once -------------------------------------------------------------------


def delete_case_raw(session: Session, case_id: int, now: datetime) -> list[int] | None:
    """The raw bytes of a closed case's mails; their ids, or None when another runner did it."""
    conn = session.connection()
    won = conn.execute(update(CASE).where(CASE.c.id == case_id, CASE.c.status == LUKKET,
                                          CASE.c.raw_deleted_at.is_(None)).values(raw_deleted_at=now)).rowcount
    if won != 1:
        return None
    ids = [int(i) for (i,) in conn.execute(select(IN.c.id).where(
        IN.c.case_id == case_id, exists().where(RAW.c.inbound_id == IN.c.id)))]
    if ids:
        conn.execute(delete(RAW).where(RAW.c.inbound_id.in_(ids)))
        conn.execute(update(IN).where(IN.c.id.in_(ids)).values(state="expired"))
    return ids


def anonymise_case(session: Session, case_id: int, now: datetime) -> tuple[dict[str, int], list[str]] | None:
    """A closed case down to its skeleton (number, dates, statuses, the case it follows): what
    was removed, counted, and the sha256 of the attachments whose rows went; None when another
    runner did it."""
    conn = session.connection()
    won = conn.execute(update(CASE).where(CASE.c.id == case_id, CASE.c.status == LUKKET,
                                          CASE.c.anonymised_at.is_(None)).values(
        anonymised_at=now, raw_deleted_at=func.coalesce(CASE.c.raw_deleted_at, now), subject="",
        requester_id=anonymous_user(conn, now), assignee_id=None, close_reason=None)).rowcount
    if won != 1:
        return None
    comments = select(C.c.id).where(C.c.case_id == case_id)
    shas = [str(s) for (s,) in conn.execute(select(A.c.sha256).where(A.c.comment_id.in_(comments)))]
    conn.execute(delete(A).where(A.c.comment_id.in_(comments)))
    removed = conn.execute(delete(C).where(C.c.case_id == case_id)).rowcount
    conn.execute(delete(P).where(P.c.case_id == case_id))
    conn.execute(delete(MI).where(MI.c.case_id == case_id))
    conn.execute(update(S).where(S.c.case_id == case_id).values(
        by_id=None, by_label=case((S.c.by_label == "system", "system"), else_=""), reason=None))
    _bare_notifications(conn, OUT.c.case_id == case_id, now, recipient="")
    mails = [int(i) for (i,) in conn.execute(select(IN.c.id).where(IN.c.case_id == case_id))]
    if mails:
        scrub_inbound(conn, mails)
    return {"comments": int(removed or 0), "attachments": len(shas), "mails": len(mails)}, shas


def anonymous_user(conn: Connection, now: datetime) -> int:
    """The placeholder requester of skeleton cases (never a recipient: it counts as erased)."""
    insert_ = (postgresql if conn.dialect.name == "postgresql" else sqlite).insert
    conn.execute(insert_(U).values(email=ANONYMOUS, name="Anonym", kind=UserKind.PERSON.value,
                                   role=Role.CUSTOMER.value, created_at=now, erased_at=now)
                 .on_conflict_do_nothing(index_elements=["email"]))
    return int(conn.execute(select(U.c.id).where(U.c.email == ANONYMOUS)).scalar_one())


def expire_set_aside(session: Session, ids: list[int]) -> list[int]:
    """Quarantined, ignored and rejected mails: raw bytes and what was read from them go;
    the ids this runner expired."""
    conn = session.connection()
    won = [int(i) for (i,) in conn.execute(update(IN).where(
        IN.c.id.in_(ids), IN.c.outcome.in_(SET_ASIDE), IN.c.state.in_(["done", "quarantined"]),
    ).values(state="expired").returning(IN.c.id))]
    if won:
        scrub_inbound(conn, won)
    return sorted(won)


def prune_sent(session: Session, ids: list[int], now: datetime) -> list[int]:
    """What sent notifications said (the case's subject, names, a reason); the ids this runner pruned."""
    conn = session.connection()
    return sorted(_bare_notifications(conn, OUT.c.id.in_(ids) & (OUT.c.state == "sent") & OUT.c.pruned_at.is_(None), now))


def _bare_notifications(conn: Connection, where: Any, now: datetime, recipient: str | None = None) -> list[int]:
    done = []
    for row_id, context in conn.execute(select(OUT.c.id, OUT.c.context).where(where)).all():
        values: dict[str, Any] = {"context": {k: v for k, v in (context or {}).items() if k in BARE_CONTEXT_KEYS},
                                  "recipient_name": "", "pruned_at": func.coalesce(OUT.c.pruned_at, now)}
        if recipient is not None:
            values["recipient"] = recipient
        if conn.execute(update(OUT).where(OUT.c.id == row_id, where).values(**values)).rowcount == 1:
            done.append(int(row_id))
    return done
