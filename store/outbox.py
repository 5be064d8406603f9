"""The outbox: notifications queued in the same transaction as the change (rules §2, §7).

Every row is one message to one recipient, with its final Message-ID (indexed for threading).
The sender loop claims due rows under a lease; `sending` rows whose lease ran out were
abandoned by a node that died and are claimed again (the at-least-once window, catalogue 29).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, case, func, insert, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlmodel import Session, col
from sqlmodel import select as model_select

from gateway.model import CaseRef, Event, UserRef
from store import group
from store.driver import DriverStatement
from store.faults import store_errors
from store.models import IN_ID_ORDER, OUTBOX_DUE, AppUser, CaseParty, MessageIndex, Outbox, SupportCase
from store.pg import driver as pg
from store.queries import capped_count

T = Outbox.__table__  # type: ignore[attr-defined]


def new_message_id(domain: str) -> str:
    return f"<{uuid.uuid4().hex}@{domain}>"


@dataclass(frozen=True, slots=True)
class RateLimits:
    """rules §6, with the anchors' defaults: Znuny's 40 automatic answers per address and day,
    Zammad's 10 per 10 minutes and 25 per hour per case and recipient. Over a limit the row is
    queued as `held` with the reason, visible and retryable, never silently dropped."""

    auto_answers_per_day: int = 40
    per_case_10_minutes: int = 10
    per_case_hour: int = 25


AUTOMATIC_ANSWERS = (Event.RECEIPT.value, Event.FOLLOWUP.value, Event.REJECTED.value)
BOUNCING = "recipient is bouncing"  # the `last_error` of a row held for that reason


# Held rows were never sent, so they don't count. Each count reads only its window through an
# index that ends in the time: (recipient, created_at) for the day, the case's own rows for
# the case windows; the day's count stops at the limit, so a flood of mail to one address
# (what these limits are for) does not make every new row slower to queue than the last.
_AUTO_ANSWERS = capped_count(T.c.recipient == bindparam("recipient"), T.c.created_at >= bindparam("day"),
                             T.c.state != "held", T.c.event.in_(AUTOMATIC_ANSWERS))
_CASE_WINDOWS = select(func.count().filter(T.c.created_at >= bindparam("ten")), func.count()).where(
    T.c.case_id == bindparam("case_id"), T.c.recipient == bindparam("recipient"), T.c.state != "held",
    T.c.created_at >= bindparam("hour"))


_RUN_AUTO_ANSWERS = DriverStatement(_AUTO_ANSWERS, (), ["recipient", "day", "cap"])
_RUN_CASE_WINDOWS = DriverStatement(_CASE_WINDOWS, (), ["case_id", "recipient", "ten", "hour"])


def _over_limit(session: Session, event: Event, case_id: int | None, recipient: str,
                now: datetime, limits: RateLimits, new_case: bool = False) -> str | None:
    conn = session.connection()
    if event.value in AUTOMATIC_ANSWERS:
        auto = _auto_answers(session, recipient, now - timedelta(days=1), limits.auto_answers_per_day)
        if auto >= limits.auto_answers_per_day:
            return f"rate limit: {limits.auto_answers_per_day} automatic answers a day to this address"
    if case_id is None:
        return None
    if new_case and min(limits.per_case_10_minutes, limits.per_case_hour) >= 2:
        # A case made in this transaction has at most its receipt and a "shared" row for one
        # recipient so far: the counts are 0 or 1, under any limit of 2 or more.
        return None
    ten, hour = _RUN_CASE_WINDOWS.rows(conn, {"case_id": case_id, "recipient": recipient,
                                              "ten": now - timedelta(minutes=10),
                                              "hour": now - timedelta(hours=1)})[0]
    if ten >= limits.per_case_10_minutes:
        return f"rate limit: {limits.per_case_10_minutes} mails in 10 minutes on this case"
    if hour >= limits.per_case_hour:
        return f"rate limit: {limits.per_case_hour} mails in an hour on this case"
    return None


def _auto_answers(session: Session, recipient: str, day: datetime, cap: int) -> int:
    reads = group.of(session)
    if reads is not None and (recipient, day, cap) in reads.auto:
        return reads.auto[(recipient, day, cap)]
    count = int(_RUN_AUTO_ANSWERS.scalar(session.connection(), {"recipient": recipient, "day": day, "cap": cap}))
    if reads is not None:
        reads.auto[(recipient, day, cap)] = count
    return count


@dataclass(frozen=True, slots=True)
class Recipient:
    email: str
    name: str
    language: str
    user_id: int | None = None
    bouncing: bool = False


def recipient_of(user: AppUser | UserRef, default_language: str) -> Recipient:
    bouncing = user.bouncing if isinstance(user, UserRef) else user.bouncing_since is not None
    return Recipient(user.email, user.name, user.language or default_language, user.id, bouncing)


@dataclass(frozen=True, slots=True)
class CaseHead:
    """What a notification says about its case. `number` None: not known yet (a case the group
    opened on PostgreSQL, store/group.py), and the outbox row takes it from the case's row."""

    id: int
    number: str | None
    subject: str
    status: str

    @classmethod
    def of(cls, case: SupportCase) -> CaseHead:
        assert case.id is not None
        return cls(case.id, case.number, case.subject, case.status)


