"""Decide what one mail does (SPEC §3 rules 1–3, §5), as a value. Pure: no I/O.

The steps before this one have classified the mail and loaded the facts (`Context`); the
plan is executed by `gateway.apply` in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.model import (
    AppendComment,
    CaseRef,
    Classification,
    CommentDraft,
    Context,
    Ignore,
    MailKind,
    NewUser,
    OpenCase,
    ParsedMail,
    Plan,
    Quarantine,
    Reject,
    Status,
    UserRef,
)
from gateway.pipeline.reply import is_courtesy_reply, split_reply
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


def make_plan(mail: ParsedMail, kind: Classification, ctx: Context, policy: PlanPolicy) -> Plan:
    match = choose_thread(ctx)
    if kind.is_automated:
        return _automated(kind, match.case if match else None)
    if mail.from_addr is None:
        return Quarantine(f"no single valid From address ({mail.from_count} found)")
    if 0 < policy.max_mails_per_sender_per_hour <= ctx.recent_from_sender:
        return Ignore(f"mail loop: over {policy.max_mails_per_sender_per_hour} mails from this sender in an hour",
                      case=match.case if match else None)
    if ctx.sender is not None and ctx.authenticated is False and policy.sender_authentication == "enforce":
        return Quarantine("unauthenticated mail claiming a registered address")
    if ctx.sender is None and policy.unknown_sender == "reject":
        return Reject("unknown sender", reply_to=mail.from_addr)
    if ctx.sender is None and policy.unknown_sender == "quarantine":
        return Quarantine("unknown sender")
    if ctx.sender is None and ctx.sender_blocked:  # "register", but this address's data was erased
        return Quarantine(BLOCKED)
    comment = draft(mail)
    if match is not None and ctx.sender is not None and match.case.admits(ctx.sender):
        return _on_case(match.case, ctx.sender, comment, mail, ctx, policy)
    note = "thread reference ignored: sender is not a party of the case" if match else ""
    return _open(mail, ctx, policy, comment, follows=None, note=note)


def _automated(kind: Classification, case: CaseRef | None) -> Ignore:
    reason = f"{kind.kind.value}: {kind.reason}" if kind.reason else kind.kind.value
    keep = case if kind.kind in (MailKind.AUTO_REPLY, MailKind.BOUNCE) else None
    return Ignore(reason, case=keep, bounced_recipients=kind.bounced_recipients)


def _on_case(case: CaseRef, sender: UserRef, comment: CommentDraft, mail: ParsedMail, ctx: Context,
             policy: PlanPolicy) -> Plan:
    done = case.status in (Status.UDFOERT, Status.LUKKET)
    if done and policy.courtesy_replies and is_courtesy_reply(_with_signature(comment)):
        return Ignore("courtesy reply on a finished case", case=case, author=sender, comment=comment)
    if case.status is Status.LUKKET:
        return _open(mail, ctx, policy, comment, follows=case, note="")
    back = Status.TILDELT if case.assignee_id is not None else Status.PAABEGYNDT
    new_status = back if case.status in (Status.AFVENTER_REKVIRENT, Status.UDFOERT) else None
    return AppendComment(case, sender, comment, new_status=new_status,
                         reopened=case.status is Status.UDFOERT,
                         parties=_cc_parties(ctx, policy, sender, case.requester_id))


def _open(mail: ParsedMail, ctx: Context, policy: PlanPolicy, comment: CommentDraft,
          follows: CaseRef | None, note: str) -> OpenCase:
    requester: UserRef | NewUser = ctx.sender or NewUser(mail.from_addr or "", mail.from_name)
    subject = clean_subject(mail.subject, policy.case_prefix) or (follows.subject if follows else NO_SUBJECT)
    parties = _cc_parties(ctx, policy, ctx.sender, ctx.sender.id) if ctx.sender else ()
    return OpenCase(requester, subject, comment, follows=follows, parties=parties, note=note)


def _cc_parties(ctx: Context, policy: PlanPolicy, sender: UserRef | None, requester_id: int) -> tuple[UserRef, ...]:
    """CC sharing (SPEC §5): only for an authenticated mail from the requester, own organisation only."""
    if not policy.cc_sharing or sender is None or sender.id != requester_id or ctx.authenticated is not True:
        return ()
    if sender.organisation_id is None:
        return ()
    return tuple(u for u in ctx.cc_users if u.organisation_id == sender.organisation_id and u.id != sender.id)


def draft(mail: ParsedMail) -> CommentDraft:
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
