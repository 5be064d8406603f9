"""The portal's own rows (rules §11): passwords, sessions, single-use links, attempt counters.

Writes are plain functions over the caller's `Session` (one transaction, `Transactor.run`);
reads take a Core `Connection` (`Transactor.read`). Values come back as frozen dataclasses,
never rows. Secrets never reach this module: sessions are stored as a SHA-256 of the cookie,
links by their public half only, passwords as argon2id hashes made by the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any, TypeVar

from sqlalchemy import Connection, case, delete, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from gateway.model import NewUser, Role
from store import writes
from store.models import AppUser, Organisation, PortalLink, PortalPassword, PortalSession, PortalThrottle

R = TypeVar("R")

_U = AppUser.__table__  # type: ignore[attr-defined]
_O = Organisation.__table__  # type: ignore[attr-defined]
_PW = PortalPassword.__table__  # type: ignore[attr-defined]
_S = PortalSession.__table__  # type: ignore[attr-defined]
_L = PortalLink.__table__  # type: ignore[attr-defined]
_T = PortalThrottle.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class PortalUser:
    id: int
    email: str
    name: str
    kind: str
    role: str
    organisation_id: int | None
    organisation: str | None
    language: str | None

    @property
    def is_customer(self) -> bool:
        return self.role == Role.CUSTOMER.value


@dataclass(frozen=True, slots=True)
class ActiveSession:
    id: int
    user: PortalUser
    method: str
    last_seen_at: datetime


@dataclass(frozen=True, slots=True)
class Link:
    email: str
    purpose: str
    next_path: str | None


_USER_COLUMNS = (_U.c.id, _U.c.email, _U.c.name, _U.c.kind, _U.c.role, _U.c.organisation_id, _O.c.name,
                 _U.c.language)
_USERS = _U.outerjoin(_O, _O.c.id == _U.c.organisation_id)


def _user(row: Sequence[Any]) -> PortalUser:
    return PortalUser(*row[:8])


# --- users and passwords --------------------------------------------------------------------


def user_by_email(conn: Connection, email: str) -> PortalUser | None:
    row = conn.execute(select(*_USER_COLUMNS).select_from(_USERS).where(_U.c.email == email.lower())).first()
    return _user(row) if row else None


def user_of(session: Session, email: str) -> PortalUser | None:
    """`user_by_email` inside a write transaction."""
    return user_by_email(session.connection(), email)


def password_hash(conn: Connection, user_id: int) -> str | None:
    return conn.execute(select(_PW.c.password_hash).where(_PW.c.user_id == user_id)).scalar()


def has_password(session: Session, email: str) -> bool:
    found = session.connection().execute(select(_PW.c.user_id).join(_U, _U.c.id == _PW.c.user_id)
                                         .where(_U.c.email == email.lower())).first()
    return found is not None


def set_password(session: Session, user_id: int, hashed: str, now: datetime) -> None:
    """The new password, and every session of the user ended: whoever knew the old one is out."""
    conn = session.connection()
    conn.execute(_upsert(conn.dialect.name, _PW, ("user_id",), ("password_hash", "set_at")),
                 {"user_id": user_id, "password_hash": hashed, "set_at": now})
    conn.execute(delete(_S).where(_S.c.user_id == user_id))


def ensure_customer(session: Session, email: str, name: str, now: datetime) -> PortalUser:
    """The user of this (proved) address; a new address becomes a customer, as a mail would."""
    conn = session.connection()
    found = user_by_email(conn, email)
    if found is not None:
        return found
    writes.ensure_user(session, NewUser(email.lower(), name.strip() or email.split("@")[0]), now)
    made = user_by_email(conn, email)
    assert made is not None
    return made


@cache
def _upsert(dialect: str, table: Any, key: tuple[str, ...], columns: tuple[str, ...]) -> Any:
    stmt = (postgresql if dialect == "postgresql" else sqlite).insert(table)
    return stmt.on_conflict_do_update(index_elements=list(key), set_={c: stmt.excluded[c] for c in columns})


# --- sessions ----------------------------------------------------------------------------------


def start_session(session: Session, user_id: int, token_hash: str, method: str, now: datetime,
                  expires_at: datetime) -> int:
    row = session.connection().execute(insert(_S).returning(_S.c.id), {
        "token_hash": token_hash, "user_id": user_id, "method": method, "created_at": now,
        "last_seen_at": now, "expires_at": expires_at})
    return int(row.scalar_one())


def session_of(conn: Connection, token_hash: str, now: datetime, idle: timedelta) -> ActiveSession | None:
    """The live session with this hash: not past its end, not idle for longer than `idle`."""
    row = conn.execute(select(_S.c.id, _S.c.method, _S.c.last_seen_at, *_USER_COLUMNS)
                       .select_from(_S.join(_USERS, _U.c.id == _S.c.user_id))
                       .where(_S.c.token_hash == token_hash, _S.c.expires_at > now,
                              _S.c.last_seen_at > now - idle)).first()
    if row is None:
        return None
    return ActiveSession(row[0], _user(row[3:]), row[1], row[2])


def session_and(conn: Connection, token_hash: str, now: datetime, idle: timedelta,
                then: Callable[[Connection, int], R] | None = None) -> tuple[ActiveSession | None, R | None]:
    """`session_of`, and for a live customer's session `then(conn, user_id)` on the same
    connection: a page's session and its data in one trip to the store, not two."""
    found = session_of(conn, token_hash, now, idle)
    if found is None or not found.user.is_customer or then is None:
        return found, None
    return found, then(conn, found.user.id)


