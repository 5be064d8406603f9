"""Writes inside one caller-owned transaction: users, cases, comments, history, index."""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import DateTime, Integer, String, bindparam, insert, text, update
from sqlalchemy import select as select_core
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, select

from gateway.errors import LostClaim, NotFound
from gateway.model import CommentDraft, NewUser, Role, Source, Status, UserKind, UserRef
from store import group
from store.driver import DriverStatement, flush_waiting
from store.inbox import CLAIM_HOLDS, Claim
from store.models import (
    AppUser,
    Attachment,
    CaseParty,
    Comment,
    Counter,
    InboundMail,
    MessageIndex,
    Organisation,
    StatusChange,
    SupportCase,
    joined_text,
)
from store.pg import driver as pg
from store.queries import user_by_email, user_refs

_TEXT_CAP = 1_000_000


def clean_text(value: str | None, cap: int = _TEXT_CAP) -> str:
    """Text columns never hold NUL (PostgreSQL refuses it) and are capped alike on every backend.
    A text without NUL is not copied (`replace` copies a mail's 20 KB even when it finds none)."""
    if not value:
        return ""
    if "\x00" in value:
        value = value.replace("\x00", "")
    return value if len(value) <= cap else value[:cap]


def next_case_number(session: Session, prefix: str, digits: int) -> str:
    """A unique case number. PostgreSQL: a sequence; SQLite: a counter row (one writer at a time)."""
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        value = conn.execute(text("SELECT nextval('case_number_seq')")).scalar_one()
    else:
        value = _BUMP_CASE_COUNTER.scalar(conn, {})
        if value is None:
            conn.execute(insert(_COUNTER).values(name="case", value=1))
            value = 1
    return f"{prefix}{int(value):0{digits}d}"


_COUNTER = Counter.__table__  # type: ignore[attr-defined]
_BUMP_CASE_COUNTER = DriverStatement(update(_COUNTER).where(_COUNTER.c.name == "case")
                                     .values(value=_COUNTER.c.value + 1).returning(_COUNTER.c.value), [])
_USERS = AppUser.__table__  # type: ignore[attr-defined]
_CASES = SupportCase.__table__  # type: ignore[attr-defined]
_HISTORY = StatusChange.__table__  # type: ignore[attr-defined]
_COMMENTS = Comment.__table__  # type: ignore[attr-defined]
_ATTACHMENTS = Attachment.__table__  # type: ignore[attr-defined]
_PARTIES = CaseParty.__table__  # type: ignore[attr-defined]
_INDEX = MessageIndex.__table__  # type: ignore[attr-defined]
_INBOUND = InboundMail.__table__  # type: ignore[attr-defined]
# Statements built once: building one per call costs about as much again as running it
# (SQLAlchemy builds the construct and its cache key each time), and on
# SQLite run by the driver (store/driver.py).
_INSERT_USER = DriverStatement(insert(_USERS).returning(_USERS.c.id),
                               ["email", "name", "kind", "role", "created_at"])
_INSERT_CASE = DriverStatement(insert(_CASES).returning(_CASES.c.id), [
    "number", "subject", "requester_id", "status", "follows_id", "created_at", "updated_at", "status_changed_at"])
_INSERT_HISTORY = DriverStatement(insert(_HISTORY),
                                  ["case_id", "at", "by_id", "by_label", "from_status", "to_status", "reason", "via"],
                                  leaf=True)
_CASE_STATUS = DriverStatement(select_core(_CASES.c.status).where(_CASES.c.id == bindparam("case_id")), (),
                               ["case_id"])
_SET_STATUS = DriverStatement(update(_CASES).where(_CASES.c.id == bindparam("case_id")),
                              ["status", "updated_at", "status_changed_at"], ["case_id"])
_TOUCH_CASE = DriverStatement(update(_CASES).where(_CASES.c.id == bindparam("case_id")), ["updated_at"], ["case_id"])
_INSERT_COMMENT = DriverStatement(insert(_COMMENTS).returning(_COMMENTS.c.id), [
    "case_id", "author_id", "created_at", "source", "public", "visible_text", "full_text", "html", "inbound_id",
    "kind", "via", "signature"], leaf=True)  # `later` only without files: then nothing references it
# PostgreSQL: the number from the sequence, formatted as `next_case_number` does, and the case.
_OPEN_CASE_SQL = (
    "WITH n AS (SELECT nextval('case_number_seq')::text AS v) "
    "INSERT INTO support_case ({id}number, subject, requester_id, status, follows_id, created_at, updated_at, "
    "status_changed_at) SELECT {given}CAST(:prefix AS VARCHAR) || lpad(n.v, greatest(CAST(:digits AS INTEGER), "
    "length(n.v)), '0'), CAST(:subject AS VARCHAR), CAST(:requester_id AS INTEGER), CAST(:status AS VARCHAR), "
    "CAST(:follows_id AS INTEGER), CAST(:now AS TIMESTAMP WITH TIME ZONE), CAST(:now AS TIMESTAMP WITH TIME ZONE), "
    "CAST(:now AS TIMESTAMP WITH TIME ZONE) FROM n RETURNING {returning}")
