"""Decide what one mail does (rules §3 rules 1–3, §5), as a value. Pure: no I/O.

The steps before this one have sorted the mail (`Triage`) and the store has answered what it
knows about it (`Facts`); `gateway.pipeline` runs them in order, and `gateway.apply` executes
the plan in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway import rules
from gateway.model import (
    DONE_STATUSES,
    AppendComment,
    CaseRef,
    Classification,
    CommentDraft,
    Facts,
    Ignore,
    MailKind,
    NewUser,
    OpenCase,
    ParsedMail,
    Plan,
    Quarantine,
    Reject,
    Triage,
    UserRef,
)
from gateway.pipeline.courtesy import is_courtesy_reply
from gateway.pipeline.reply import split_reply
from gateway.pipeline.thread import choose_thread, clean_subject

NO_TEXT = "(Ingen tekst i mailen)"
NO_SUBJECT = "(Intet emne)"
BLOCKED = "unknown sender whose data was erased: not registered again until `gateway users allow`"


@dataclass(frozen=True)
class PlanPolicy:
    unknown_sender: str = "register"
    sender_authentication: str = "off"
    cc_sharing: bool = False
    courtesy_replies: bool = True
    case_prefix: str = "SAG-"
    max_mails_per_sender_per_hour: int = 30


def make_plan(mail: ParsedMail, triage: Triage, facts: Facts, policy: PlanPolicy) -> Plan:
    match = choose_thread(facts)
    if triage.kind.is_automated:
        return _automated(triage.kind, match.case if match else None)
    if mail.from_addr is None:
        return Quarantine(f"no single valid From address ({mail.from_count} found)")
    if 0 < policy.max_mails_per_sender_per_hour <= facts.recent_from_sender:
        return Ignore(f"mail loop: over {policy.max_mails_per_sender_per_hour} mails from this sender in an hour",
                      case=match.case if match else None)
    sender = facts.sender
    if sender is not None and triage.authenticated is False and policy.sender_authentication == "enforce":
        return Quarantine("unauthenticated mail claiming a registered address")
    if sender is None and policy.unknown_sender == "reject":
        return Reject("unknown sender", reply_to=mail.from_addr)
    if sender is None and policy.unknown_sender == "quarantine":
        return Quarantine("unknown sender")
    if sender is None and facts.sender_blocked:  # "register", but this address's data was erased
        return Quarantine(BLOCKED)
    comment, shared = draft(mail), _cc_shared(facts, triage.authenticated, policy)
    if match is not None and sender is not None and match.case.admits(sender):
        return _on_case(match.case, sender, comment, mail, shared, policy)
    note = "thread reference ignored: sender is not a party of the case" if match else ""
    return _open(mail, sender, shared, policy, comment, follows=None, note=note)


def _automated(kind: Classification, case: CaseRef | None) -> Ignore:
    reason = f"{kind.kind.value}: {kind.reason}" if kind.reason else kind.kind.value
    keep = case if kind.kind in (MailKind.AUTO_REPLY, MailKind.BOUNCE) else None
    return Ignore(reason, case=keep, bounced_recipients=kind.bounced_recipients)


def _on_case(case: CaseRef, sender: UserRef, comment: CommentDraft, mail: ParsedMail, shared: tuple[UserRef, ...],
             policy: PlanPolicy) -> Plan:
    done = case.status in DONE_STATUSES
    if done and policy.courtesy_replies and is_courtesy_reply(_with_signature(comment)):
        return Ignore("courtesy reply on a finished case", case=case, author=sender, comment=comment)
    if rules.is_final(case.status):
        return _open(mail, sender, shared, policy, comment, follows=case, note="")
    move = rules.after_answer(case.status, case.assignee_id is not None)
    return AppendComment(case, sender, comment, new_status=move.to if move else None,
                         reopened=move.reopens if move else False,
                         parties=shared if sender.id == case.requester_id else ())


def _open(mail: ParsedMail, sender: UserRef | None, shared: tuple[UserRef, ...], policy: PlanPolicy,
          comment: CommentDraft, follows: CaseRef | None, note: str) -> OpenCase:
    requester: UserRef | NewUser = sender or NewUser(mail.from_addr or "", mail.from_name)
    subject = clean_subject(mail.subject, policy.case_prefix) or (follows.subject if follows else NO_SUBJECT)
    return OpenCase(requester, subject, comment, follows=follows, parties=shared, note=note)


def _cc_shared(facts: Facts, authenticated: bool | None, policy: PlanPolicy) -> tuple[UserRef, ...]:
    """CC sharing (rules §5): the Cc'd users of the sender's own organisation, when the mail is
    authenticated. They become parties only of a case the sender is the requester of."""
    sender = facts.sender
    if not policy.cc_sharing or sender is None or authenticated is not True or sender.organisation_id is None:
        return ()
    return tuple(u for u in facts.cc_users if u.organisation_id == sender.organisation_id and u.id != sender.id)


def draft(mail: ParsedMail) -> CommentDraft:
    # The parse gives the text LF line ends, as the visible text has them: a mail sent with CRLF
    # (most are, on the wire) and no quoted history is then its visible text and signature,
    # stored once (store/models.py).
    full = mail.text.strip()
    if mail.new_text is not None:
        visible, signature = mail.new_text, mail.signature
    else:
        visible, signature = split_reply(full) if full else ("", "")
    if not visible:
        visible = NO_TEXT
    return CommentDraft(visible_text=visible, full_text=full, html=mail.html, attachments=mail.attachments,
                        signature=signature)


def _with_signature(comment: CommentDraft) -> str:
    return f"{comment.visible_text}\n\n{comment.signature}" if comment.signature else comment.visible_text
