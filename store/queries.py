"""Reads: rows → domain values (`UserRef`, `CaseRef`) and JSON-ready views for the CLI and API."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, or_
from sqlalchemy import select as sa_select
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.errors import NotFound
from gateway.model import ACTIVE_STATUSES, DONE_STATUSES, CaseRef, Role, Status, UserKind, UserRef
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
)


def user_ref(user: AppUser) -> UserRef:
    assert user.id is not None
    return UserRef(user.id, user.email, user.name, UserKind(user.kind), Role(user.role),
                   user.organisation_id, user.language)


async def user_by_email(session: AsyncSession, email: str) -> AppUser | None:
    return (await session.exec(select(AppUser).where(AppUser.email == email.lower()))).first()


async def users_by_email(session: AsyncSession, emails: list[str]) -> list[AppUser]:
    if not emails:
        return []
    return list((await session.exec(select(AppUser).where(col(AppUser.email).in_(emails)))).all())


async def case_ref(session: AsyncSession, case: SupportCase) -> CaseRef:
    assert case.id is not None
    parties = (await session.exec(select(CaseParty.user_id).where(CaseParty.case_id == case.id))).all()
    requester = await session.get(AppUser, case.requester_id)
    return CaseRef(case.id, case.number, case.subject, Status(case.status), case.requester_id,
                   case.assignee_id, frozenset(parties), requester.organisation_id if requester else None)


async def case_by_number(session: AsyncSession, number: str) -> SupportCase | None:
    return (await session.exec(select(SupportCase).where(
        func.upper(SupportCase.number) == number.upper()))).first()


async def case_by_message_ids(session: AsyncSession, message_ids: tuple[str, ...]) -> SupportCase | None:
    """The case of the newest referenced Message-ID that we know (ids come newest first)."""
    if not message_ids:
        return None
    rows = (await session.exec(select(MessageIndex).where(col(MessageIndex.message_id).in_(message_ids)))).all()
    by_id = {row.message_id: row.case_id for row in rows}
    for mid in message_ids:
        if mid in by_id:
            return await session.get(SupportCase, by_id[mid])
    return None


async def require_case(session: AsyncSession, number: str) -> SupportCase:
    case = await case_by_number(session, number)
    if case is None:
        raise NotFound(f"no case {number}")
    return case


async def require_user(session: AsyncSession, email: str) -> AppUser:
    user = await user_by_email(session, email)
    if user is None:
        raise NotFound(f"no user {email}")
    return user


# --- views --------------------------------------------------------------------------------


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


async def _user_view(session: AsyncSession, user_id: int | None) -> dict[str, Any] | None:
    if user_id is None:
        return None
    user = await session.get(AppUser, user_id)
    if user is None:
        return None
    return {"email": user.email, "name": user.name, "kind": user.kind, "role": user.role}


async def list_users(session: AsyncSession) -> list[dict[str, Any]]:
    rows = (await session.exec(select(AppUser, Organisation).join(
        Organisation, col(AppUser.organisation_id) == Organisation.id, isouter=True).order_by(AppUser.email))).all()
    return [{"email": u.email, "name": u.name, "organisation": o.name if o else None, "kind": u.kind,
             "role": u.role, "language": u.language, "bouncing": u.bouncing_since is not None}
            for u, o in rows]


async def list_cases(session: AsyncSession, status: str = "active", user: str | None = None) -> list[dict[str, Any]]:
    query = select(SupportCase, AppUser).join(AppUser, col(SupportCase.requester_id) == AppUser.id)
    if status == "active":
        query = query.where(col(SupportCase.status).in_([s.value for s in ACTIVE_STATUSES]))
    elif status == "done":
        query = query.where(col(SupportCase.status).in_([s.value for s in DONE_STATUSES]))
    elif status != "all":
        query = query.where(SupportCase.status == Status(status).value)
    if user is not None:
        member = await user_by_email(session, user)
        if member is None:
            return []
        shared = select(CaseParty.case_id).where(CaseParty.user_id == member.id)
        query = query.where(or_(col(SupportCase.requester_id) == member.id, col(SupportCase.id).in_(shared)))
    rows = (await session.exec(query.order_by(col(SupportCase.updated_at).desc(), col(SupportCase.id).desc()))).all()
    return [{"number": c.number, "subject": c.subject, "status": c.status, "requester": u.email,
             "updated_at": _iso(c.updated_at)} for c, u in rows]


async def case_detail(session: AsyncSession, number: str, include_internal: bool = True) -> dict[str, Any]:
    case = await require_case(session, number)
    parties = (await session.exec(select(AppUser).join(CaseParty, col(CaseParty.user_id) == AppUser.id)
                                  .where(CaseParty.case_id == case.id).order_by(AppUser.email))).all()
    follows = await session.get(SupportCase, case.follows_id) if case.follows_id else None
    followed_by = (await session.exec(select(SupportCase.number).where(SupportCase.follows_id == case.id))).all()
    return {
        "number": case.number, "subject": case.subject, "status": case.status,
        "requester": await _user_view(session, case.requester_id),
        "assignee": await _user_view(session, case.assignee_id),
        "parties": [{"email": p.email, "name": p.name, "kind": p.kind} for p in parties],
        "follows": follows.number if follows else None, "followed_by": list(followed_by),
        "close_reason": case.close_reason,
        "created_at": _iso(case.created_at), "updated_at": _iso(case.updated_at),
        "comments": await _comments(session, case.id, include_internal),
        "history": await _history(session, case.id),
    }


async def _comments(session: AsyncSession, case_id: int | None, include_internal: bool) -> list[dict[str, Any]]:
    query = select(Comment).where(Comment.case_id == case_id).order_by(col(Comment.created_at), col(Comment.id))
    if not include_internal:
        query = query.where(col(Comment.public).is_(True))
    out = []
    for comment in (await session.exec(query)).all():
        author = await _user_view(session, comment.author_id)
        files = (await session.exec(select(Attachment).where(Attachment.comment_id == comment.id)
                                    .order_by(col(Attachment.id)))).all()
        out.append({
            "author": author["email"] if author else None, "source": comment.source, "public": comment.public,
            "kind": comment.kind, "visible_text": comment.visible_text, "full_text": comment.full_text,
            "created_at": _iso(comment.created_at),
            "attachments": [{"name": a.name, "size": a.size, "sha256": a.sha256, "content_type": a.content_type}
                            for a in files],
        })
    return out


async def _history(session: AsyncSession, case_id: int | None) -> list[dict[str, Any]]:
    rows = (await session.exec(select(StatusChange).where(StatusChange.case_id == case_id)
                               .order_by(col(StatusChange.at), col(StatusChange.id)))).all()
    return [{"at": _iso(r.at), "by": r.by_label, "from": r.from_status, "to": r.to_status, "reason": r.reason}
            for r in rows]


async def list_outbox(session: AsyncSession, state: str | None = None) -> list[dict[str, Any]]:
    query = select(Outbox, SupportCase.number).join(
        SupportCase, col(Outbox.case_id) == SupportCase.id, isouter=True).order_by(col(Outbox.id))
    if state:
        query = query.where(Outbox.state == state)
    return [{"id": o.id, "event": o.event, "case": number, "recipients": [o.recipient],
             "message_id": o.message_id, "state": o.state, "attempts": o.attempts, "last_error": o.last_error,
             "created_at": _iso(o.created_at), "sent_at": _iso(o.sent_at)}
            for o, number in (await session.exec(query)).all()]


async def list_inbox(session: AsyncSession, state: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    """Inbox rows without their raw bytes (which may be tens of megabytes each)."""
    inbound = InboundMail.__table__  # type: ignore[attr-defined]
    cases = SupportCase.__table__  # type: ignore[attr-defined]
    columns = ("id", "received_at", "source", "state", "attempts", "outcome", "reason", "message_id", "size",
               "last_error")
    query = (sa_select(*(inbound.c[name] for name in columns), cases.c.number)
             .select_from(inbound.outerjoin(cases, inbound.c.case_id == cases.c.id)).order_by(inbound.c.id))
    if state:
        query = query.where(inbound.c.state == state)
    rows = (await session.execute(query.limit(limit))).all()
    return [{**{name: (_iso(r[i]) if name == "received_at" else r[i]) for i, name in enumerate(columns)},
             "case": r[-1]} for r in rows]


async def recent_from(session: AsyncSession, address: str, now: Any) -> int:
    """Mails from an address that opened or touched a case in the last hour (loop detection)."""
    from datetime import timedelta

    inbound = InboundMail.__table__  # type: ignore[attr-defined]
    query = sa_select(func.count()).select_from(inbound).where(
        inbound.c.from_addr == address, inbound.c.processed_at >= now - timedelta(hours=1),
        inbound.c.outcome.in_(["created", "commented", "reopened"]))
    return int((await session.execute(query)).scalar_one())
