"""What the portal's pages read about cases (rules §11), always for one user.

Every read here takes the user's id and finds only cases the user is requester or party of:
the page, the download and the form posts all go through `member_case`, so a case of someone
else is the same `None` as a case that does not exist (the portal answers 404 to both).
Internal notes never leave this module: only public comments and their attachments are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, func, or_, select, true, union
from sqlalchemy.sql.elements import ColumnElement

from gateway.model import ACTIVE_STATUSES, DONE_STATUSES
from store.driver import DriverStatement
from store.models import AppUser, Attachment, CaseParty, Comment, Organisation, StatusChange, SupportCase

_C = SupportCase.__table__  # type: ignore[attr-defined]
_P = CaseParty.__table__  # type: ignore[attr-defined]
_U = AppUser.__table__  # type: ignore[attr-defined]
_O = Organisation.__table__  # type: ignore[attr-defined]
_M = Comment.__table__  # type: ignore[attr-defined]
_A = Attachment.__table__  # type: ignore[attr-defined]
_H = StatusChange.__table__  # type: ignore[attr-defined]

FILTERS = {"active": sorted(s.value for s in ACTIVE_STATUSES), "done": sorted(s.value for s in DONE_STATUSES),
           "all": None}


@dataclass(frozen=True, slots=True)
class CaseRow:
    number: str
    subject: str
    status: str
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class CaseHead:
    id: int
    number: str
    subject: str
    status: str
    created_at: datetime
    updated_at: datetime
    requester_id: int
    requester_name: str
    requester_email: str
    organisation_id: int | None
    organisation: str | None


@dataclass(frozen=True, slots=True)
class Person:
    name: str
    email: str
    kind: str


@dataclass(frozen=True, slots=True)
class FileRow:
    id: int
    name: str
    size: int


@dataclass(frozen=True, slots=True)
class CommentRow:
    id: int
    at: datetime
    author_name: str
    author_email: str | None
    by_agent: bool
    text: str
    files: tuple[FileRow, ...]


@dataclass(frozen=True, slots=True)
class StatusRow:
    at: datetime
    from_status: str | None
    to_status: str


@dataclass(frozen=True, slots=True)
class CasePage:
    head: CaseHead
    parties: tuple[Person, ...]
    comments: tuple[CommentRow, ...]
    history: tuple[StatusRow, ...]


@dataclass(frozen=True, slots=True)
class Download:
    name: str
    sha256: str
    size: int


def _member_ids(user_id: int) -> Any:
    """The ids of the user's cases: as requester (index on requester_id) or party (on user_id)."""
    return union(select(_C.c.id).where(_C.c.requester_id == user_id),
                 select(_P.c.case_id).where(_P.c.user_id == user_id))


def _is_member(user_id: int) -> ColumnElement[bool]:
    """This case row is the user's: for one case found by number, checked on that row alone
    (`_member_ids` would first collect all of the user's cases: 1,000 ids for a busy user)."""
    party = select(_P.c.case_id).where(_P.c.case_id == _C.c.id, _P.c.user_id == user_id)
    return or_(_C.c.requester_id == user_id, party.exists())


def _status_filter(which: str) -> ColumnElement[bool]:
    statuses = FILTERS[which]
    return _C.c.status.in_(statuses) if statuses is not None else true()


def my_cases(conn: Connection, user_id: int, which: str, limit: int, offset: int) -> tuple[list[CaseRow], int]:
    """Mine sager: the user's cases under a filter, newest change first; and how many in all."""
    where = and_(_C.c.id.in_(_member_ids(user_id)), _status_filter(which))
    # The count rides along with the page (a window over the same rows): one pass, not two.
    rows = conn.execute(select(_C.c.number, _C.c.subject, _C.c.status, _C.c.updated_at, func.count().over())
                        .where(where).order_by(_C.c.updated_at.desc(), _C.c.id.desc()).limit(limit).offset(offset)
                        ).all()
    if rows:
        return [CaseRow(*row[:4]) for row in rows], int(rows[0][4])
    return [], int(conn.execute(select(func.count()).select_from(_C).where(where)).scalar_one())


def member_case(conn: Connection, number: str, user_id: int) -> CaseHead | None:
    """The case, if this user is its requester or a party; else None, as for no such case."""
    numbers = list(dict.fromkeys([number, number.upper()]))  # the unique index, not upper(number)
    row = conn.execute(
        select(_C.c.id, _C.c.number, _C.c.subject, _C.c.status, _C.c.created_at, _C.c.updated_at,
               _C.c.requester_id, _U.c.name, _U.c.email, _U.c.organisation_id, _O.c.name)
        .select_from(_C.join(_U, _U.c.id == _C.c.requester_id).outerjoin(_O, _O.c.id == _U.c.organisation_id))
        .where(_C.c.number.in_(numbers), _is_member(user_id))).first()
    return CaseHead(*row) if row else None


