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
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlmodel import Session

from gateway.model import UserRef
from store.sqlite.driver import DriverStatement

_KEY = "mail_group"
COUNTED_OUTCOMES = ("created", "commented", "reopened")  # what the loop guard counts (queries.recent_from)


@dataclass
class GroupReads:
    users: dict[str, UserRef | None] = field(default_factory=dict)  # by lower-case address; None: no user
    recent: dict[tuple[str, datetime, int], int] = field(default_factory=dict)  # (address, since, cap)
    auto: dict[tuple[str, datetime, int], int] = field(default_factory=dict)  # (recipient, day, cap)


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


# PostgreSQL: the capped counts of many addresses in one statement (an index read each, as one by one).
_RECENT_MANY = DriverStatement(text(
    "SELECT a.address, (SELECT count(*) FROM (SELECT 1 FROM inbound_mail WHERE from_addr = a.address "
    "AND processed_at >= CAST(:since AS TIMESTAMP WITH TIME ZONE) AND outcome = ANY(CAST(:outcomes AS VARCHAR[])) "
    "LIMIT CAST(:cap AS INTEGER)) s) FROM unnest(CAST(:addresses AS VARCHAR[])) AS a(address)"), [],
    ["since", "outcomes", "cap", "addresses"])
_AUTO_MANY = DriverStatement(text(
    "SELECT a.address, (SELECT count(*) FROM (SELECT 1 FROM outbox WHERE recipient = a.address "
    "AND created_at >= CAST(:day AS TIMESTAMP WITH TIME ZONE) AND state <> 'held' "
    "AND event = ANY(CAST(:events AS VARCHAR[])) LIMIT CAST(:cap AS INTEGER)) s) "
    "FROM unnest(CAST(:addresses AS VARCHAR[])) AS a(address)"), [], ["day", "events", "cap", "addresses"])


def read_counts(session: Session, senders: list[str], since: datetime, recent_cap: int, day: datetime,
                auto_cap: int, automatic: tuple[str, ...]) -> None:
    """On PostgreSQL, the group's counts in one statement each (elsewhere each mail reads its own
    the first time it needs it: on SQLite a read is no round trip)."""
    reads = of(session)
    conn = session.connection()
    if reads is None or not senders or conn.dialect.driver != "psycopg":
        return
    if recent_cap > 0:
        for address, count in _RECENT_MANY.rows(conn, {"since": since, "outcomes": list(COUNTED_OUTCOMES),
                                                        "cap": recent_cap, "addresses": senders}):
            reads.recent[(address, since, recent_cap)] = int(count)
    for address, count in _AUTO_MANY.rows(conn, {"day": day, "events": list(automatic), "cap": auto_cap,
                                                  "addresses": senders}):
        reads.auto[(address, day, auto_cap)] = int(count)
