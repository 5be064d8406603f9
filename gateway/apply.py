"""The mail transaction: one parsed mail's facts read, its plan decided and executed, in the
caller's transaction — rows, history, index and outbox together.

A crash anywhere before the commit leaves nothing behind; after it, everything — including
the notifications the change calls for (a transactional outbox, catalogue 28).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from gateway.logs import bound
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
    Status,
    Triage,
    UserRef,
)
from gateway.pipeline import Policy, decide, triage
from gateway.pipeline.plan import PlanPolicy
from gateway.settings import Settings
from store import outbox, queries, writes
from store.inbox import Claim
from store.transact import TxSession


@dataclass(frozen=True)
class ApplySettings:
    case_prefix: str
    case_digits: int
    message_id_domain: str
    language: str
    limits: outbox.RateLimits = outbox.RateLimits()


@dataclass(frozen=True)
class Steps:
    """The parts of the settings a mail's steps need: the pure steps' and apply's."""

    policy: Policy
    apply: ApplySettings

    @classmethod
    def from_settings(cls, s: Settings) -> Steps:
        plan = PlanPolicy(s.policy.unknown_sender, s.policy.sender_authentication, s.policy.cc_sharing,
                          s.policy.courtesy_replies, s.mail.case_prefix, s.policy.max_mails_per_sender_per_hour)
        return cls(
            policy=Policy(frozenset(a.lower() for a in (*s.mail.addresses, s.mail.from_address)),
                          s.mail.message_id_domain, s.mail.reply_token_secret, s.mail.addresses,
                          s.policy.authserv_id, plan),
            apply=ApplySettings(s.mail.case_prefix, s.mail.case_digits, s.mail.message_id_domain, s.policy.language,
                                outbox.RateLimits(s.policy.max_auto_answers_per_day, s.policy.notify_per_10_minutes,
                                                  s.policy.notify_per_hour)),
        )


def handle_all(session: TxSession, steps: Steps, mails: list[tuple[int, Claim, ParsedMail]],
               now: datetime) -> list[Result]:
    """The transaction of a group of parsed mails, one after the other. A mail whose claim was
    lost meanwhile raises LostClaim, and the whole group rolls back.

    The group's reads that can be known before its first mail (senders, their counts) are read
    together first (store/group.py): on PostgreSQL a round trip each for the whole group. The
    cases it opens there have ids reserved by those reads; their numbers are known once the
    writes are settled, here at the end (the commit would send them anyway)."""
    triaged = [triage(mail, steps.policy) for _, _, mail in mails]
    queries.read_ahead(session, triaged, now, steps.apply.limits.auto_answers_per_day, outbox.AUTOMATIC_ANSWERS)
    try:
        done = [handle(session, steps, inbound_id, mail, now, claim, seen)
                for (inbound_id, claim, mail), seen in zip(mails, triaged, strict=True)]
        numbers = writes.settle(session)  # what the commit would send now: the new cases' numbers known
        return [replace(result, case=numbers[case_id]) if result.case is None and case_id in numbers else result
                for result, case_id in done]
    finally:
        queries.end_group(session)


def handle(session: TxSession, steps: Steps, inbound_id: int, mail: ParsedMail, now: datetime,
           claim: Claim | None = None, triaged: Triage | None = None) -> tuple[Result, int | None]:
    """One mail: the pure steps before the reads, the reads, the plan, and its execution; its
    result and its case's id. Bound here too: the transaction runs on the store's thread, which
    the caller's binding does not reach."""
    with bound(inbound_id=inbound_id):
        triaged = triaged or triage(mail, steps.policy)
        plan = decide(mail, triaged, queries.load_facts(session, triaged, now), steps.policy)
        return apply_plan(session, plan, mail, inbound_id, now, steps.apply, claim)


def apply_plan(session: TxSession, plan: Plan, mail: ParsedMail, inbound_id: int, now: datetime,
               cfg: ApplySettings, claim: Claim | None = None) -> tuple[Result, int | None]:
    """The plan's writes; the result (its case number None for a case whose number the store has
    not answered yet: `handle_all`) and the case's id."""
    case_id: int | None = None
    if isinstance(plan, OpenCase):
        result, case_id = _open_case(session, plan, mail, inbound_id, now, cfg)
    elif isinstance(plan, AppendComment):
        result, case_id = _append(session, plan, mail, inbound_id, now, cfg), plan.case.id
    elif isinstance(plan, Ignore):
        result, case_id = _ignore(session, plan, mail, inbound_id, now), plan.case.id if plan.case else None
    elif isinstance(plan, Reject):
        result = _reject(session, plan, now, cfg)
    else:
        result = Result(Outcome.QUARANTINED, reason=plan.reason)
    writes.finish_inbound(session, inbound_id, result.action.value, result.reason, case_id, now,
                          subject=mail.subject, from_addr=mail.from_addr,
                          state="quarantined" if isinstance(plan, Quarantine) else "done", claim=claim)
    return Result(result.action, result.case, result.reason, inbound_id,
                  outbox.sendable(session, result.notifications)), case_id


