"""The audit trail: who exported, erased or allowed whose data, when and why (`audit_event`),
listed together with the agents' actions already kept in case history (`status_change`, their
replies and notes in `comment`, their shares in `case_party`), newest first.

The agents' actions are not copied into `audit_event`: the case history is their record, and a
case reduced to its skeleton by retention no longer says who acted on it.
"""

from __future__ import annotations

import heapq
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection
from sqlmodel import Session

from gateway.model import Role
from store.models import AppUser, AuditEvent, CaseParty, Comment, StatusChange, SupportCase

A = AuditEvent.__table__  # type: ignore[attr-defined]
_S = StatusChange.__table__  # type: ignore[attr-defined]
_C = Comment.__table__  # type: ignore[attr-defined]
_P = CaseParty.__table__  # type: ignore[attr-defined]
_U = AppUser.__table__  # type: ignore[attr-defined]
_CASE = SupportCase.__table__  # type: ignore[attr-defined]


def record(session: Session, at: datetime, actor: str, action: str, subject: str | None, reason: str,
           detail: dict[str, Any] | None = None, via: str | None = None) -> int:
    """One audit row in the caller's transaction; its id."""
    return int(session.connection().execute(insert(A).returning(A.c.id), {
        "at": at, "actor": actor[:320], "via": via[:100] if via else None, "action": action[:30],
        "subject": subject[:320] if subject else None, "reason": reason[:1000], "detail": detail or {},
    }).scalar_one())


def events_about(conn: Connection, subject: str) -> list[dict[str, Any]]:
    """The audit rows about one address (for that person's export)."""
    rows = conn.execute(select(A).where(A.c.subject == subject).order_by(A.c.id)).mappings()
    return [_event(r) for r in rows]


def list_events(conn: Connection, limit: int = 100, before: datetime | None = None) -> list[dict[str, Any]]:
    """The newest `limit` entries (before `before`), from the audit table and the case history."""
    sources = [_audit_rows, _status_rows, _comment_rows, _share_rows]
    merged = heapq.merge(*(fn(conn, limit, before) for fn in sources), key=lambda e: e["at"], reverse=True)
    out = []
    for entry in merged:
        out.append({**entry, "at": entry["at"].isoformat()})
        if len(out) >= limit:
            break
    return out


def _event(r: Any) -> dict[str, Any]:
    return {"at": r["at"], "source": "audit", "id": r["id"], "actor": r["actor"], "via": r["via"],
            "action": r["action"], "subject": r["subject"], "case": None, "reason": r["reason"],
            "detail": dict(r["detail"] or {})}


def _window(column: Any, before: datetime | None) -> list[Any]:
    return [column < before] if before is not None else []


def _audit_rows(conn: Connection, limit: int, before: datetime | None) -> list[dict[str, Any]]:
    query = select(A).where(*_window(A.c.at, before)).order_by(A.c.at.desc(), A.c.id.desc()).limit(limit)
    return [_event(r) for r in conn.execute(query).mappings()]


_AGENT = _U.c.role == Role.AGENT.value


def _status_rows(conn: Connection, limit: int, before: datetime | None) -> list[dict[str, Any]]:
    query = (select(_S.c.id, _S.c.at, _U.c.email, _S.c.via, _S.c.from_status, _S.c.to_status, _S.c.reason,
                    _CASE.c.number)
             .join(_U, _U.c.id == _S.c.by_id).join(_CASE, _CASE.c.id == _S.c.case_id)
             .where(_AGENT, *_window(_S.c.at, before)).order_by(_S.c.at.desc(), _S.c.id.desc()).limit(limit))
    return [{"at": r.at, "source": "case_history", "id": r.id, "actor": r.email, "via": r.via,
             "action": f"status {r.from_status or '-'} -> {r.to_status}", "subject": None, "case": r.number,
             "reason": r.reason or "", "detail": {}} for r in conn.execute(query)]


def _comment_rows(conn: Connection, limit: int, before: datetime | None) -> list[dict[str, Any]]:
    query = (select(_C.c.id, _C.c.created_at, _U.c.email, _C.c.via, _C.c.public, _CASE.c.number)
             .join(_U, _U.c.id == _C.c.author_id).join(_CASE, _CASE.c.id == _C.c.case_id)
             .where(_AGENT, *_window(_C.c.created_at, before))
             .order_by(_C.c.created_at.desc(), _C.c.id.desc()).limit(limit))
    return [{"at": r.created_at, "source": "case_history", "id": r.id, "actor": r.email, "via": r.via,
             "action": "reply" if r.public else "note", "subject": None, "case": r.number, "reason": "",
             "detail": {}} for r in conn.execute(query)]


def _share_rows(conn: Connection, limit: int, before: datetime | None) -> list[dict[str, Any]]:
    party = _U.alias("party")
    query = (select(_P.c.added_at, _U.c.email, party.c.email.label("party"), _CASE.c.number)
             .join(_U, _U.c.id == _P.c.added_by_id).join(party, party.c.id == _P.c.user_id)
             .join(_CASE, _CASE.c.id == _P.c.case_id)
             .where(_AGENT, *_window(_P.c.added_at, before)).order_by(_P.c.added_at.desc()).limit(limit))
    return [{"at": r.added_at, "source": "case_history", "id": None, "actor": r.email, "via": None,
             "action": "share", "subject": r.party, "case": r.number, "reason": "", "detail": {}}
            for r in conn.execute(query)]
