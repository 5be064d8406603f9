"""Reads shared by the mails of one group transaction (`gateway.apply.handle_all`).

The worker writes up to 32 mails in one transaction. Read one by one, each mail asks the store
for its sender, the sender's mails of the last hour (the loop guard) and the automatic answers
the sender had today (the rate limit): on PostgreSQL a round trip each. Here a group asks once
for all its senders (`read_ahead`), and each mail's reads take their answer from that.

The answers stay right for the later mails of the group because the writes of the earlier
ones keep them up to date, in the same transaction: a user the group registers is added
(`writes.ensure_user`), one it marks bouncing is dropped and read again; a mail that opens or
touches a case counts for its sender's hour (`writes.finish_inbound`), and an automatic answer
queued counts for its recipient's day (`outbox._insert`), exactly as the rows they insert would
be counted by a new read. What other nodes commit meanwhile is not seen until the next group:
the counts are rate limits, and the same race exists between a count and its insert anyway.

On PostgreSQL the group also reserves, with those reads, an id from the cases' sequence for each
of its mails (`reserved_case_id`): a case it opens is then a write like the others, sent with
the next round trip instead of one of its own, and its number (taken from the number sequence
by that INSERT) is known once the store has answered (`case_numbering`; `gateway.apply.handle_all`
settles them at the group's end). An id not used is skipped, as a rolled-back one is: ids are no
one's to see. A number is never skipped for this, the number sequence is only read by the INSERT.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, select, text
from sqlmodel import Session

from gateway.model import CaseRef, Role, Status, Triage, UserKind, UserRef
from store.driver import DriverStatement, rows_together
from store.models import AppUser, CaseParty, MessageIndex, SupportCase
from store.person import B

_U = AppUser.__table__  # type: ignore[attr-defined]
_C = SupportCase.__table__  # type: ignore[attr-defined]
_P = CaseParty.__table__  # type: ignore[attr-defined]
_I = MessageIndex.__table__  # type: ignore[attr-defined]
# What `UserRef` and `CaseRef` are read from (store.queries reads them one at a time too).
USER_REFS = select(_U.c.id, _U.c.email, _U.c.name, _U.c.kind, _U.c.role, _U.c.organisation_id, _U.c.language,
                   _U.c.bouncing_since).where(_U.c.email.in_(bindparam("emails", expanding=True)))
CASE_HEAD = select(_C.c.id, _C.c.number, _C.c.subject, _C.c.status, _C.c.requester_id, _C.c.assignee_id,
                   _U.c.organisation_id).join(_U, _U.c.id == _C.c.requester_id)

_KEY = "mail_group"
COUNTED_OUTCOMES = ("created", "commented", "reopened")  # what the loop guard counts (queries.recent_from)


@dataclass
class GroupReads:
    users: dict[str, UserRef | None] = field(default_factory=dict)  # by lower-case address; None: no user
    recent: dict[tuple[str, datetime, int], int] = field(default_factory=dict)  # (address, since, cap)
    auto: dict[tuple[str, datetime, int], int] = field(default_factory=dict)  # (recipient, day, cap)
    numbers: dict[str, int | None] = field(default_factory=dict)  # case number (upper case) -> id
    message_ids: dict[str, int | None] = field(default_factory=dict)  # -> the case that has it
    cases: dict[int, CaseRef | None] = field(default_factory=dict)
    blocked: dict[str, bool] = field(default_factory=dict)  # erased addresses (never written here)
    case_ids: list[int] = field(default_factory=list)  # reserved for the cases it opens, last first (PostgreSQL)
    numbering: int = 0  # cases opened whose numbers the store has not answered yet
    opened: dict[int, str] = field(default_factory=dict)  # case id -> number, once answered


def of(session: Session) -> GroupReads | None:
    return session.info.get(_KEY)


def begin(session: Session) -> GroupReads:
    reads = session.info[_KEY] = GroupReads()
    return reads


def end(session: Session) -> None:
    session.info.pop(_KEY, None)


def user_added(session: Session, user: UserRef) -> None:
    if (reads := of(session)) is not None:
        reads.users[user.email.lower()] = user


def user_changed(session: Session, email: str) -> None:
    if (reads := of(session)) is not None:
        reads.users.pop(email.lower(), None)


def case_added(session: Session, case_id: int, number: str) -> None:
    if (reads := of(session)) is not None:
        reads.numbers[number.upper()] = case_id


def reserved_case_id(session: Session) -> int | None:
    """An id reserved for a case this group opens (PostgreSQL), or None: the INSERT takes one."""
    reads = of(session)
    return reads.case_ids.pop() if reads is not None and reads.case_ids else None


def case_numbering(session: Session, case_id: int) -> Callable[[Any], None]:
    """The answer of a waiting case INSERT (its returned row: id, number): the case's number."""
    reads = of(session)
    assert reads is not None, "a reserved id is only given in a group"
    reads.numbering += 1

    def numbered(row: Any) -> None:
        number = str(row[1])
        reads.numbering -= 1
        reads.opened[case_id] = number
        case_added(session, case_id, number)

    return numbered


