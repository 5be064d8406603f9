"""Execute a `Plan` in the caller's transaction: rows, history, index and outbox together.

A crash anywhere before the commit leaves nothing behind; after it, everything — including
the notifications the change calls for (a transactional outbox, RELIABILITY 28).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.model import (
    AppendComment,
    Event,
    Ignore,
    OpenCase,
    Outcome,
    ParsedMail,
    Plan,
    Quarantine,
    Reject,
    Result,
    Source,
)
from store import outbox, writes
from store.models import InboundMail, SupportCase


@dataclass(frozen=True)
class ApplySettings:
    case_prefix: str
    case_digits: int
    message_id_domain: str
    language: str
    limits: outbox.RateLimits = outbox.RateLimits()


async def apply_plan(session: AsyncSession, plan: Plan, mail: ParsedMail, inbound_id: int, now: datetime,
                     cfg: ApplySettings) -> Result:
    case_id: int | None = None
    if isinstance(plan, OpenCase):
        result, case_id = await _open_case(session, plan, mail, inbound_id, now, cfg)
    elif isinstance(plan, AppendComment):
        result, case_id = await _append(session, plan, mail, inbound_id, now, cfg), plan.case.id
    elif isinstance(plan, Ignore):
        result, case_id = await _ignore(session, plan, mail, inbound_id, now), plan.case.id if plan.case else None
    elif isinstance(plan, Reject):
        result = await _reject(session, plan, now, cfg)
    else:
        result = Result(Outcome.QUARANTINED, reason=plan.reason)
    await writes.finish_inbound(session, inbound_id, result.action.value, result.reason, case_id, now,
                                subject=mail.subject, from_addr=mail.from_addr)
    if isinstance(plan, Quarantine):
        await _quarantine_state(session, inbound_id)
    return Result(result.action, result.case, result.reason, inbound_id, result.notifications)


async def _open_case(session: AsyncSession, plan: OpenCase, mail: ParsedMail, inbound_id: int, now: datetime,
                     cfg: ApplySettings) -> tuple[Result, int]:
    requester = await writes.ensure_user(session, plan.requester, now)
    number = await writes.next_case_number(session, cfg.case_prefix, cfg.case_digits)
    follows_id = plan.follows.id if plan.follows else None
    case = await writes.create_case(session, number, plan.subject, requester.id, now, follows_id)
    assert case.id is not None
    await writes.add_comment(session, case.id, requester.id, plan.comment, Source.EMAIL, now, inbound_id)
    await writes.index_message_id(session, mail.message_id, case.id, ours=False)
    for party in plan.parties:
        await writes.add_party(session, case.id, party.id, now, requester.id)
    user = await session.get(writes.AppUser, requester.id)
    assert user is not None
    event = Event.FOLLOWUP if plan.follows else Event.RECEIPT
    context = {"follows_number": plan.follows.number} if plan.follows else {}
    ids = await outbox.enqueue(session, case, event, [outbox.recipient_of(user, cfg.language)], now,
                               cfg.message_id_domain, context, refs=[mail.message_id] if mail.message_id else [],
                               limits=cfg.limits)
    ids += await _tell_new_parties(session, case, [p.id for p in plan.parties], requester.name, now, cfg)
    reason = "; ".join(filter(None, [f"follows {plan.follows.number}" if plan.follows else "", plan.note]))
    return Result(Outcome.CREATED, number, reason, notifications=tuple(ids)), case.id


async def _append(session: AsyncSession, plan: AppendComment, mail: ParsedMail, inbound_id: int, now: datetime,
                  cfg: ApplySettings) -> Result:
    case = await session.get(SupportCase, plan.case.id)
    assert case is not None and case.id is not None
    await writes.add_comment(session, case.id, plan.author.id, plan.comment, Source.EMAIL, now, inbound_id)
    await writes.index_message_id(session, mail.message_id, case.id, ours=False)
    case.updated_at = now
    session.add(case)
    added = [p.id for p in plan.parties if await writes.add_party(session, case.id, p.id, now, plan.author.id)]
    ids: list[str] = []
    if plan.new_status is not None:
        previous = await writes.change_status(session, case, plan.new_status, now, plan.author.id, plan.author.email,
                                              "reply from the requester" if not plan.reopened else "reopened by reply")
        event = Event.REOPENED if plan.reopened else Event.STATUS
        recipients = await outbox.recipients_for(session, case, plan.author.id, cfg.language)
        ids += await outbox.enqueue(session, case, event, recipients, now, cfg.message_id_domain,
                                    {"previous_status": previous.value, "actor_name": plan.author.name},
                                    limits=cfg.limits)
    ids += await _tell_new_parties(session, case, added, plan.author.name, now, cfg)
    action = Outcome.REOPENED if plan.reopened else Outcome.COMMENTED
    return Result(action, case.number, "", notifications=tuple(ids))


async def _tell_new_parties(session: AsyncSession, case: SupportCase, user_ids: list[int], actor_name: str,
                            now: datetime, cfg: ApplySettings) -> list[str]:
    recipients = []
    for user_id in user_ids:
        user = await session.get(writes.AppUser, user_id)
        if user is not None:
            recipients.append(outbox.recipient_of(user, cfg.language))
    if not recipients:
        return []
    return await outbox.enqueue(session, case, Event.SHARED, recipients, now, cfg.message_id_domain,
                                {"actor_name": actor_name}, limits=cfg.limits)


async def _ignore(session: AsyncSession, plan: Ignore, mail: ParsedMail, inbound_id: int, now: datetime) -> Result:
    if plan.case is not None and plan.comment is not None and plan.author is not None:
        draft = plan.comment
        await writes.add_comment(session, plan.case.id, plan.author.id, draft, Source.EMAIL, now, inbound_id,
                                 kind="courtesy")
        await writes.index_message_id(session, mail.message_id, plan.case.id, ours=False)
    marked = []
    if plan.bounced_recipients and await _is_about_our_mail(session, mail):
        for address in plan.bounced_recipients:
            if await writes.mark_bouncing(session, address, plan.reason, now):
                marked.append(address)
    reason = plan.reason + (f"; marked bouncing: {', '.join(marked)}" if marked else "")
    return Result(Outcome.IGNORED, plan.case.number if plan.case else None, reason)


async def _is_about_our_mail(session: AsyncSession, mail: ParsedMail) -> bool:
    from store.models import MessageIndex

    for mid in filter(None, (mail.original_message_id, *mail.in_reply_to, *mail.references)):
        row = await session.get(MessageIndex, mid)
        if row is not None and row.ours:
            return True
    return False


async def _reject(session: AsyncSession, plan: Reject, now: datetime, cfg: ApplySettings) -> Result:
    ids: list[str] = []
    if plan.reply_to:
        rcpt = outbox.Recipient(plan.reply_to, "", cfg.language)
        ids.append(await outbox.enqueue_without_case(session, Event.REJECTED, rcpt, now, cfg.message_id_domain,
                                                     {"reason": plan.reason}, limits=cfg.limits))
    return Result(Outcome.REJECTED, None, plan.reason, notifications=tuple(ids))


async def _quarantine_state(session: AsyncSession, inbound_id: int) -> None:
    inbound = await session.get(InboundMail, inbound_id)
    if inbound is not None:
        inbound.state = "quarantined"
        session.add(inbound)