def thread_ids(session: Session, case_id: int) -> list[str]:
    """The first Message-IDs of a case (its opening mail, our receipt), oldest first."""
    rows = session.exec(model_select(MessageIndex.message_id).where(MessageIndex.case_id == case_id)
                              .order_by(col(MessageIndex.ours)).limit(3))
    return list(rows.all())


def enqueue(session: Session, case: CaseHead | SupportCase, event: Event, recipients: Sequence[Recipient],
            now: datetime, message_id_domain: str, context: dict[str, Any] | None = None,
            refs: list[str] | None = None, limits: RateLimits = RateLimits(), new_case: bool = False) -> list[str]:
    """Queue one message per recipient; returns their Message-IDs. `refs`: the thread, when known.
    `new_case`: the case was made in this transaction, so it has no earlier rows to count."""
    head = case if isinstance(case, CaseHead) else CaseHead.of(case)
    refs = refs if refs is not None else thread_ids(session, head.id)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for rcpt in recipients:
        if rcpt.email in seen or not rcpt.email:
            continue
        seen.add(rcpt.email)
        ctx = {"case_number": head.number, "case_subject": head.subject, "status": head.status,
               "thread_ids": refs, **(context or {})}
        held = BOUNCING if rcpt.bouncing else _over_limit(
            session, event, head.id, rcpt.email, now, limits, new_case)
        rows.append(_row(event, head.id, rcpt, now, new_message_id(message_id_domain), ctx, held))
    _insert(session, rows, numbered=head.number is None)
    _note_held(session, rows)
    return [row["message_id"] for row in rows]


def enqueue_without_case(session: Session, event: Event, recipient: Recipient, now: datetime,
                         message_id_domain: str, context: dict[str, Any],
                         limits: RateLimits = RateLimits()) -> str:
    held = BOUNCING if recipient.bouncing else _over_limit(
        session, event, None, recipient.email, now, limits)
    row = _row(event, None, recipient, now, new_message_id(message_id_domain), context, held)
    _insert(session, [row])
    _note_held(session, [row])
    return str(row["message_id"])


_HELD = "outbox_held"  # the session's `info`: Message-IDs of the rows this transaction queued held


def _note_held(session: Session, rows: list[dict[str, Any]]) -> None:
    held = [row["message_id"] for row in rows if row["state"] == "held"]
    if held:
        session.info.setdefault(_HELD, set()).update(held)


def sendable(session: Session, message_ids: Sequence[str]) -> tuple[str, ...]:
    """Of these notifications queued in this transaction, those the sender is to send now (not
    held back by a rate limit or a bouncing address): only these are worth waking it for."""
    held = session.info.get(_HELD, ())
    return tuple(m for m in message_ids if m not in held)


def _row(event: Event, case_id: int | None, rcpt: Recipient, now: datetime, message_id: str,
         context: dict[str, Any], held: str | None) -> dict[str, Any]:
    return {"created_at": now, "event": event.value, "case_id": case_id, "recipient": rcpt.email,
            "recipient_name": rcpt.name, "language": rcpt.language, "message_id": message_id, "context": context,
            "state": "held" if held else "pending", "attempts": 0, "next_attempt_at": now, "last_error": held}


