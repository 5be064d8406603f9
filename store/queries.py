"""Reads: rows → domain values (`UserRef`, `CaseRef`) and JSON-ready views for the CLI and API."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Integer, bindparam, func, literal, or_, tuple_
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from gateway.errors import NotFound
from gateway.model import (
    ACTIVE_STATUSES,
    DONE_STATUSES,
    CaseRef,
    Facts,
    Role,
    Status,
    Triage,
    UserKind,
    UserRef,
)
from store import group
from store.driver import DriverStatement, flush_waiting, rows_together
from store.models import (
    AppUser,
    Attachment,
    CaseParty,
    Comment,
    InboundMail,
    MessageIndex,
    Organisation,
    Outbox,
    StatusChange,
    SupportCase,
    joined_text,
)
from store.person import address_blocked


def user_ref(user: AppUser) -> UserRef:
    assert user.id is not None
    return UserRef(user.id, user.email, user.name, UserKind(user.kind), Role(user.role),
                   user.organisation_id, user.language, user.bouncing_since is not None)


def user_by_email(session: Session, email: str) -> AppUser | None:
    return session.exec(select(AppUser).where(AppUser.email == email.lower())).first()


def case_by_number(session: Session, number: str) -> SupportCase | None:
    return session.exec(select(SupportCase).where(func.upper(SupportCase.number) == number.upper())).first()


def case_ref(session: Session, case: SupportCase) -> CaseRef:
    """The case as the rules see it (as flushed to the database)."""
    assert case.id is not None
    ref = case_ref_by_id(session, case.id)
    assert ref is not None
    return ref


# --- the mail path: plain values through SQLAlchemy Core, statements built once -------------------

_U = AppUser.__table__  # type: ignore[attr-defined]
_C = SupportCase.__table__  # type: ignore[attr-defined]
_P = CaseParty.__table__  # type: ignore[attr-defined]
_I = MessageIndex.__table__  # type: ignore[attr-defined]
_IN = InboundMail.__table__  # type: ignore[attr-defined]
_M = Comment.__table__  # type: ignore[attr-defined]
_A = Attachment.__table__  # type: ignore[attr-defined]
_USER_REFS = group.USER_REFS
_CASE_BY_NUMBER = sa_select(_C.c.id).where(func.upper(_C.c.number) == bindparam("number"))
_CASES_BY_MESSAGE_ID = sa_select(_I.c.message_id, _I.c.case_id).where(
    _I.c.message_id.in_(bindparam("message_ids", expanding=True)))
_CASE_REF = group.CASE_HEAD.where(_C.c.id == bindparam("id"))
_PARTY_IDS = sa_select(_P.c.user_id).where(_P.c.case_id == bindparam("id"))


def capped_count(*where: Any) -> Any:
    """SELECT count(*) of the rows matching `where`, stopping at the bound parameter `cap`.

    For the flood guards (a sender's mails an hour, a recipient's automatic answers a day): a
    flood is what they guard against, and an uncapped count would read the whole flood again
    for every mail of it."""
    return sa_select(func.count()).select_from(
        sa_select(literal(1)).where(*where).limit(bindparam("cap", type_=Integer)).subquery())


_RECENT_FROM = capped_count(_IN.c.from_addr == bindparam("address"), _IN.c.processed_at >= bindparam("since"),
                            _IN.c.outcome.in_(["created", "commented", "reopened"]))


# The same, run by the driver on SQLite (store/driver.py): rows are tuples in column order.
_RUN_USER_REFS = DriverStatement(_USER_REFS, (), ["emails"])
_RUN_CASE_BY_NUMBER = DriverStatement(_CASE_BY_NUMBER, (), ["number"])
_RUN_CASES_BY_MESSAGE_ID = DriverStatement(_CASES_BY_MESSAGE_ID, (), ["message_ids"])
_RUN_CASE_REF = DriverStatement(_CASE_REF, (), ["id"])
_RUN_PARTY_IDS = DriverStatement(_PARTY_IDS, (), ["id"])
_RUN_RECENT_FROM = DriverStatement(_RECENT_FROM, (), ["address", "since", "cap"])


def user_refs(session: Session, emails: Sequence[str]) -> list[UserRef]:
    """The registered users among these (canonical) addresses."""
    if not emails:
        return []
    reads = group.of(session)
    if reads is None:
        return _read_user_refs(session, [e.lower() for e in emails])
    wanted = list(dict.fromkeys(e.lower() for e in emails))
    missing = [e for e in wanted if e not in reads.users]
    if missing:
        reads.users.update(dict.fromkeys(missing))
        reads.users.update((ref.email, ref) for ref in _read_user_refs(session, missing))
    return [ref for e in wanted if (ref := reads.users[e]) is not None]


def end_group(session: Session) -> None:
    group.end(session)


def _read_user_refs(session: Session, emails: list[str]) -> list[UserRef]:
    return [group.user_ref_of(row) for row in _RUN_USER_REFS.rows(session.connection(), {"emails": emails})]


def read_ahead(session: Session, triages: Sequence[Triage], now: datetime, auto_cap: int,
               automatic: tuple[str, ...]) -> None:
    group.read_ahead(session, triages, now, auto_cap, automatic)


def case_id_by_number(session: Session, number: str) -> int | None:
    reads = group.of(session)
    if reads is not None and number.upper() in reads.numbers:
        if reads.numbers[number.upper()] is None and reads.numbering:
            flush_waiting(session.connection())  # a case this group opened may have it: its number first
        return reads.numbers[number.upper()]
    found = _RUN_CASE_BY_NUMBER.scalar(session.connection(), {"number": number.upper()})
    case_id = int(found) if found is not None else None
    if reads is not None:
        reads.numbers[number.upper()] = case_id
    return case_id


def case_id_by_message_ids(session: Session, message_ids: Sequence[str]) -> int | None:
    """The case of the newest referenced Message-ID that we know (ids come newest first)."""
    if not message_ids:
        return None
    reads = group.of(session)
    if reads is not None and all(mid in reads.message_ids for mid in message_ids):
        return next((found for mid in message_ids if (found := reads.message_ids[mid]) is not None), None)
    rows = _RUN_CASES_BY_MESSAGE_ID.rows(session.connection(), {"message_ids": list(message_ids)})
    by_id = {mid: case_id for mid, case_id in rows}
    if reads is not None:
        reads.message_ids.update({mid: by_id.get(mid) for mid in message_ids})
    return next((by_id[mid] for mid in message_ids if mid in by_id), None)


def case_ref_by_id(session: Session, case_id: int) -> CaseRef | None:
    reads = group.of(session)
    if reads is not None and case_id in reads.cases:
        return reads.cases[case_id]
    found, parties = rows_together(session.connection(), [(_RUN_CASE_REF, {"id": case_id}),
                                                          (_RUN_PARTY_IDS, {"id": case_id})])
    ref = group.case_ref_of(found[0], {user_id for (user_id,) in parties}) if found else None
    if reads is not None:
        reads.cases[case_id] = ref
    return ref


def sender_blocked(session: Session, address: str) -> bool:
    """An address whose data was erased (store/person.py)."""
    reads = group.of(session)
    if reads is not None and address.lower() in reads.blocked:
        return reads.blocked[address.lower()]
    return address_blocked(session.connection(), address)


def recent_from(session: Session, address: str, now: datetime, cap: int) -> int:
    """Mails from an address that opened or touched a case in the last hour (loop detection),
    counted up to `cap`; 0 when `cap` is 0 (the detector is off)."""
    if cap <= 0:
        return 0
    since = now - timedelta(hours=1)
    reads = group.of(session)
    if reads is not None and (address, since, cap) in reads.recent:
        return reads.recent[(address, since, cap)]
    count = int(_RUN_RECENT_FROM.scalar(session.connection(), {"address": address, "since": since, "cap": cap}))
    if reads is not None:
        reads.recent[(address, since, cap)] = count
    return count


def load_facts(session: Session, triage: Triage, now: datetime) -> Facts:
    """What the store knows that the plan needs (gateway.pipeline), read in one call: a read
    for the sender, one for each kind of thread key the mail carries, two for each case they
    name, one for the Cc'd users (CC sharing, a registered sender) and one for the loop guard."""
    sender = user_refs(session, [triage.sender])[0:1] if triage.sender else []
    keys = triage.keys
    by_token = next(filter(None, (case_id_by_number(session, n) for n in keys.token_case_numbers)), None)
    by_message_id = case_id_by_message_ids(session, keys.message_ids)
    by_subject = case_id_by_number(session, keys.subject_number) if keys.subject_number else None
    refs = {case_id: case_ref_by_id(session, case_id)
            for case_id in dict.fromkeys((by_message_id, by_token, by_subject)) if case_id is not None}
    return Facts(
        sender=sender[0] if sender else None,
        by_message_id=refs.get(by_message_id) if by_message_id else None,
        by_token=refs.get(by_token) if by_token else None,
        by_subject=refs.get(by_subject) if by_subject else None,
        cc_users=tuple(user_refs(session, list(triage.cc))) if triage.cc and sender else (),
        recent_from_sender=recent_from(session, triage.sender, now, triage.recent_cap) if triage.sender else 0,
        # an unknown sender whose data was erased (store/person.py): not registered again by mail
        sender_blocked=bool(triage.sender and not sender and not triage.kind.is_automated
                            and sender_blocked(session, triage.sender)),
    )