def opened_numbers(session: Session) -> dict[int, str]:
    """The numbers of the cases the group opened, by id, as far as the store has answered."""
    reads = of(session)
    return dict(reads.opened) if reads is not None else {}


def case_changed(session: Session, case_id: int) -> None:
    """Its status or parties changed: read again when asked."""
    if (reads := of(session)) is not None:
        reads.cases.pop(case_id, None)


def message_indexed(session: Session, message_id: str, stored: str, case_id: int) -> None:
    """The index keeps the first case of a Message-ID (ON CONFLICT DO NOTHING)."""
    if (reads := of(session)) is None:
        return
    if stored != message_id:  # cut to the column's length: only a new read knows what matches
        reads.message_ids.pop(stored, None)
    elif reads.message_ids.get(message_id) is None:
        reads.message_ids[message_id] = case_id


def mail_finished(session: Session, from_addr: str | None, outcome: str, state: str) -> None:
    if (reads := of(session)) is None or not from_addr or state != "done" or outcome not in COUNTED_OUTCOMES:
        return
    for key, count in reads.recent.items():
        if key[0] == from_addr:
            reads.recent[key] = min(key[2], count + 1)


def answers_queued(session: Session, rows: Iterable[dict[str, Any]], automatic: tuple[str, ...]) -> None:
    if (reads := of(session)) is None:
        return
    for row in rows:
        if row["event"] in automatic and row["state"] != "held":
            for key, count in reads.auto.items():
                if key[0] == row["recipient"]:
                    reads.auto[key] = min(key[2], count + 1)


def user_ref_of(row: Sequence[Any]) -> UserRef:
    id_, email, name, kind, role, organisation_id, language, bouncing = row
    return UserRef(id_, email, name, UserKind(kind), Role(role), organisation_id, language, bouncing is not None)


def case_ref_of(row: Sequence[Any], parties: set[int]) -> CaseRef:
    id_, number, subject, status, requester_id, assignee_id, organisation_id = row
    return CaseRef(id_, number, subject, Status(status), requester_id, assignee_id, frozenset(parties),
                   organisation_id)


_USERS = DriverStatement(USER_REFS, (), ["emails"])
_BY_MESSAGE_IDS = DriverStatement(select(_I.c.message_id, _I.c.case_id).where(
    _I.c.message_id.in_(bindparam("message_ids", expanding=True))), (), ["message_ids"])
_BY_NUMBERS = DriverStatement(select(_C.c.id, func.upper(_C.c.number)).where(
    func.upper(_C.c.number).in_(bindparam("numbers", expanding=True))), (), ["numbers"])
_BLOCKED = DriverStatement(select(B.c.email).where(B.c.email.in_(bindparam("emails", expanding=True))), (),
                           ["emails"])
_CASES = DriverStatement(CASE_HEAD.where(_C.c.id.in_(bindparam("ids", expanding=True))), (), ["ids"])
_PARTIES = DriverStatement(select(_P.c.case_id, _P.c.user_id).where(_P.c.case_id.in_(bindparam("ids", expanding=True))),
                           (), ["ids"])


