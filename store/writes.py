"""Writes inside one caller-owned transaction: users, cases, comments, history, index."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.model import CommentDraft, NewUser, Role, Source, Status, UserKind, UserRef
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
)
from store.queries import user_by_email, user_ref

_TEXT_CAP = 1_000_000


def clean_text(value: str | None, cap: int = _TEXT_CAP) -> str:
    """Text columns never hold NUL (PostgreSQL refuses it) and are capped alike on every backend."""
    return (value or "").replace("\x00", "")[:cap]


async def next_case_number(session: AsyncSession, prefix: str, digits: int) -> str:
    """A unique case number. PostgreSQL: a sequence; SQLite: a counter row (one writer at a time)."""
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        value = (await session.exec(text("SELECT nextval('case_number_seq')"))).scalar_one()  # type: ignore[call-overload]
    else:
        result = await session.exec(update(Counter).where(col(Counter.name) == "case")  # type: ignore[call-overload]
                                    .values(value=Counter.value + 1).returning(Counter.value))
        value = result.scalar()
        if value is None:
            session.add(Counter(name="case", value=1))
            await session.flush()
            value = 1
    return f"{prefix}{int(value):0{digits}d}"


async def ensure_user(session: AsyncSession, who: UserRef | NewUser, now: datetime) -> UserRef:
    if isinstance(who, UserRef):
        return who
    # The caller looked the address up in this transaction already; the unique index guards a race.
    user = AppUser(email=who.email.lower(), name=clean_text(who.name, 200), kind=UserKind.PERSON.value,
                   role=Role.CUSTOMER.value, created_at=now)
    session.add(user)
    await session.flush()
    return user_ref(user)


async def add_user(session: AsyncSession, email: str, name: str, org: str | None, kind: UserKind,
                   role: Role, now: datetime, language: str | None = None) -> AppUser:
    org_id = (await ensure_organisation(session, org)).id if org else None
    user = AppUser(email=email.lower(), name=clean_text(name, 200), organisation_id=org_id, kind=kind.value,
                   role=role.value, language=language, created_at=now)
    session.add(user)
    await session.flush()
    return user


async def ensure_organisation(session: AsyncSession, name: str) -> Organisation:
    org = (await session.exec(select(Organisation).where(Organisation.name == name))).first()
    if org is None:
        org = Organisation(name=clean_text(name, 200))
        session.add(org)
        await session.flush()
    return org


async def create_case(session: AsyncSession, number: str, subject: str, requester_id: int, now: datetime,
                      follows_id: int | None = None) -> SupportCase:
    case = SupportCase(number=number, subject=clean_text(subject, 500), requester_id=requester_id,
                       status=Status.REGISTRERET.value, follows_id=follows_id, created_at=now, updated_at=now,
                       status_changed_at=now)
    session.add(case)
    await session.flush()
    assert case.id is not None
    requester = await session.get(AppUser, requester_id)
    session.add(StatusChange(case_id=case.id, at=now, by_id=requester_id,
                             by_label=requester.email[:100] if requester else "mail", from_status=None,
                             to_status=Status.REGISTRERET.value,
                             reason=f"follows {follows_id}" if follows_id else None))
    return case


async def change_status(session: AsyncSession, case: SupportCase, to: Status, now: datetime,
                        by_id: int | None, by_label: str, reason: str | None = None) -> Status:
    previous = Status(case.status)
    case.status = to.value
    case.updated_at = now
    case.status_changed_at = now
    session.add(case)
    assert case.id is not None
    session.add(StatusChange(case_id=case.id, at=now, by_id=by_id, by_label=by_label[:100],
                             from_status=previous.value, to_status=to.value,
                             reason=clean_text(reason, 1000) if reason else None))
    return previous


async def add_comment(session: AsyncSession, case_id: int, author_id: int | None, draft: CommentDraft,
                      source: Source, now: datetime, inbound_id: int | None = None,
                      kind: str = "comment") -> Comment:
    comment = Comment(case_id=case_id, author_id=author_id, created_at=now, source=source.value,
                      public=draft.public, visible_text=clean_text(draft.visible_text),
                      full_text=clean_text(draft.full_text), html=clean_text(draft.html) if draft.html else None,
                      inbound_id=inbound_id, kind=kind)
    session.add(comment)
    await session.flush()
    assert comment.id is not None
    for att in draft.attachments:
        session.add(Attachment(comment_id=comment.id, name=clean_text(att.name, 255), size=att.size,
                               sha256=att.sha256, content_type=clean_text(att.content_type, 200),
                               inline=att.inline))
    return comment


async def add_party(session: AsyncSession, case_id: int, user_id: int, now: datetime,
                    by_id: int | None) -> bool:
    existing = await session.get(CaseParty, (case_id, user_id))
    if existing is not None:
        return False
    session.add(CaseParty(case_id=case_id, user_id=user_id, added_at=now, added_by_id=by_id))
    await session.flush()
    return True


async def index_message_id(session: AsyncSession, message_id: str | None, case_id: int, ours: bool) -> None:
    """Remember a Message-ID for threading; the first case that saw it keeps it."""
    if not message_id:
        return
    table = MessageIndex.__table__  # type: ignore[attr-defined]
    module = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    await session.execute(module.insert(table).values(message_id=message_id[:998], case_id=case_id, ours=ours)
                          .on_conflict_do_nothing(index_elements=["message_id"]))


async def finish_inbound(session: AsyncSession, inbound_id: int, outcome: str, reason: str,
                         case_id: int | None, now: datetime, subject: str = "", from_addr: str | None = None) -> None:
    await session.exec(update(InboundMail).where(InboundMail.id == inbound_id).values(  # type: ignore[call-overload, arg-type]
        state="done", outcome=outcome, reason=clean_text(reason, 2000), case_id=case_id, processed_at=now,
        claimed_until=None, subject=clean_text(subject, 500) or None, from_addr=from_addr))


async def mark_bouncing(session: AsyncSession, address: str, reason: str, now: datetime) -> bool:
    user = await user_by_email(session, address)
    if user is None:
        return False
    user.bouncing_since = now
    user.bounce_reason = clean_text(reason, 500)
    session.add(user)
    return True