_OPEN_CASE_KEYS = ["prefix", "digits", "subject", "requester_id", "status", "follows_id", "now"]
_OPEN_CASE_PG = DriverStatement(text(_OPEN_CASE_SQL.format(id="", given="", returning="id, number")), [],
                                _OPEN_CASE_KEYS)
# The same with an id the group reserved (store/group.py): nobody waits for its answer, and the
# group's new cases go several to a statement (`GatheredRows`), each number from the sequence in
# the order the cases were opened (the VALUES' order; nextval in a subquery that is not flattened).
_OPEN_RESERVED_MANY = pg.GatheredRows(pg.insert_select_rows(
    "support_case", [(name, sa_type, kind) for name, sa_type, kind in (
        ("id", Integer(), "INTEGER"), ("prefix", String(), "VARCHAR"), ("digits", Integer(), "INTEGER"),
        ("subject", String(), "VARCHAR"), ("requester_id", Integer(), "INTEGER"), ("status", String(), "VARCHAR"),
        ("follows_id", Integer(), "INTEGER"), ("now", DateTime(timezone=True), "TIMESTAMP WITH TIME ZONE"))],
    ["id", "number", "subject", "requester_id", "status", "follows_id", "created_at", "updated_at",
     "status_changed_at"],
    "v.id, v.prefix || lpad(v.n, greatest(v.digits, length(v.n)), '0'), v.subject, v.requester_id, v.status, "
    "v.follows_id, v.now, v.now, v.now",
    source="(SELECT v.*, nextval('case_number_seq')::text AS n FROM (VALUES {rows}) AS v({names})) AS v",
    returning="id, number"), key="id")
_INSERT_ATTACHMENTS = DriverStatement(insert(_ATTACHMENTS),
                                      ["comment_id", "name", "size", "sha256", "content_type", "inline"], leaf=True)

# The mail path writes through SQLAlchemy Core: rows it never reads back need no ORM
# unit of work, whose flushes would be most of a new case's transaction.


@cache
def _insert_ignoring(dialect: str, table: Any, *key: str) -> Any:
    """INSERT … ON CONFLICT (key) DO NOTHING, built once per dialect and table."""
    module = postgresql if dialect == "postgresql" else sqlite
    return module.insert(table).on_conflict_do_nothing(index_elements=list(key))


def ensure_user(session: Session, who: UserRef | NewUser, now: datetime) -> UserRef:
    if isinstance(who, UserRef):
        return who
    # The caller looked the address up in this transaction already. Another node's transaction
    # may register the same address meanwhile (two nodes, a new sender's first mails): then
    # ours waits for its commit and takes that user, instead of failing the mail on the unique
    # index (a failed mail waits `retry_delay_s`, 30 s, before its next try).
    email, name = who.email.lower(), clean_text(who.name, 200)
    conn = session.connection()
    new_id = _user_ignoring(conn.dialect.name).scalar(conn, {
        "email": email, "name": name, "kind": UserKind.PERSON.value, "role": Role.CUSTOMER.value,
        "created_at": now})
    if new_id is None:
        group.user_changed(session, email)
        return user_refs(session, [email])[0]
    ref = UserRef(int(new_id), email, name, UserKind.PERSON, Role.CUSTOMER)
    group.user_added(session, ref)
    return ref


def add_user(session: Session, email: str, name: str, org: str | None, kind: UserKind,
                   role: Role, now: datetime, language: str | None = None) -> AppUser:
    org_id = (ensure_organisation(session, org)).id if org else None
    user = AppUser(email=email.lower(), name=clean_text(name, 200), organisation_id=org_id, kind=kind.value,
                   role=role.value, language=language, created_at=now)
    session.add(user)
    session.flush()
    group.user_changed(session, user.email)
    return user


def ensure_organisation(session: Session, name: str) -> Organisation:
    org = (session.exec(select(Organisation).where(Organisation.name == name))).first()
    if org is None:
        org = Organisation(name=clean_text(name, 200))
        session.add(org)
        session.flush()
    return org


