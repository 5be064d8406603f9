"""Users as the use-cases see them: `UserRef` values found by address, and the organisation
reads of sharing. Plain functions over the caller's sync session (`store.transact`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlmodel import Session

from gateway.errors import NotFound
from gateway.model import Role, UserKind, UserRef
from store import writes
from store.models import AppUser, Organisation
from store.queries import user_ref, user_refs

_U = AppUser.__table__  # type: ignore[attr-defined]
_O = Organisation.__table__  # type: ignore[attr-defined]


def find(session: Session, email: str) -> UserRef | None:
    """The user with this (canonical) address, or None."""
    found = user_refs(session, [email])
    return found[0] if found else None


def require(session: Session, email: str) -> UserRef:
    found = find(session, email)
    if found is None:
        raise NotFound(f"no user {email}")
    return found


def add(session: Session, email: str, name: str, organisation: str | None, kind: UserKind, role: Role,
        now: datetime, language: str | None = None) -> UserRef:
    """A new user (`gateway users add`), in the organisation of that name (made if new)."""
    return user_ref(writes.add_user(session, email, name, organisation, kind, role, now, language))


def organisation_name(session: Session, organisation_id: int) -> str | None:
    return session.execute(select(_O.c.name).where(_O.c.id == organisation_id)).scalar()


def organisation_of(session: Session, email: str) -> str | None:
    """The name of the organisation the user with this address belongs to (None: no such user,
    or none)."""
    return session.execute(select(_O.c.name).join(_U, _U.c.organisation_id == _O.c.id)
                           .where(_U.c.email == email.lower())).scalar()


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped.lower()}%"


def search(session: Session, text: str, organisation: str, limit: int = 50) -> list[dict[str, Any]]:
    """Users of the organisation named `organisation` (any case) whose name or address contains
    `text`, by name (for sharing a case)."""
    org = session.execute(select(_O.c.id, _O.c.name).where(func.lower(_O.c.name) == organisation.lower())).first()
    if org is None:
        return []
    pattern = _like(text)
    rows = session.execute(select(_U.c.email, _U.c.name, _U.c.kind).where(
        _U.c.organisation_id == org.id,
        or_(func.lower(_U.c.name).like(pattern, escape="\\"), func.lower(_U.c.email).like(pattern, escape="\\")),
    ).order_by(_U.c.name, _U.c.email).limit(limit)).all()
    return [{"email": email, "name": name, "kind": kind, "organisation": org.name} for email, name, kind in rows]