def _open_case(session: TxSession, plan: OpenCase, mail: ParsedMail, inbound_id: int, now: datetime,
               cfg: ApplySettings) -> tuple[Result, int]:
    requester = writes.ensure_user(session, plan.requester, now)
    follows_id = plan.follows.id if plan.follows else None
    case_id, number = writes.open_case(session, cfg.case_prefix, cfg.case_digits, plan.subject, requester, now,
                                       follows_id)
    writes.add_comment(session, case_id, requester.id, plan.comment, Source.EMAIL, now, inbound_id)
    writes.index_message_id(session, mail.message_id, case_id, ours=False)
    for party in plan.parties:
        writes.add_party(session, case_id, party.id, now, requester.id)
    case = outbox.CaseHead(case_id, number, writes.clean_text(plan.subject, 500), Status.REGISTRERET.value)
    event = Event.FOLLOWUP if plan.follows else Event.RECEIPT
    context = {"follows_number": plan.follows.number} if plan.follows else {}
    ids = outbox.enqueue(session, case, event, [outbox.recipient_of(requester, cfg.language)], now,
                         cfg.message_id_domain, context, refs=[mail.message_id] if mail.message_id else [],
                         limits=cfg.limits, new_case=True)
    ids += _tell_new_parties(session, case, plan.parties, requester.name, now, cfg, new_case=True)
    reason = "; ".join(filter(None, [f"follows {plan.follows.number}" if plan.follows else "", plan.note]))
    return Result(Outcome.CREATED, number, reason, notifications=tuple(ids)), case_id


def _append(session: TxSession, plan: AppendComment, mail: ParsedMail, inbound_id: int, now: datetime,
            cfg: ApplySettings) -> Result:
    case, author = plan.case, plan.author
    writes.add_comment(session, case.id, author.id, plan.comment, Source.EMAIL, now, inbound_id)
    writes.index_message_id(session, mail.message_id, case.id, ours=False)
    added = [p for p in plan.parties if writes.add_party(session, case.id, p.id, now, author.id)]
    head = outbox.CaseHead(case.id, case.number, case.subject, (plan.new_status or case.status).value)
    ids: list[str] = []
    if plan.new_status is None:
        writes.touch_case(session, case.id, now)
    else:
        previous = writes.set_status(session, case.id, plan.new_status, now, author.id, author.email,
                                     "reply from the requester" if not plan.reopened else "reopened by reply")
        event = Event.REOPENED if plan.reopened else Event.STATUS
        recipients = outbox.recipients_for(session, case, author.id, cfg.language)
        ids += outbox.enqueue(session, head, event, recipients, now, cfg.message_id_domain,
                              {"previous_status": previous.value, "actor_name": author.name}, limits=cfg.limits)
    ids += _tell_new_parties(session, head, added, author.name, now, cfg)
    action = Outcome.REOPENED if plan.reopened else Outcome.COMMENTED
    return Result(action, case.number, "", notifications=tuple(ids))


def _tell_new_parties(session: TxSession, case: outbox.CaseHead, users: Sequence[UserRef], actor_name: str,
                      now: datetime, cfg: ApplySettings, new_case: bool = False) -> list[str]:
    if not users:
        return []
    return outbox.enqueue(session, case, Event.SHARED, [outbox.recipient_of(u, cfg.language) for u in users],
                          now, cfg.message_id_domain, {"actor_name": actor_name}, limits=cfg.limits,
                          new_case=new_case)


def _ignore(session: TxSession, plan: Ignore, mail: ParsedMail, inbound_id: int, now: datetime) -> Result:
    if plan.case is not None and plan.comment is not None and plan.author is not None:
        draft = plan.comment
        writes.add_comment(session, plan.case.id, plan.author.id, draft, Source.EMAIL, now, inbound_id,
                                 kind="courtesy")
        writes.index_message_id(session, mail.message_id, plan.case.id, ours=False)
    reason = plan.reason
    if plan.bounced_recipients:
        reason += "; " + _mark_bouncing(session, plan.bounced_recipients, mail, plan.reason, now)
    return Result(Outcome.IGNORED, plan.case.number if plan.case else None, reason)


def _mark_bouncing(session: TxSession, named: tuple[str, ...], mail: ParsedMail, reason: str, now: datetime) -> str:
    """Mark a recipient bouncing only when the report names them AND cites a mail of ours that
    went to them. Anyone can write a delivery report: one that had only to cite some mail of
    ours could silence any address (a customer citing their own receipt, naming a colleague)."""
    cited = outbox.recipients_of_messages(session, _cited_ids(mail))
    if not cited:
        return "nothing marked: the report cites no mail of ours"
    marked, foreign, unknown = [], [], []
    for address in named:
        if address not in cited:
            foreign.append(address)
        elif writes.mark_bouncing(session, address, reason, now):
            marked.append(address)
        else:
            unknown.append(address)
    return "; ".join(f"{label}: {', '.join(found)}" for label, found in (
        ("marked bouncing", marked), ("not marked, not a recipient of the cited mail", foreign),
        ("not marked, no such user", unknown)) if found)


def _cited_ids(mail: ParsedMail) -> list[str]:
    return list(dict.fromkeys(filter(None, (mail.original_message_id, *mail.in_reply_to, *mail.references))))


def _reject(session: TxSession, plan: Reject, now: datetime, cfg: ApplySettings) -> Result:
    ids: list[str] = []
    if plan.reply_to:
        rcpt = outbox.Recipient(plan.reply_to, "", cfg.language)
        ids.append(outbox.enqueue_without_case(session, Event.REJECTED, rcpt, now, cfg.message_id_domain,
                                                     {"reason": plan.reason}, limits=cfg.limits))
    return Result(Outcome.REJECTED, None, plan.reason, notifications=tuple(ids))