def create_case(session: Session, number: str, subject: str, requester: UserRef, now: datetime,
                follows_id: int | None = None) -> int:
    """A new case in Registreret, with its first history row; returns its id."""
    conn = session.connection()
    case_id = int(_INSERT_CASE.scalar(conn, {
        "number": number, "subject": clean_text(subject, 500), "requester_id": requester.id,
        "status": Status.REGISTRERET.value, "follows_id": follows_id, "created_at": now, "updated_at": now,
        "status_changed_at": now}))
    _INSERT_HISTORY.later(conn, {
        "case_id": case_id, "at": now, "by_id": requester.id, "by_label": requester.email[:100],
        "from_status": None, "to_status": Status.REGISTRERET.value,
        "reason": f"follows {follows_id}" if follows_id else None, "via": None})
    group.case_added(session, case_id, number)
    return case_id


def open_case(session: Session, prefix: str, digits: int, subject: str, requester: UserRef, now: datetime,
              follows_id: int | None = None) -> tuple[int, str | None]:
    """`next_case_number` and `create_case` together: the new case's id and number. On
    PostgreSQL one statement takes the number from the sequence and inserts the case (one
    round trip, not two); in a group with an id reserved for it (store/group.py) that statement
    waits for the next round trip like the other writes, and the number is None until the
    store has answered (`settle` gives it)."""
    conn = session.connection()
    if conn.dialect.driver != "psycopg":
        given = next_case_number(session, prefix, digits)
        return create_case(session, given, subject, requester, now, follows_id), given
    number: str | None
    values = {"prefix": prefix, "digits": digits, "subject": clean_text(subject, 500), "requester_id": requester.id,
              "status": Status.REGISTRERET.value, "follows_id": follows_id, "now": now}
    reserved = group.reserved_case_id(session)
    if reserved is not None:
        case_id, number = reserved, None
        pg.later_gathered(conn, _OPEN_RESERVED_MANY, {**values, "id": case_id}, group.case_numbering(session, case_id))
    else:
        case_id, opened = _OPEN_CASE_PG.execute(conn, values).fetchone()
        number = str(opened)
        group.case_added(session, int(case_id), number)
    _INSERT_HISTORY.later(conn, {
        "case_id": case_id, "at": now, "by_id": requester.id, "by_label": requester.email[:100],
        "from_status": None, "to_status": Status.REGISTRERET.value,
        "reason": f"follows {follows_id}" if follows_id else None, "via": None})
    return int(case_id), number


def settle(session: Session) -> dict[int, str]:
    """The writes waiting for the next round trip (PostgreSQL) sent now; the numbers of the
    cases the group opened, by id (known after this)."""
    flush_waiting(session.connection())
    return group.opened_numbers(session)


def touch_case(session: Session, case_id: int, now: datetime) -> None:
    """The case changed now (a comment, a party), its status not."""
    _TOUCH_CASE.later(session.connection(), {"case_id": case_id, "updated_at": now})


def set_status(session: Session, case_id: int, to: Status, now: datetime, by_id: int | None, by_label: str,
               reason: str | None = None, via: str | None = None) -> Status:
    """The case's status to `to`, with its history row; returns the status it had."""
    conn = session.connection()
    previous = Status(_CASE_STATUS.scalar(conn, {"case_id": case_id}))
    group.case_changed(session, case_id)
    _SET_STATUS.execute(conn, {"case_id": case_id, "status": to.value, "updated_at": now, "status_changed_at": now})
    record_change(session, case_id, previous, to, now, by_id, by_label, reason, via)
    return previous


def record_change(session: Session, case_id: int, previous: Status, to: Status, now: datetime, by_id: int | None,
                   by_label: str, reason: str | None, via: str | None = None) -> None:
    """The history row: `by_label` is who acted; `via`, the service they acted through (an API
    service token)."""
    _INSERT_HISTORY.later(session.connection(), {
        "case_id": case_id, "at": now, "by_id": by_id, "by_label": by_label[:100], "from_status": previous.value,
        "to_status": to.value, "reason": clean_text(reason, 1000) if reason else None,
        "via": clean_text(via, 100) if via else None})


def add_comment(session: Session, case_id: int, author_id: int | None, draft: CommentDraft,
                source: Source, now: datetime, inbound_id: int | None = None, kind: str = "comment",
                via: str | None = None) -> None:
    conn = session.connection()
    # A mail without quoted history is its visible text and signature: full_text "" (store/models.py).
    full = "" if draft.full_text == joined_text(draft.visible_text, draft.signature) else clean_text(draft.full_text)
    row = {"case_id": case_id, "author_id": author_id, "created_at": now, "source": source.value,
           "public": draft.public, "visible_text": clean_text(draft.visible_text),
           "full_text": full, "html": clean_text(draft.html) if draft.html else None,
           "inbound_id": inbound_id, "kind": kind, "via": clean_text(via, 100) if via else None,
           "signature": clean_text(draft.signature)}
    if not draft.attachments:  # nobody reads its id: it waits for the next round trip
        _INSERT_COMMENT.later(conn, row)
        return
    comment_id = int(_INSERT_COMMENT.scalar(conn, row))
    if draft.attachments:
        _INSERT_ATTACHMENTS.later_many(conn, [
            {"comment_id": comment_id, "name": clean_text(att.name, 255), "size": att.size, "sha256": att.sha256,
             "content_type": clean_text(att.content_type, 200), "inline": att.inline}
            for att in draft.attachments])