def require_case(session: Session, number: str) -> SupportCase:
    case = case_by_number(session, number)
    if case is None:
        raise NotFound(f"no case {number}")
    return case


def require_user(session: Session, email: str) -> AppUser:
    user = user_by_email(session, email)
    if user is None:
        raise NotFound(f"no user {email}")
    return user


# --- views --------------------------------------------------------------------------------


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _user_view(session: Session, user_id: int | None) -> dict[str, Any] | None:
    if user_id is None:
        return None
    user = session.get(AppUser, user_id)
    if user is None:
        return None
    return {"email": user.email, "name": user.name, "kind": user.kind, "role": user.role}


def list_users(session: Session) -> list[dict[str, Any]]:
    rows = (session.exec(select(AppUser, Organisation).join(
        Organisation, col(AppUser.organisation_id) == Organisation.id, isouter=True).order_by(AppUser.email))).all()
    return [{"email": u.email, "name": u.name, "organisation": o.name if o else None, "kind": u.kind,
             "role": u.role, "language": u.language, "bouncing": u.bouncing_since is not None}
            for u, o in rows]


def list_cases(session: Session, status: str = "active", user: str | None = None) -> list[dict[str, Any]]:
    """Every case of the filter, newest change first (`cases_page` for a page at a time)."""
    return cases_page(session, status, user, limit=None).items