def touch_session(session: Session, session_id: int, now: datetime) -> None:
    session.connection().execute(update(_S).where(_S.c.id == session_id).values(last_seen_at=now))


def end_session(session: Session, token_hash: str) -> bool:
    return bool(session.connection().execute(delete(_S).where(_S.c.token_hash == token_hash)).rowcount)


# --- single-use links ----------------------------------------------------------------------------


def create_link(session: Session, selector: str, email: str, purpose: str, next_path: str | None,
                now: datetime, expires_at: datetime) -> None:
    session.connection().execute(insert(_L), {
        "selector": selector, "email": email.lower(), "purpose": purpose, "next_path": next_path,
        "created_at": now, "expires_at": expires_at, "used_at": None})


def _usable(selector: str, now: datetime) -> Any:
    return (_L.c.selector == selector, _L.c.used_at.is_(None), _L.c.expires_at > now)


def link_of(conn: Connection, selector: str, now: datetime) -> Link | None:
    """The link, while it is unused and unexpired (showing its form does not use it)."""
    row = conn.execute(select(_L.c.email, _L.c.purpose, _L.c.next_path).where(*_usable(selector, now))).first()
    return Link(*row) if row else None


def take_link(session: Session, selector: str, now: datetime) -> Link | None:
    """Use the link: one conditional UPDATE, so of two uses at once (two nodes) one wins."""
    row = session.connection().execute(update(_L).where(*_usable(selector, now)).values(used_at=now)
                                       .returning(_L.c.email, _L.c.purpose, _L.c.next_path)).first()
    return Link(*row) if row else None


# --- attempt counters with back-off ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Throttle:
    """`free` attempts; after them each one waits twice as long as the last (1 s, 2 s, 4 s … up
    to `cap`). The count starts over after `quiet` without an attempt."""

    free: int
    quiet: timedelta = timedelta(minutes=15)
    cap: timedelta = timedelta(minutes=15)

    def wait_after(self, attempts: int) -> timedelta:
        over = attempts - self.free
        if over <= 0:
            return timedelta(0)
        return min(self.cap, timedelta(seconds=2 ** min(over - 1, 20)))


def throttle_wait(conn: Connection, keys: Sequence[str], now: datetime) -> float:
    """Seconds before the next attempt under any of these keys is allowed (0: now)."""
    ends = conn.execute(select(_T.c.blocked_until).where(_T.c.key.in_(list(keys)), _T.c.blocked_until > now))
    return max(((end - now).total_seconds() for (end,) in ends), default=0.0)


def throttle_hit(session: Session, key: str, now: datetime, rule: Throttle) -> int:
    """Count one attempt under `key`; returns the attempts so far. The upsert takes the row's
    lock (PostgreSQL) or the write lock (SQLite), so nodes counting at once never lose one."""
    conn = session.connection()
    quiet_since = now - rule.quiet
    stmt = (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(_T).values(
        key=key, attempts=1, last_attempt_at=now, blocked_until=None)
    stmt = stmt.on_conflict_do_update(index_elements=["key"], set_={
        "attempts": case((_T.c.last_attempt_at < quiet_since, 1), else_=_T.c.attempts + 1),
        "last_attempt_at": now})
    conn.execute(stmt)
    attempts = int(conn.execute(select(_T.c.attempts).where(_T.c.key == key)).scalar_one())
    wait = rule.wait_after(attempts)
    if wait:
        conn.execute(update(_T).where(_T.c.key == key).values(blocked_until=now + wait))
    return attempts


def throttle_clear(session: Session, key: str) -> None:
    session.connection().execute(delete(_T).where(_T.c.key == key))


# --- housekeeping --------------------------------------------------------------------------------


def purge(session: Session, now: datetime, keep: timedelta = timedelta(days=1)) -> int:
    """Delete ended sessions, links used or expired a while ago, and counters long quiet."""
    conn = session.connection()
    gone = conn.execute(delete(_S).where(_S.c.expires_at <= now)).rowcount or 0
    gone += conn.execute(delete(_L).where(or_(_L.c.expires_at <= now - keep, _L.c.used_at <= now - keep))).rowcount or 0
    gone += conn.execute(delete(_T).where(_T.c.last_attempt_at <= now - keep,
                                          or_(_T.c.blocked_until.is_(None), _T.c.blocked_until <= now))).rowcount or 0
    return int(gone)