def add_party(session: Session, case_id: int, user_id: int, now: datetime, by_id: int | None) -> bool:
    """Share the case with a user; False when they were a party already."""
    conn = session.connection()
    group.case_changed(session, case_id)
    result = conn.execute(_insert_ignoring(conn.dialect.name, _PARTIES, "case_id", "user_id"),
                          {"case_id": case_id, "user_id": user_id, "added_at": now, "added_by_id": by_id})
    return bool(result.rowcount)


def index_message_id(session: Session, message_id: str | None, case_id: int, ours: bool) -> None:
    """Remember a Message-ID for threading; the first case that saw it keeps it."""
    if not message_id:
        return
    conn = session.connection()
    _index_ignoring(conn.dialect.name).later(conn, {"message_id": message_id[:998], "case_id": case_id,
                                                      "ours": ours})
    group.message_indexed(session, message_id, message_id[:998], case_id)


@cache
def _user_ignoring(dialect: str) -> DriverStatement:
    return DriverStatement(_insert_ignoring(dialect, _USERS, "email").returning(_USERS.c.id),
                           ["email", "name", "kind", "role", "created_at"])


@cache
def _index_ignoring(dialect: str) -> DriverStatement:
    return DriverStatement(_insert_ignoring(dialect, _INDEX, "message_id"), ["message_id", "case_id", "ours"],
                           leaf=True)


def finish_inbound(session: Session, inbound_id: int, outcome: str, reason: str,
                   case_id: int | None, now: datetime, subject: str = "", from_addr: str | None = None,
                   state: str = "done", claim: Claim | None = None) -> None:
    """Record the mail's outcome. With `claim`, only while that claim still holds: the lease may
    have run out and another worker taken the mail, and then this whole transaction rolls back
    (LostClaim) instead of applying the mail a second time."""
    group.mail_finished(session, from_addr, outcome, state)
    values = {"inbound_id": inbound_id, "state": state, "outcome": outcome, "reason": clean_text(reason, 2000),
              "case_id": case_id, "processed_at": now, "claimed_until": None,
              "subject": clean_text(subject, 500) or None, "from_addr": from_addr}
    if claim is None:
        _FINISH_INBOUND.later(session.connection(), values)
        return

    def held(done: Any) -> None:
        if done.rowcount != 1:
            raise LostClaim(f"inbound mail {inbound_id}: the lease ran out and another worker claimed it")

    _FINISH_CLAIMED.later(session.connection(), {**values, **claim.params}, check=held)


_FINISHED = ["state", "outcome", "reason", "case_id", "processed_at", "claimed_until", "subject", "from_addr"]
_FINISH_INBOUND = DriverStatement(update(_INBOUND).where(_INBOUND.c.id == bindparam("inbound_id")),
                                  _FINISHED, ["inbound_id"])
_FINISH_CLAIMED = DriverStatement(update(_INBOUND).where(_INBOUND.c.id == bindparam("inbound_id"), *CLAIM_HOLDS),
                                  _FINISHED, ["inbound_id", "holder", "attempt"])


def mark_bouncing(session: Session, address: str, reason: str, now: datetime) -> bool:
    user = user_by_email(session, address)
    if user is None:
        return False
    user.bouncing_since = now
    user.bounce_reason = clean_text(reason, 500)
    session.add(user)
    group.user_changed(session, address)
    return True


def clear_bouncing(session: Session, address: str) -> bool:
    """The operator's word that mail to `address` works again; False when it was not marked."""
    user = user_by_email(session, address)
    if user is None:
        raise NotFound(f"no user {address}")
    was = user.bouncing_since is not None
    group.user_changed(session, address)
    user.bouncing_since = None
    user.bounce_reason = None
    session.add(user)
    return was


def bump_token_generation(session: Session, address: str) -> int:
    """Refuse every requester token issued to this user so far; returns the new generation."""
    generation = session.execute(update(_USERS).where(_USERS.c.email == address.lower())
                                 .values(token_generation=_USERS.c.token_generation + 1)
                                 .returning(_USERS.c.token_generation)).scalar()
    if generation is None:
        raise NotFound(f"no user {address}")
    return int(generation)