def cases_page(session: Session, status: str = "active", user: str | None = None, limit: int | None = 100,
               before: tuple[datetime, int] | None = None) -> Page:
    """Cases by last change, newest first (`ix_case_updated`), from just after the cursor `before`
    (`parse_case_cursor`). An unknown `user` has no cases."""
    query = select(SupportCase, AppUser).join(AppUser, col(SupportCase.requester_id) == AppUser.id)
    if status == "active":
        query = query.where(col(SupportCase.status).in_([s.value for s in ACTIVE_STATUSES]))
    elif status == "done":
        query = query.where(col(SupportCase.status).in_([s.value for s in DONE_STATUSES]))
    elif status != "all":
        query = query.where(SupportCase.status == Status(status).value)
    if user is not None:
        member = user_by_email(session, user)
        if member is None:
            return Page([], None)
        shared = select(CaseParty.case_id).where(CaseParty.user_id == member.id)
        query = query.where(or_(col(SupportCase.requester_id) == member.id, col(SupportCase.id).in_(shared)))
    if before is not None:
        query = query.where(tuple_(col(SupportCase.updated_at), col(SupportCase.id)) < tuple_(*before))
    query = query.order_by(col(SupportCase.updated_at).desc(), col(SupportCase.id).desc())
    rows = session.exec(query if limit is None else query.limit(limit + 1)).all()
    items = [{"number": c.number, "subject": c.subject, "status": c.status, "requester": u.email,
              "updated_at": _iso(c.updated_at)} for c, u in rows[:limit]]
    return Page(items, case_cursor(rows[limit - 1][0]) if limit is not None and len(rows) > limit else None)