def read_ahead(session: Session, triages: Sequence[Triage], now: datetime, auto_cap: int,
               automatic: tuple[str, ...]) -> None:
    """A group's reads at once: its senders and Cc'd users, the cases its thread keys name, the
    erased addresses among its senders (and on PostgreSQL the senders' counts of the last hour
    and day, and an id for each case it may open), each in one statement for the whole group;
    then the cases found and their parties. On PostgreSQL each of the two steps is one round
    trip (a pipeline)."""
    reads = begin(session)
    conn = session.connection()
    senders = list(dict.fromkeys(t.sender.lower() for t in triages if t.sender))
    emails = list(dict.fromkeys([*senders, *(a.lower() for t in triages for a in t.cc)]))
    message_ids = list(dict.fromkeys(m for t in triages for m in t.keys.message_ids))
    numbers = list(dict.fromkeys(n.upper() for t in triages for n in (
        *t.keys.token_case_numbers, *([t.keys.subject_number] if t.keys.subject_number else []))))
    asks = [(stmt, {key: values}) for stmt, key, values in (
        (_USERS, "emails", emails), (_BY_MESSAGE_IDS, "message_ids", message_ids),
        (_BY_NUMBERS, "numbers", numbers), (_BLOCKED, "emails", senders)) if values]
    caps = {t.recent_cap for t in triages if t.sender}
    since, recent_cap, day = now - timedelta(hours=1), max(caps) if len(caps) == 1 else 0, now - timedelta(days=1)
    counts = _counts(senders, since, recent_cap, day, auto_cap, automatic) if conn.dialect.driver == "psycopg" else []
    reserve = [(_RESERVE_CASE_IDS, {"n": len(triages)})] if conn.dialect.driver == "psycopg" and triages else []
    answers = iter(rows_together(conn, [*asks, *counts, *reserve]))
    if emails:
        reads.users.update(dict.fromkeys(emails))
        reads.users.update((row[1], user_ref_of(row)) for row in next(answers))
    if message_ids:
        reads.message_ids.update(dict.fromkeys(message_ids))
        reads.message_ids.update((mid, int(case_id)) for mid, case_id in next(answers))
    if numbers:
        reads.numbers.update(dict.fromkeys(numbers))
        reads.numbers.update((number, int(case_id)) for case_id, number in next(answers))
    if senders:
        reads.blocked.update(dict.fromkeys(senders, False))
        reads.blocked.update((email, True) for (email,) in next(answers))
    for _, params in counts:  # the counts (PostgreSQL)
        into = reads.recent if "outcomes" in params else reads.auto
        key = (since, recent_cap) if "outcomes" in params else (day, auto_cap)
        into.update(((address, *key), int(count)) for address, count in next(answers))
    if reserve:
        reads.case_ids = sorted((int(case_id) for (case_id,) in next(answers)), reverse=True)
    case_ids = sorted({i for i in (*reads.message_ids.values(), *reads.numbers.values()) if i is not None})
    if case_ids:
        heads, parties = rows_together(session.connection(), [(_CASES, {"ids": case_ids}),
                                                               (_PARTIES, {"ids": case_ids})])
        members: dict[int, set[int]] = {}
        for case_id, user_id in parties:
            members.setdefault(case_id, set()).add(user_id)
        reads.cases.update(dict.fromkeys(case_ids))
        reads.cases.update((head[0], case_ref_of(head, members.get(head[0], set()))) for head in heads)


# PostgreSQL: the capped counts of many addresses in one statement (an index read each, as one by one).
# The addresses come as a JSON list, not an array: the planner knows an array's length, so every
# plan made for its value was cheaper than the generic one and it planned the statement again at
# every call (55-145 us of the server's time, a third of the group's first reads); it estimates a
# JSON list at 100 rows either way, and after five calls keeps the one generic plan (5 us).
_RECENT_MANY = DriverStatement(text(
    "SELECT a.address, (SELECT count(*) FROM (SELECT 1 FROM inbound_mail WHERE from_addr = a.address "
    "AND processed_at >= CAST(:since AS TIMESTAMP WITH TIME ZONE) AND outcome = ANY(CAST(:outcomes AS VARCHAR[])) "
    "LIMIT CAST(:cap AS INTEGER)) s) FROM json_array_elements_text(CAST(:addresses AS JSON)) AS a(address)"), [],
    ["since", "outcomes", "cap", "addresses"])
_AUTO_MANY = DriverStatement(text(
    "SELECT a.address, (SELECT count(*) FROM (SELECT 1 FROM outbox WHERE recipient = a.address "
    "AND created_at >= CAST(:day AS TIMESTAMP WITH TIME ZONE) AND state <> 'held' "
    "AND event = ANY(CAST(:events AS VARCHAR[])) LIMIT CAST(:cap AS INTEGER)) s) "
    "FROM json_array_elements_text(CAST(:addresses AS JSON)) AS a(address)"), [], ["day", "events", "cap", "addresses"])


_RESERVE_CASE_IDS = DriverStatement(text(
    "SELECT nextval(pg_get_serial_sequence('support_case', 'id')) FROM generate_series(1, CAST(:n AS INTEGER))"),
    [], ["n"])


def _counts(senders: list[str], since: datetime, recent_cap: int, day: datetime, auto_cap: int,
            automatic: tuple[str, ...]) -> list[tuple[DriverStatement, dict[str, Any]]]:
    """On PostgreSQL, the group's counts in one statement each, read with its other reads
    (elsewhere each mail reads its own the first time it needs it: on SQLite a read is no
    round trip)."""
    if not senders:
        return []
    addresses = json.dumps(senders)
    recent = [(_RECENT_MANY, {"since": since, "outcomes": list(COUNTED_OUTCOMES), "cap": recent_cap,
                              "addresses": addresses})] if recent_cap > 0 else []
    return [*recent, (_AUTO_MANY, {"day": day, "events": list(automatic), "cap": auto_cap, "addresses": addresses})]
