"""The pure steps in their order (gateway/pipeline/__init__.py), table-driven and without a store:
`triage` says what to look up, the test plays the store's answer (`Facts`), `decide` plans."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from gateway.model import (
    AppendComment,
    CaseRef,
    Facts,
    Ignore,
    NewUser,
    OpenCase,
    ParsedMail,
    Plan,
    Quarantine,
    Reject,
    Role,
    Status,
    Triage,
    UserKind,
    UserRef,
)
from gateway.pipeline import Policy, decide, triage
from gateway.pipeline.plan import PlanPolicy

OURS = "kundebetjening@statens-adm.example"
MTA = "mx.statens-adm.example"
POLICY = Policy(frozenset({OURS}), "gateway.statens-adm.example", "a secret of sixteen+ chars", (OURS,), MTA)
ENFORCE = replace(POLICY, plan=PlanPolicy(sender_authentication="enforce"))
SHARING = replace(POLICY, plan=PlanPolicy(sender_authentication="mark", cc_sharing=True))

JENS = UserRef(1, "jens@borger.example", "Jens", UserKind.PERSON, Role.CUSTOMER, organisation_id=10)
METTE = UserRef(2, "mette@borger.example", "Mette", UserKind.PERSON, Role.CUSTOMER, organisation_id=10)
OTHER_ORG = UserRef(3, "ole@andet.example", "Ole", UserKind.PERSON, Role.CUSTOMER, organisation_id=11)
MALLORY = UserRef(4, "mallory@angriber.example", "Mallory", UserKind.PERSON, Role.CUSTOMER)
AGENT_ID = 9

MAIL = ParsedMail(
    message_id="<ny@borger.example>", subject="Spørgsmål om min faktura", from_addr=JENS.email, from_name="Jens",
    from_count=1, reply_to=(), to=(OURS,), cc=(), in_reply_to=(), references=(), date=None,
    headers=(("from", "Jens <jens@borger.example>"),), content_type="text/plain",
    text="Hej\n\nJeg har et spørgsmål om min faktura.\n\nMvh Jens", html=None)
REPLY = replace(MAIL, subject="SV: [SAG-000007] Faktura", in_reply_to=("<kvittering@gateway.statens-adm.example>",))
THANKS = replace(REPLY, text="Tak for hjælpen!\n\nMvh Jens")
AUTO_REPLY = replace(REPLY, headers=(*MAIL.headers, ("auto-submitted", "auto-replied")))
BULK = replace(REPLY, headers=(*MAIL.headers, ("precedence", "bulk")))
SIGNED = replace(MAIL, cc=(METTE.email, OTHER_ORG.email),
                 headers=(*MAIL.headers, ("authentication-results", f"{MTA}; dmarc=pass header.from=borger.example")))


def case(status: Status, assignee: int | None = AGENT_ID, number: str = "SAG-000007") -> CaseRef:
    return CaseRef(7, number, "Faktura", status, JENS.id, assignee, frozenset({METTE.id}), 10)


# (what happens, mail, the store's answer, policy, the plan's type, fields of the plan)
DECISIONS: list[tuple[str, ParsedMail, Facts, Policy, type, dict[str, Any]]] = [
    ("a stranger's mail opens a case", MAIL, Facts(), POLICY, OpenCase,
     {"requester": NewUser(JENS.email, "Jens"), "follows": None, "subject": "Spørgsmål om min faktura"}),
    ("a known sender's mail opens a case", MAIL, Facts(JENS), POLICY, OpenCase, {"requester": JENS}),
    ("the answer on a case awaiting it goes back to the assignee", REPLY, Facts(JENS, by_subject=case(Status.AFVENTER_REKVIRENT)),
     POLICY, AppendComment, {"new_status": Status.TILDELT, "reopened": False}),
    ("without an assignee, back to paabegyndt", REPLY, Facts(JENS, by_subject=case(Status.AFVENTER_REKVIRENT, None)),
     POLICY, AppendComment, {"new_status": Status.PAABEGYNDT, "reopened": False}),
    ("an answer on a done case reopens it", REPLY, Facts(JENS, by_token=case(Status.UDFOERT, None)), POLICY,
     AppendComment, {"new_status": Status.PAABEGYNDT, "reopened": True}),
    ("an answer on an active case changes no status", REPLY, Facts(JENS, by_message_id=case(Status.PAABEGYNDT)),
     POLICY, AppendComment, {"new_status": None, "reopened": False}),
    ("a party may answer", replace(REPLY, from_addr=METTE.email),
     Facts(METTE, by_subject=case(Status.AFVENTER_REKVIRENT)), POLICY, AppendComment, {"author": METTE}),
    ("our Message-ID wins over the subject's tag", REPLY,
     Facts(JENS, by_message_id=case(Status.TILDELT), by_subject=case(Status.TILDELT, number="SAG-000008")), POLICY,
     AppendComment, {"case": case(Status.TILDELT)}),
    ("an answer on a closed case opens a case that follows it", REPLY, Facts(JENS, by_subject=case(Status.LUKKET)),
     POLICY, OpenCase, {"follows": case(Status.LUKKET), "subject": "Faktura"}),
    ("a thank-you on a done case is kept, not reopened", THANKS, Facts(JENS, by_subject=case(Status.UDFOERT)), POLICY,
     Ignore, {"reason": "courtesy reply on a finished case", "case": case(Status.UDFOERT)}),
    ("a thank-you on an active case is a comment", THANKS, Facts(JENS, by_subject=case(Status.TILDELT)), POLICY,
     AppendComment, {"new_status": None}),
    ("an outsider's reference opens a case of their own", replace(REPLY, from_addr=MALLORY.email),
     Facts(MALLORY, by_subject=case(Status.TILDELT)), POLICY, OpenCase,
     {"requester": MALLORY, "follows": None, "note": "thread reference ignored: sender is not a party of the case"}),
    ("an auto-reply keeps its case, changes nothing", AUTO_REPLY, Facts(JENS, by_subject=case(Status.AFVENTER_REKVIRENT)),
     POLICY, Ignore, {"case": case(Status.AFVENTER_REKVIRENT)}),
    ("bulk mail is about no case", BULK, Facts(JENS, by_subject=case(Status.TILDELT)), POLICY, Ignore, {"case": None}),
    ("a sender over the hour's limit is a loop", MAIL, Facts(JENS, recent_from_sender=30), POLICY, Ignore,
     {"reason": "mail loop: over 30 mails from this sender in an hour"}),
    ("no single From address", replace(MAIL, from_addr=None, from_count=2), Facts(), POLICY, Quarantine,
     {"reason": "no single valid From address (2 found)"}),
    ("an unknown sender under reject", MAIL, Facts(), replace(POLICY, plan=PlanPolicy(unknown_sender="reject")), Reject,
     {"reply_to": JENS.email}),
    ("an unknown sender under quarantine", MAIL, Facts(), replace(POLICY, plan=PlanPolicy(unknown_sender="quarantine")),
     Quarantine, {"reason": "unknown sender"}),
    ("enforce: a registered address without proof", MAIL, Facts(JENS), ENFORCE, Quarantine,
     {"reason": "unauthenticated mail claiming a registered address"}),
    ("enforce: a stranger needs no proof", MAIL, Facts(), ENFORCE, OpenCase, {}),
    ("CC sharing: the requester's colleagues, own organisation only", SIGNED, Facts(JENS, cc_users=(METTE, OTHER_ORG)),
     SHARING, OpenCase, {"parties": (METTE,)}),
    ("CC sharing: not without proof", replace(SIGNED, headers=MAIL.headers), Facts(JENS, cc_users=(METTE,)), SHARING,
     OpenCase, {"parties": ()}),
]


@pytest.mark.parametrize(("mail", "facts", "policy", "kind", "fields"), [row[1:] for row in DECISIONS],
                         ids=[row[0] for row in DECISIONS])
def test_decide(mail: ParsedMail, facts: Facts, policy: Policy, kind: type, fields: dict[str, Any]) -> None:
    plan = decide(mail, triage(mail, policy), facts, policy)
    assert isinstance(plan, kind), plan
    assert {name: getattr(plan, name) for name in fields} == fields


# (what the store is asked, mail, policy, fields of the triage)
LOOKUPS: list[tuple[str, ParsedMail, Policy, dict[str, Any]]] = [
    ("a new mail: the sender, counted for the loop guard", MAIL, POLICY,
     {"sender": JENS.email, "recent_cap": 30, "cc": (), "authenticated": None}),
    ("a reply: its references and its subject's tag", REPLY, POLICY, {
        "keys": replace(triage(MAIL, POLICY).keys, message_ids=("<kvittering@gateway.statens-adm.example>",),
                        subject_number="SAG-000007")}),
    ("an automated mail is not counted", AUTO_REPLY, POLICY, {"recent_cap": 0}),
    ("the loop guard off", MAIL, replace(POLICY, plan=PlanPolicy(max_mails_per_sender_per_hour=0)), {"recent_cap": 0}),
    ("Cc'd users only under CC sharing", SIGNED, POLICY, {"cc": ()}),
    ("under CC sharing, proven", SIGNED, SHARING, {"cc": (METTE.email, OTHER_ORG.email), "authenticated": True}),
    ("enforce, no proof", MAIL, ENFORCE, {"authenticated": False}),
]


@pytest.mark.parametrize(("mail", "policy", "fields"), [row[1:] for row in LOOKUPS], ids=[row[0] for row in LOOKUPS])
def test_triage(mail: ParsedMail, policy: Policy, fields: dict[str, Any]) -> None:
    found = triage(mail, policy)
    assert {name: getattr(found, name) for name in fields} == fields


def test_the_plan_step_is_the_policys() -> None:
    seen: list[tuple[ParsedMail, Triage, Facts]] = []

    def planner(mail: ParsedMail, triaged: Triage, facts: Facts, plan: PlanPolicy) -> Plan:
        seen.append((mail, triaged, facts))
        return Quarantine("held by the test")

    facts = Facts(JENS)
    assert decide(MAIL, triage(MAIL, POLICY), facts, replace(POLICY, planner=planner)) == Quarantine("held by the test")
    assert seen == [(MAIL, triage(MAIL, POLICY), facts)]
