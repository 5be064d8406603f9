"""Classify (rules §6, catalogue 71-77): table-driven rules, then the corpus (tests/corpus)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.model import DeliveryReport, MailKind, ParsedMail
from gateway.pipeline.classify import classify

OWN = frozenset({"kundebetjening@statens-adm.example", "Support@Statens-Adm.example"})
OWN_DOMAIN = "gateway.statens-adm.example"

BASE = ParsedMail(
    message_id="<abc@mail.example.org>",
    subject="Spørgsmål om min faktura",
    from_addr="borger@example.org",
    from_name="Anne Borger",
    from_count=1,
    reply_to=(),
    to=("kundebetjening@statens-adm.example",),
    cc=(),
    in_reply_to=(),
    references=(),
    date=None,
    headers=(("from", "Anne Borger <borger@example.org>"), ("subject", "Spørgsmål om min faktura")),
    content_type="text/plain",
    text="Hej\n\nJeg har et spørgsmål om min faktura.\n\nMed venlig hilsen\nAnne",
    html=None,
)


def mail(*headers: tuple[str, str], **changes: object) -> ParsedMail:
    """BASE with extra headers (name, value) and field changes."""
    return replace(BASE, headers=BASE.headers + tuple(headers), **changes)  # type: ignore[arg-type]


def kind_and_reason(m: ParsedMail) -> tuple[MailKind, str]:
    result = classify(m, OWN, OWN_DOMAIN)
    return result.kind, result.reason


DSN_REPORTS = (
    DeliveryReport("gone@example.net", "failed", "5.1.1"),
    DeliveryReport("slow@example.net", "delayed", "4.4.7"),
    DeliveryReport("full@example.net", "failed", "4.2.2"),
)

CASES: list[tuple[str, ParsedMail, MailKind, str]] = [
    ("ordinary danish mail", BASE, MailKind.NORMAL, ""),
    ("danish reply", mail(subject="SV: [SAG-000123] Spørgsmål"), MailKind.NORMAL, ""),
    ("absence registration is not an autoreply", mail(subject="Re: Fraværsregistrering"), MailKind.NORMAL, ""),
    ("word must end at the marker", mail(subject="Fraværendeliste for marts"), MailKind.NORMAL, ""),
    ("marker later in subject", mail(subject="Spørgsmål om fraværende medarbejder"), MailKind.NORMAL, ""),
    ("reply to an out of office", mail(subject="SV: Automatisk svar: Faktura"), MailKind.NORMAL, ""),
    ("autosubmitted no", mail(("auto-submitted", "no")), MailKind.NORMAL, ""),
    ("x-autoreply no", mail(("x-autoreply", "no")), MailKind.NORMAL, ""),
    ("precedence first-class", mail(("precedence", "first-class")), MailKind.NORMAL, ""),
    ("x-ars harmless values", mail(("x-auto-response-suppress", "DR, RN, NRN")), MailKind.NORMAL, ""),
    ("list-unsubscribe alone", mail(("list-unsubscribe", "<mailto:u@example.org>")), MailKind.NORMAL, ""),
    ("bounce subject from a person", mail(subject="Undeliverable: mail til kommunen"), MailKind.NORMAL, ""),
    ("forwarded bounce", mail(subject="Fwd: Undelivered Mail Returned to Sender",
                              delivery_reports=DSN_REPORTS), MailKind.NORMAL, ""),
    ("return-path of a person", mail(("return-path", "<borger@example.org>")), MailKind.NORMAL, ""),
    ("smtp envelope beats a forged return-path", mail(("return-path", "<>"), envelope_from="borger@example.org"),
     MailKind.NORMAL, ""),
    ("foreign message-id domain", mail(message_id="<x@statens-adm.example>"), MailKind.NORMAL, ""),
    # OWN
    ("own address", mail(from_addr="kundebetjening@statens-adm.example"), MailKind.OWN, "from: own address"),
    ("own address, configured mixed case", mail(from_addr="support@statens-adm.example"),
     MailKind.OWN, "from: own address"),
    ("own address with +tag", mail(from_addr="kundebetjening+a1b2c3@statens-adm.example"),
     MailKind.OWN, "from: own address"),
    ("own address wins over autoreply", mail(("auto-submitted", "auto-replied"),
                                             from_addr="kundebetjening@statens-adm.example"),
     MailKind.OWN, "from: own address"),
    ("own message-id redirected back", mail(message_id="<n.42@Gateway.Statens-Adm.example>"),
     MailKind.OWN, "message-id: own domain"),
    # BOUNCE
    ("dsn", mail(content_type="multipart/report", report_type="delivery-status",
                 delivery_reports=DSN_REPORTS), MailKind.BOUNCE, "multipart/report delivery-status"),
    ("dsn without report-type", mail(content_type="multipart/report", delivery_reports=DSN_REPORTS),
     MailKind.BOUNCE, "multipart/report delivery-status"),
    ("dsn beats auto-submitted", mail(("auto-submitted", "auto-replied"), content_type="multipart/report",
                                      report_type="delivery-status"),
     MailKind.BOUNCE, "multipart/report delivery-status"),
    ("exim x-failed-recipients", mail(("x-failed-recipients", "gone@example.net")),
     MailKind.BOUNCE, "x-failed-recipients"),
    ("qmail failure notice", mail(subject="failure notice", from_addr="mailer-daemon@mx.example.net"),
     MailKind.BOUNCE, "daemon sender: bounce subject"),
    ("domino", mail(subject="DELIVERY FAILURE: User x not listed", from_addr="postmaster@example.jp"),
     MailKind.BOUNCE, "daemon sender: bounce subject"),
    ("daemon by display name", mail(subject="Returned mail: see transcript", from_addr=None,
                                    from_name="MAILER DAEMON"),
     MailKind.BOUNCE, "daemon sender: bounce subject"),
    ("danish outlook ndr", mail(("return-path", "<>"), subject="Kan ikke leveres: Faktura",
                                from_addr="postmaster@kommune.example"),
     MailKind.BOUNCE, "daemon sender: bounce subject"),
    ("null sender + bounce subject", mail(subject="Unzustellbar: Rechnung", envelope_from=""),
     MailKind.BOUNCE, "null sender: bounce subject"),
    ("null return-path + french subject", mail(("return-path", "<>"), subject="Non remis : facture"),
     MailKind.BOUNCE, "null sender: bounce subject"),
    # REPORT
    ("mdn", mail(content_type="multipart/report", report_type="disposition-notification"),
     MailKind.REPORT, "multipart/report disposition-notification"),
    ("arf", mail(content_type="multipart/report", report_type="feedback-report"),
     MailKind.REPORT, "multipart/report feedback-report"),
    ("report of no type", mail(content_type="multipart/report"), MailKind.REPORT, "multipart/report unknown"),
    # AUTO_REPLY: headers
    ("auto-submitted replied", mail(("auto-submitted", "auto-replied")),
     MailKind.AUTO_REPLY, "auto-submitted: auto-replied"),
    ("auto-submitted generated with comment", mail(("auto-submitted", "Auto-Generated (vacation)")),
     MailKind.AUTO_REPLY, "auto-submitted: auto-generated"),
    ("auto-submitted notified", mail(("auto-submitted", "auto-notified")),
     MailKind.AUTO_REPLY, "auto-submitted: auto-notified"),
    ("x-autoreply", mail(("x-autoreply", "yes")), MailKind.AUTO_REPLY, "x-autoreply"),
    ("x-autorespond", mail(("x-autorespond", "Out of office")), MailKind.AUTO_REPLY, "x-autorespond"),
    ("x-autoresponder", mail(("x-autoresponder", "1")), MailKind.AUTO_REPLY, "x-autoresponder"),
    ("precedence auto_reply", mail(("precedence", "auto_reply")), MailKind.AUTO_REPLY, "precedence: auto_reply"),
    ("x-ars all", mail(("x-auto-response-suppress", "All")), MailKind.AUTO_REPLY, "x-auto-response-suppress: all"),
    ("x-ars oof list", mail(("x-auto-response-suppress", "DR, OOF, AutoReply")),
     MailKind.AUTO_REPLY, "x-auto-response-suppress: autoreply"),
    ("null sender alone", mail(envelope_from=""), MailKind.AUTO_REPLY, "null sender"),
    ("auto-reply beats precedence bulk", mail(("precedence", "bulk"), ("auto-submitted", "auto-replied")),
     MailKind.AUTO_REPLY, "auto-submitted: auto-replied"),
    # AUTO_REPLY: subjects
    ("out of office", mail(subject="Out of Office: Faktura"), MailKind.AUTO_REPLY, "subject: out of office"),
    ("out of the office", mail(subject="Out of the office until May 5"),
     MailKind.AUTO_REPLY, "subject: out of the office"),
    ("exchange english", mail(subject="Automatic reply: Nyaan"), MailKind.AUTO_REPLY, "subject: automatic reply"),
    ("lotus auto:", mail(subject="Auto: Faktura"), MailKind.AUTO_REPLY, "subject: auto"),
    ("danish autosvar", mail(subject="Autosvar: Faktura"), MailKind.AUTO_REPLY, "subject: autosvar"),
    ("danish exchange", mail(subject="Automatisk svar: [SAG-000123] Faktura"),
     MailKind.AUTO_REPLY, "subject: automatisk svar"),
    ("danish fraværende", mail(subject="Fraværende: Re: Faktura"), MailKind.AUTO_REPLY, "subject: fraværende"),
    ("danish fraværende upper", mail(subject="FRAVÆRENDE"), MailKind.AUTO_REPLY, "subject: fraværende"),
    ("danish ikke på kontoret", mail(subject="Ikke på kontoret"), MailKind.AUTO_REPLY, "subject: ikke på kontoret"),
    ("german", mail(subject="Abwesenheitsnotiz: Rechnung"), MailKind.AUTO_REPLY, "subject: abwesenheitsnotiz"),
    ("swedish", mail(subject="Automatiskt svar: Faktura"), MailKind.AUTO_REPLY, "subject: automatiskt svar"),
    ("autoreply", mail(subject="Autoreply"), MailKind.AUTO_REPLY, "subject: autoreply"),
    ("auto-reply", mail(subject="Auto-Reply: hi"), MailKind.AUTO_REPLY, "subject: auto-reply"),
    ("leading spaces", mail(subject="   Out  of   office"), MailKind.AUTO_REPLY, "subject: out of office"),
    # BULK
    ("gtube precedence junk", mail(("precedence", "junk"), subject="Test spam mail (GTUBE)"),
     MailKind.BULK, "precedence: junk"),
    ("precedence bulk", mail(("precedence", "Bulk")), MailKind.BULK, "precedence: bulk"),
    ("precedence list", mail(("precedence", "list")), MailKind.BULK, "precedence: list"),
    ("list-id", mail(("list-id", "Users <users.lists.example.org>")), MailKind.BULK, "list-id"),
    ("bulk beats x-ars", mail(("precedence", "bulk"), ("x-auto-response-suppress", "All")),
     MailKind.BULK, "precedence: bulk"),
    ("noreply", mail(from_addr="noreply@bank.example"), MailKind.BULK, "from: noreply"),
    ("no-reply", mail(from_addr="no-reply@bank.example"), MailKind.BULK, "from: noreply"),
    ("do-not-reply", mail(from_addr="do-not-reply@bank.example"), MailKind.BULK, "from: noreply"),
    ("donotreply", mail(from_addr="donotreply@bank.example"), MailKind.BULK, "from: noreply"),
    ("noreply token", mail(from_addr="info.noreply@bank.example"), MailKind.BULK, "from: noreply"),
    ("mailer-daemon without bounce evidence", mail(from_addr="mailer-daemon@mx.example.net"),
     MailKind.BULK, "from: mailer-daemon"),
    ("postmaster without bounce evidence", mail(from_addr="postmaster@example.net"),
     MailKind.BULK, "from: postmaster"),
    ("noreplyish person is normal", mail(from_addr="noreplyer@example.org"), MailKind.NORMAL, ""),
]


@pytest.mark.parametrize(("m", "kind", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rules(m: ParsedMail, kind: MailKind, reason: str) -> None:
    assert kind_and_reason(m) == (kind, reason)


def test_normal_is_not_automated_and_the_rest_are() -> None:
    assert not classify(BASE, OWN, OWN_DOMAIN).is_automated
    assert classify(mail(("precedence", "bulk")), OWN, OWN_DOMAIN).is_automated


def test_empty_message_id_domain_disables_the_message_id_rule() -> None:
    m = mail(message_id="<n@gateway.statens-adm.example>")
    assert classify(m, OWN, "").kind is MailKind.NORMAL


@pytest.mark.parametrize(
    ("m", "expected"),
    [
        # DSN: failed or 5.x.x, not delayed; Final-Recipient address type dropped; deduplicated.
        (mail(content_type="multipart/report", report_type="delivery-status", delivery_reports=DSN_REPORTS),
         ("gone@example.net", "full@example.net")),
        (mail(content_type="multipart/report", report_type="delivery-status", delivery_reports=(
            DeliveryReport("rfc822; Gone@Example.NET", "failed", "5.1.1"),
            DeliveryReport("gone@example.net", "failed", "5.1.1"),
            DeliveryReport("ok@example.net", "delivered", "2.0.0"))),
         ("gone@example.net",)),
        # A DSN that only reports a delay fails nobody, and the text is not consulted.
        (mail(content_type="multipart/report", report_type="delivery-status",
              delivery_reports=(DeliveryReport("slow@example.net", "delayed", "4.4.7"),),
              text="<other@example.net>:\n"), ()),
        (mail(("x-failed-recipients", "a@example.net, B@example.net")), ("a@example.net", "b@example.net")),
        # qmail / Yahoo: "<addr>:" lines before the copy of the message; the copy is never read.
        (mail(subject="failure notice", from_addr="mailer-daemon@mx.example.net",
              text="Hi. This is the qmail-send program.\nI'm afraid I wasn't able to deliver.\n\n"
                   "<kijitora@example.ne.jp>:\nSorry, 550 Unknown user kijitora@example.ne.jp\n\n"
                   "--- Below this line is a copy of the message.\n\nReturn-Path: <sender@example.jp>\n"
                   "<not-this@example.jp>:\n"),
         ("kijitora@example.ne.jp",)),
        # GMX quotes the address; Domino and Gmail indent it on a line of its own.
        (mail(subject="Mail delivery failed", from_addr="mailer-daemon@gmx.example",
              text='failed:\n\n"shironeko@example.jp":\nSMTP error from remote server\n'),
         ("shironeko@example.jp",)),
        (mail(subject="DELIVERY FAILURE: x", from_addr="postmaster@example.jp",
              text="Your message\n\n  Subject: Test\n\nwas not delivered to:\n\n  kijitora@example.jp\n"),
         ("kijitora@example.jp",)),
        # Addresses inside prose are not taken: too easy to name someone else.
        (mail(subject="Returned mail", from_addr="mailer-daemon@mx.example.net",
              text="Your mail to kijitora@example.jp could not be delivered.\n"), ()),
    ],
)
def test_bounced_recipients(m: ParsedMail, expected: tuple[str, ...]) -> None:
    result = classify(m, OWN, OWN_DOMAIN)
    assert result.kind is MailKind.BOUNCE
    assert result.bounced_recipients == expected


def test_only_bounces_name_recipients() -> None:
    m = mail(("auto-submitted", "auto-replied"), text="<someone@example.net>:\n")
    assert classify(m, OWN, OWN_DOMAIN).bounced_recipients == ()


# --- the corpus -------------------------------------------------------------------------------

CORPUS = Path(__file__).resolve().parent / "corpus"

# Where this classifier deliberately differs from a manifest kind expectation, and why. Every
# entry is still asserted: the test checks the kind named here instead. None at present: every
# is_bounce / is_autoreply expectation is met as stated.
DEVIATIONS: dict[str, tuple[MailKind, str]] = {}

# Manifest `bounce_status` values that are not the Status field of a DSN, and what we assert
# instead (None: the mail is no DSN at all, so it must carry no delivery report).
STATUS_DEVIATIONS: dict[str, tuple[str | None, str]] = {
    "autoreplies/sisimai_rfc3834-06.eml": (
        None,
        "an auto-reply (multipart/alternative, no delivery-status part); 5.0.921 is sisimai's own "
        "pseudo-code for reason 'suspend' and appears nowhere in the mail",
    ),
    "bounces/sisimai_lhost-postfix-39.eml": (
        "5.0.0",
        "the DSN says Status: 5.0.0; sisimai reads 5.6.0 out of the Diagnostic-Code prose, which "
        "DeliveryReport does not carry",
    ),
}


def _corpus_entries() -> list[dict[str, object]]:
    manifest = CORPUS / "manifest.json"
    if not manifest.exists():
        return []
    entries = json.loads(manifest.read_text())["entries"]
    return [
        e for e in entries
        if e["kind"] == "rfc822" and ("is_bounce" in e["expect"] or "is_autoreply" in e["expect"])
    ]


@pytest.mark.parametrize("entry", _corpus_entries(), ids=lambda e: str(e["file"]))
def test_corpus(entry: dict[str, object]) -> None:
    from gateway.pipeline.parse import parse_mail

    name = str(entry["file"])
    expect: dict[str, object] = entry["expect"]  # type: ignore[assignment]
    raw = (CORPUS / name).read_bytes()
    parsed = parse_mail(raw)
    result = classify(parsed, OWN, OWN_DOMAIN)

    if name in DEVIATIONS:
        assert result.kind is DEVIATIONS[name][0]
    else:
        if expect.get("is_bounce") is True:
            assert result.kind is MailKind.BOUNCE, result.reason
        if expect.get("is_bounce") is False:
            assert result.kind is not MailKind.BOUNCE, result.reason
        if expect.get("is_autoreply") is True:
            assert result.kind is MailKind.AUTO_REPLY, result.reason

    status = expect.get("bounce_status")
    if status is None:
        return
    if name in STATUS_DEVIATIONS:
        status = STATUS_DEVIATIONS[name][0]
        # The deviation's reason must stay true: the manifest's code is in the mail iff we say so.
        assert (str(expect["bounce_status"]).encode() in raw) is (status is not None)
        if status is None:
            assert result.kind is not MailKind.BOUNCE and not parsed.delivery_reports
            return
    assert result.kind is MailKind.BOUNCE
    failed = {r.recipient for r in parsed.delivery_reports if r.status == status}
    assert failed, f"no delivery report with status {status}"
    assert failed & set(result.bounced_recipients)


def test_corpus_is_there() -> None:
    # The corpus test above must never pass by collecting nothing.
    assert len(_corpus_entries()) >= 30