def case_detail(session: Session, number: str, include_internal: bool = True) -> dict[str, Any]:
    case = require_case(session, number)
    parties = (session.exec(select(AppUser).join(CaseParty, col(CaseParty.user_id) == AppUser.id)
                                  .where(CaseParty.case_id == case.id).order_by(AppUser.email))).all()
    follows = session.get(SupportCase, case.follows_id) if case.follows_id else None
    followed_by = (session.exec(select(SupportCase.number).where(SupportCase.follows_id == case.id))).all()
    return {
        "number": case.number, "subject": case.subject, "status": case.status,
        "requester": _user_view(session, case.requester_id),
        "assignee": _user_view(session, case.assignee_id),
        "parties": [{"email": p.email, "name": p.name, "kind": p.kind} for p in parties],
        "follows": follows.number if follows else None, "followed_by": list(followed_by),
        "close_reason": case.close_reason,
        "created_at": _iso(case.created_at), "updated_at": _iso(case.updated_at),
        "comments": _comments(session, case.id, include_internal),
        "history": _history(session, case.id),
    }


def _comments(session: Session, case_id: int | None, include_internal: bool) -> list[dict[str, Any]]:
    """The case's comments with their authors and attachments: two queries whatever their number
    (one a comment for its author and one for its files made a case of 200 comments ~400)."""
    where = [_M.c.case_id == case_id] if include_internal else [_M.c.case_id == case_id, _M.c.public.is_(True)]
    files: dict[int, list[dict[str, Any]]] = {}
    for comment_id, *attachment in session.execute(
            sa_select(_A.c.comment_id, _A.c.id, _A.c.name, _A.c.size, _A.c.sha256, _A.c.content_type)
            .select_from(_A.join(_M, _M.c.id == _A.c.comment_id)).where(*where).order_by(_A.c.id)):
        files.setdefault(comment_id, []).append(dict(zip(_ATTACHMENT_KEYS, attachment, strict=True)))
    rows = session.execute(
        sa_select(_M.c.id, _U.c.email, _M.c.source, _M.c.public, _M.c.kind, _M.c.via, _M.c.visible_text,
                  _M.c.full_text, _M.c.signature, _M.c.created_at)
        .select_from(_M.outerjoin(_U, _U.c.id == _M.c.author_id)).where(*where).order_by(_M.c.created_at, _M.c.id))
    return [{
        "author": author, "source": source, "public": public, "kind": kind, "via": via, "visible_text": visible,
        "full_text": full or joined_text(visible, signature),  # "": no history
        "signature": signature,  # shown apart (or hidden); not in visible_text
        "created_at": _iso(created_at), "attachments": files.get(comment_id, []),
    } for comment_id, author, source, public, kind, via, visible, full, signature, created_at in rows]


_ATTACHMENT_KEYS = ("id", "name", "size", "sha256", "content_type")


def _history(session: Session, case_id: int | None) -> list[dict[str, Any]]:
    rows = (session.exec(select(StatusChange).where(StatusChange.case_id == case_id)
                               .order_by(col(StatusChange.at), col(StatusChange.id)))).all()
    return [{"at": _iso(r.at), "by": r.by_label, "via": r.via, "from": r.from_status, "to": r.to_status,
             "reason": r.reason}
            for r in rows]


def list_outbox(session: Session, state: str | None = None) -> list[dict[str, Any]]:
    """Every notification, oldest first (`outbox_page` for the newest, a page at a time)."""
    return _outbox_rows(session, _outbox_query(state).order_by(col(Outbox.id)))