def _insert(session: Session, rows: list[dict[str, Any]], numbered: bool = False) -> None:
    """The rows, and their Message-IDs in the index (fresh uuids: no lookup) so replies thread.
    `numbered`: their context's case number is taken from the case's row as they are written."""
    if not rows:
        return
    conn = session.connection()
    if numbered:  # PostgreSQL only: a case's number is unknown only there (store/group.py)
        for row in rows:
            pg.later_rows(conn, _NUMBERED_ROWS, row)
    else:
        _INSERT_OUTBOX.later_many(conn, rows)
    _INSERT_INDEX.later_many(conn, [{"message_id": r["message_id"], "case_id": r["case_id"], "ours": True}
                                    for r in rows if r["case_id"]])
    group.answers_queued(session, rows, AUTOMATIC_ANSWERS)


_INSERT_OUTBOX = DriverStatement(insert(T), ["created_at", "event", "case_id", "recipient", "recipient_name",
                                             "language", "message_id", "context", "state", "attempts",
                                             "next_attempt_at", "last_error"], leaf=True)
_OUTBOX_VALUES = ["created_at", "event", "recipient", "recipient_name", "language", "message_id", "state", "attempts",
                  "next_attempt_at", "last_error"]
# PostgreSQL only (a case number is unknown only there): the rows' context with the number of
# their case, read from the case's row written before them in the same transaction, several rows
# to a statement: the number by a scalar subquery on the case's primary key for each row (a join
# of the VALUES to support_case was left to the planner, which chose scans of every case on
# tables without statistics).
_NUMBERED_ROWS = pg.insert_select_rows(
    "outbox", [*((name, T.c[name].type, kind) for name, kind in (
        ("created_at", "TIMESTAMP WITH TIME ZONE"), ("event", "VARCHAR"), ("recipient", "VARCHAR"),
        ("recipient_name", "VARCHAR"), ("language", "VARCHAR"), ("message_id", "VARCHAR"), ("state", "VARCHAR"),
        ("attempts", "INTEGER"), ("next_attempt_at", "TIMESTAMP WITH TIME ZONE"), ("last_error", "VARCHAR"),
        ("case_id", "INTEGER"), ("context", "JSONB")))],
    [*_OUTBOX_VALUES, "case_id", "context"],
    ", ".join(f"v.{name}" for name in (*_OUTBOX_VALUES, "case_id")) +
    ", CAST(v.context || jsonb_build_object('case_number', (SELECT number FROM support_case WHERE id = v.case_id))"
    " AS JSON)")
_INSERT_INDEX = DriverStatement(insert(MessageIndex.__table__), ["message_id", "case_id", "ours"],  # type: ignore[attr-defined]
                                leaf=True)


@dataclass(frozen=True, slots=True)
class DueNotification:
    id: int
    event: str
    recipient: str
    recipient_name: str
    language: str
    message_id: str
    context: dict[str, Any]
    attempts: int


def _claim(locked: bool) -> Any:
    """The due rows (pending and due, or sending with the lease run out) claimed, oldest first.
    Built once: SQLAlchemy keys its compiled-SQL cache on a statement's structure, and building
    it (and its key) again at every claim was a fifth of the sender's CPU under load."""
    now = bindparam("now", type_=T.c.next_attempt_at.type)
    due = or_(and_(T.c.state == "pending", T.c.next_attempt_at <= now),
              and_(T.c.state == "sending", T.c.claimed_until < now))
    pick = select(T.c.id).where(text(OUTBOX_DUE), due).order_by(T.c.id).limit(bindparam("most"))
    if locked:
        pick = pick.with_for_update(skip_locked=True)
    return (update(T).where(T.c.id.in_(pick.scalar_subquery()))
            .values(state="sending", claimed_until=bindparam("until"), attempts=T.c.attempts + 1,
                    claimed_by=bindparam("holder"))
            .returning(T.c.id, T.c.event, T.c.recipient, T.c.recipient_name, T.c.language, T.c.message_id,
                       T.c.context, T.c.attempts))


_CLAIM, _CLAIM_LOCKED = _claim(locked=False), _claim(locked=True)


async def claim_due(conn: AsyncConnection, limit: int, now: datetime, lease_s: float,
                    holder: str = "") -> list[DueNotification]:
    """Up to `limit` due notifications claimed under a lease, oldest first, in the transaction
    of `conn` (its own: on PostgreSQL it changes how the rest of it is planned)."""
    stmt = _CLAIM
    if conn.dialect.name == "postgresql":
        await conn.exec_driver_sql(IN_ID_ORDER)  # store/models.py: INBOX_DUE says why
        stmt = _CLAIM_LOCKED
    params = {"now": now, "until": now + timedelta(seconds=lease_s), "holder": holder[:100] or None, "most": limit}
    rows = (await conn.execute(stmt, params)).all()
    return sorted((DueNotification(r.id, r.event, r.recipient, r.recipient_name, r.language, r.message_id,
                                   dict(r.context or {}), r.attempts) for r in rows), key=lambda d: d.id)