def case_page(conn: Connection, head: CaseHead) -> CasePage:
    return CasePage(head, parties(conn, head.id), _comments(conn, head.id), _history(conn, head.id))


def member_case_page(conn: Connection, number: str, user_id: int) -> CasePage | None:
    """`member_case` and its `case_page` in one read (one trip to the store for the page)."""
    head = member_case(conn, number, user_id)
    return case_page(conn, head) if head is not None else None


# The case page's own reads, built and compiled once and run by the driver (store/driver.py):
# a page of 200 comments spent half its CPU in SQLAlchemy's building, compiling-cache and
# result processing of these four statements. The rows are the driver's tuples; the times are
# made UTC here (`_utc`) as the column type's result processing did.
_CASE: Any = bindparam("case_id")
_PARTIES = DriverStatement(select(_U.c.name, _U.c.email, _U.c.kind).select_from(_P.join(_U, _U.c.id == _P.c.user_id))
                           .where(_P.c.case_id == _CASE).order_by(_U.c.name, _U.c.email), (), ["case_id"])
_PUBLIC = and_(_M.c.case_id == _CASE, _M.c.public.is_(True))
_FILES = DriverStatement(select(_A.c.comment_id, _A.c.id, _A.c.name, _A.c.size)
                         .select_from(_A.join(_M, _M.c.id == _A.c.comment_id)).where(_PUBLIC).order_by(_A.c.id),
                         (), ["case_id"])
_COMMENTS = DriverStatement(select(_M.c.id, _M.c.created_at, _U.c.name, _U.c.email, _U.c.role, _M.c.visible_text)
                            .select_from(_M.outerjoin(_U, _U.c.id == _M.c.author_id))
                            .where(_PUBLIC).order_by(_M.c.created_at, _M.c.id), (), ["case_id"])
_HISTORY = DriverStatement(select(_H.c.at, _H.c.from_status, _H.c.to_status).where(_H.c.case_id == _CASE)
                           .order_by(_H.c.at, _H.c.id), (), ["case_id"])


def _utc(value: datetime | str) -> datetime:
    """A stored time as an aware UTC datetime: SQLite's text, PostgreSQL's (or SQLAlchemy's) datetime."""
    at = datetime.fromisoformat(value) if isinstance(value, str) else value
    return at.replace(tzinfo=UTC) if at.utcoffset() is None else at.astimezone(UTC)


def parties(conn: Connection, case_id: int) -> tuple[Person, ...]:
    return tuple(Person(*row) for row in _PARTIES.execute(conn, {"case_id": case_id}))


def _comments(conn: Connection, case_id: int) -> tuple[CommentRow, ...]:
    files: dict[int, list[FileRow]] = {}
    for comment_id, file_id, name, size in _FILES.execute(conn, {"case_id": case_id}):
        files.setdefault(comment_id, []).append(FileRow(file_id, name, size))
    return tuple(CommentRow(cid, _utc(at), name or "", email, role == "agent", text, tuple(files.get(cid, ())))
                 for cid, at, name, email, role, text in _COMMENTS.execute(conn, {"case_id": case_id}))


def _history(conn: Connection, case_id: int) -> tuple[StatusRow, ...]:
    return tuple(StatusRow(_utc(at), before, after) for at, before, after in _HISTORY.execute(conn, {"case_id": case_id}))


def download(conn: Connection, case_id: int, file_id: int) -> Download | None:
    """An attachment of a public comment of this case (the caller checked the case is the user's)."""
    row = conn.execute(select(_A.c.name, _A.c.sha256, _A.c.size).select_from(_A.join(_M, _M.c.id == _A.c.comment_id))
                       .where(_A.c.id == file_id, _M.c.case_id == case_id, _M.c.public.is_(True))).first()
    return Download(*row) if row else None


def people(conn: Connection, organisation_id: int, emails: list[str]) -> list[Person]:
    """The customers of this organisation among these addresses, in the given order: a Del post
    names its people by address, and no one else can be shared with, whatever it names."""
    if not emails:
        return []
    rows = conn.execute(select(_U.c.name, _U.c.email, _U.c.kind).where(
        _U.c.organisation_id == organisation_id, _U.c.role == "customer",
        _U.c.email.in_([e.lower() for e in emails])))
    found = {email: Person(name, email, kind) for name, email, kind in rows}
    return [found[e.lower()] for e in emails if e.lower() in found]