def outbox_page(session: Session, state: str | None = None, limit: int = 100, before: int | None = None) -> Page:
    """Notifications newest first, those older than the notification `before` (its id)."""
    query = _outbox_query(state).order_by(col(Outbox.id).desc()).limit(limit + 1)
    rows = _outbox_rows(session, query if before is None else query.where(col(Outbox.id) < before))
    return _id_page(rows, limit)


def _outbox_query(state: str | None) -> Any:
    query = select(Outbox, SupportCase.number).join(SupportCase, col(Outbox.case_id) == SupportCase.id, isouter=True)
    return query.where(Outbox.state == state) if state else query


def _outbox_rows(session: Session, query: Any) -> list[dict[str, Any]]:
    return [{"id": o.id, "event": o.event, "case": number, "recipients": [o.recipient],
             "message_id": o.message_id, "state": o.state, "attempts": o.attempts, "last_error": o.last_error,
             "created_at": _iso(o.created_at), "sent_at": _iso(o.sent_at)}
            for o, number in (session.exec(query)).all()]


_INBOX_COLUMNS = ("id", "received_at", "source", "state", "attempts", "outcome", "reason", "message_id", "size",
                  "last_error")


def list_inbox(session: Session, state: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    """Inbox rows without their raw bytes (which may be tens of megabytes each), oldest first
    (`inbox_page` for the newest, a page at a time)."""
    return _inbox_rows(session, _inbox_query(state).order_by(_IN.c.id).limit(limit))


def inbox_page(session: Session, state: str | None = None, limit: int = 100, before: int | None = None) -> Page:
    """Inbox rows newest first, those older than the mail `before` (its id)."""
    query = _inbox_query(state).order_by(_IN.c.id.desc()).limit(limit + 1)
    return _id_page(_inbox_rows(session, query if before is None else query.where(_IN.c.id < before)), limit)


def inbound_case(session: Session, inbound_id: int) -> tuple[str | None, str | None]:
    """An inbox mail's state and the number of its case (None, None: no such mail)."""
    row = session.execute(sa_select(_IN.c.state, _C.c.number).select_from(_IN.outerjoin(_C, _IN.c.case_id == _C.c.id))
                          .where(_IN.c.id == inbound_id)).first()
    return (row[0], row[1]) if row is not None else (None, None)


def _inbox_query(state: str | None) -> Any:
    query = (sa_select(*(_IN.c[name] for name in _INBOX_COLUMNS), _C.c.number)
             .select_from(_IN.outerjoin(_C, _IN.c.case_id == _C.c.id)))
    return query.where(_IN.c.state == state) if state else query


def _inbox_rows(session: Session, query: Any) -> list[dict[str, Any]]:
    return [{**{name: (_iso(r[i]) if name == "received_at" else r[i]) for i, name in enumerate(_INBOX_COLUMNS)},
             "case": r[-1]} for r in session.execute(query).all()]


# --- pages ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    """One page of a newest-first list; `next` is the cursor of the page after it (None: no more)."""

    items: list[dict[str, Any]]
    next: str | None

    def as_json(self) -> dict[str, Any]:
        return {"items": self.items, "next": self.next}


def _id_page(rows: list[dict[str, Any]], limit: int) -> Page:
    return Page(rows[:limit], str(rows[limit - 1]["id"]) if len(rows) > limit else None)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def case_cursor(case: SupportCase) -> str:
    """Where a page of cases ends: its last case's change time (µs since 1970) and id."""
    assert case.id is not None
    return f"{(case.updated_at - _EPOCH) // _MICROSECOND}-{case.id}"


def parse_case_cursor(text: str) -> tuple[datetime, int]:
    """A `case_cursor` back as (updated_at, id); ValueError for anything else."""
    micros, _, case_id = text.strip().partition("-")
    if not (micros.isdigit() and case_id.isdigit()) or len(micros) > 16 or len(case_id) > 18:
        raise ValueError(f"not a cursor of the case list: {text[:40]!r}")
    return _EPOCH + int(micros) * _MICROSECOND, int(case_id)