class OutboxQueue:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def claim(self, limit: int, now: datetime, lease_s: float, holder: str = "") -> list[DueNotification]:
        with store_errors("outbox"):
            async with self._engine.begin() as conn:
                return await claim_due(conn, limit, now, lease_s, holder)

    async def mark_sent(self, ids: Sequence[int], now: datetime) -> None:
        with store_errors("outbox"):
            async with self._engine.begin() as conn:
                await conn.execute(update(T).where(T.c.id.in_(list(ids)))
                                   .values(state="sent", sent_at=now, claimed_until=None, last_error=None))

    async def mark_retry(self, row_id: int, error: str, at: datetime) -> None:
        with store_errors("outbox"):
            async with self._engine.begin() as conn:
                await conn.execute(update(T).where(T.c.id == row_id).values(
                    state="pending", next_attempt_at=at, claimed_until=None, last_error=error[:2000]))

    async def mark_failed(self, row_id: int, error: str) -> None:
        with store_errors("outbox"):
            async with self._engine.begin() as conn:
                await conn.execute(update(T).where(T.c.id == row_id).values(
                    state="failed", claimed_until=None, last_error=error[:2000]))

    async def release_stranded(self, holder: str, now: datetime) -> int:
        """Every row `holder` still has `sending` back to pending, its try not counted: a
        store error cut the sender off before it could mark them (none of them had a 250)."""
        with store_errors("outbox"):
            async with self._engine.begin() as conn:
                done = await conn.execute(update(T).where(T.c.state == "sending", T.c.claimed_by == holder[:100]).values(
                    state="pending", next_attempt_at=now, claimed_until=None,
                    attempts=case((T.c.attempts > 0, T.c.attempts - 1), else_=0)))
        return int(done.rowcount or 0)

    async def retry(self, row_id: int | None, now: datetime) -> int:
        cond = T.c.id == row_id if row_id is not None else T.c.state == "failed"
        with store_errors("outbox"):
            async with self._engine.begin() as conn:
                result = await conn.execute(update(T).where(cond, T.c.state.in_(["failed", "held"]))
                                            .values(state="pending", next_attempt_at=now, attempts=0))
        return int(result.rowcount or 0)

    async def depth(self) -> dict[str, int]:
        with store_errors("outbox"):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(select(T.c.state, func.count()).group_by(T.c.state))).all()
        return {str(s): int(n) for s, n in rows}


def recipients_for(session: Session, case: SupportCase | CaseRef, exclude_user_id: int | None,
                         default_language: str) -> list[Recipient]:
    """The requester and every party, never the one who caused the event (rules §7), nor anyone
    whose data was erased (their record is a pseudonym now)."""
    parties = (session.exec(model_select(CaseParty.user_id).where(CaseParty.case_id == case.id))).all()
    ids = [case.requester_id, *parties]
    users = (session.exec(model_select(AppUser).where(col(AppUser.id).in_(ids),
                                                      col(AppUser.erased_at).is_(None)))).all()
    by_id = {u.id: u for u in users}
    return [recipient_of(by_id[i], default_language) for i in dict.fromkeys(ids)
            if i in by_id and i != exclude_user_id]


def recipients_of_messages(session: Session, message_ids: Sequence[str]) -> set[str]:
    """The recipients of our notifications with these Message-IDs that we tried to send."""
    if not message_ids:
        return set()
    rows = session.execute(select(T.c.recipient).where(T.c.message_id.in_(list(message_ids)), T.c.attempts > 0))
    return {recipient for (recipient,) in rows}


def release_bouncing(session: Session, recipient: str, now: datetime) -> int:
    """Rows held because the recipient was bouncing go out again (after `users unbounce`)."""
    result = session.connection().execute(
        update(T).where(T.c.recipient == recipient, T.c.state == "held", T.c.last_error == BOUNCING)
        .values(state="pending", next_attempt_at=now, attempts=0, last_error=None))
    return int(result.rowcount or 0)
