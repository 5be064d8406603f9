"""Bearer tokens of the HTTP API, inside one caller-owned transaction. Only hashes are stored.
Requester tokens are not stored at all: a user's `token_generation` refuses the older ones."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, select

from gateway.errors import NotFound
from store.models import ApiToken, AppUser

AGENT, SERVICE = "agent", "service"
# `last_used_at` is for the operator's list, not an audit trail: written at most once a minute
# per token, so a busy integration does not turn every read into a write.
_TOUCH_EVERY = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class TokenHolder:
    """Who a live token belongs to: an agent (its address and role now) or a named service."""

    id: int
    kind: str
    name: str
    email: str | None
    role: str | None


@dataclass(frozen=True, slots=True)
class TokenUser:
    """A user as a requester token sees them: the generation their tokens must carry."""

    email: str
    role: str
    generation: int


def token_user(session: Session, email: str) -> TokenUser | None:
    user = session.exec(select(AppUser).where(AppUser.email == email.lower())).first()
    return TokenUser(user.email, user.role, user.token_generation) if user is not None else None


def add(session: Session, kind: str, token_hash: str, now: datetime, user_id: int | None = None,
        name: str = "") -> int:
    token = ApiToken(kind=kind, user_id=user_id, name=name[:100], token_hash=token_hash, created_at=now)
    session.add(token)
    session.flush()
    assert token.id is not None
    return token.id


def holder(session: Session, token_hash: str, now: datetime) -> TokenHolder | None:
    """The holder of a live (not revoked) token with this hash; notes its use."""
    row = session.exec(select(ApiToken, AppUser).join(AppUser, col(ApiToken.user_id) == AppUser.id, isouter=True)
                       .where(ApiToken.token_hash == token_hash, col(ApiToken.revoked_at).is_(None))).first()
    if row is None:
        return None
    token, user = row
    assert token.id is not None
    if token.last_used_at is None or now - token.last_used_at >= _TOUCH_EVERY:
        session.execute(update(ApiToken).where(col(ApiToken.id) == token.id).values(last_used_at=now))
    return TokenHolder(token.id, token.kind, token.name, user.email if user else None, user.role if user else None)


def revoke(session: Session, token_id: int, now: datetime) -> bool:
    """False when the token was revoked already."""
    token = session.get(ApiToken, token_id)
    if token is None:
        raise NotFound(f"no API token {token_id}")
    if token.revoked_at is not None:
        return False
    token.revoked_at = now
    session.add(token)
    return True


def listing(session: Session) -> list[dict[str, Any]]:
    """Every token, oldest first, without its hash."""
    rows = session.exec(select(ApiToken, AppUser).join(AppUser, col(ApiToken.user_id) == AppUser.id, isouter=True)
                        .order_by(col(ApiToken.id))).all()
    return [{"id": t.id, "kind": t.kind, "agent": u.email if u else None, "service": t.name or None,
             "created_at": _iso(t.created_at), "last_used_at": _iso(t.last_used_at),
             "revoked_at": _iso(t.revoked_at)} for t, u in rows]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
