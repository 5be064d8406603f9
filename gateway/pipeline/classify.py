"""Classify: is a parsed mail ordinary, or automated mail that must never open a case (rules §6)?

The rules run in the order of `RULES`; the first that recognises the mail wins. Bounces and
reports come before auto-replies because most DSNs also carry `Auto-Submitted`, and a bounce
is worth more than "automated": it names the recipient that failed. Auto-replies come before
bulk because an out-of-office often says `Precedence: bulk` too.

Pure: stdlib and `gateway.model` only. Header values reach us already decoded and the names
lower-cased (`gateway.pipeline.parse`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gateway.addresses import canonical, local_and_tag
from gateway.model import Classification, MailKind, ParsedMail


@dataclass(frozen=True, slots=True)
class _Own:
    addresses: frozenset[str]
    message_id_domain: str


Rule = Callable[[ParsedMail, _Own], Classification | None]

# Local parts that are machines, never people (catalogue 73).
_DAEMON_LOCAL = re.compile(r"^(?:mailer[-_.]?daemon|mail[-_.]?daemon|postmaster)$")
_DAEMON_NAME = re.compile(r"^(?:mailer[- ]daemon|mail delivery (?:subsystem|system|service))$", re.I)
_NOREPLY_LOCAL = re.compile(r"(?:^|[-_.+])(?:no[-_.]?reply|do[-_.]?not[-_.]?reply)(?:$|[-_.+])")

# Subjects of non-DSN bounces (Postfix, Sendmail, qmail, Exim, Exchange/Outlook in several
# languages, Domino, Gmail). Only trusted together with a machine sender, so a substring is enough.
_BOUNCE_SUBJECT = re.compile(
    r"undelivered mail returned to sender|delivery status notification|returned mail"
    r"|mail delivery failed|delivery failure|failure notice|undeliverable|undelivered mail"
    r"|delivery notification|mail failure|non remis|unzustellbar|onbestelbaar|olevererbart"
    r"|kan ikke leveres|kunne ikke leveres|ikke leveret|levering mislykkedes",
    re.I,
)

# Auto-reply subjects must START with the marker and the marker must end at a word boundary:
# "Fraværende: …" is an auto-reply, "Re: Fraværsregistrering" and "Fraværendeliste" are not.
_AUTOREPLY_SUBJECT = re.compile(
    r"^(?:out of (?:the )?office|automatic reply|automatisk svar|automatiskt svar|autosvar"
    r"|auto[- ]?reply|auto[- ]?response|auto:|fraværende|frånvarande|ikke på kontoret"
    r"|abwesenheitsnotiz|automatische antwort|automatisch antwoord|réponse automatique"
    r"|absence du bureau|automaattinen vastaus)(?!\w)",
    re.I,
)

_XARS_AUTOMATED = frozenset({"all", "oof", "autoreply"})
_FALSE_VALUES = frozenset({"", "no", "false", "0"})
_NULL_RETURN_PATH = frozenset({"", "<>", "<mailer-daemon>"})

# A bounce's own report ends where the returned copy of the original mail begins; addresses
# after that line are the original's headers and must never be taken for failed recipients.
_COPY_STARTS = re.compile(r"^\s*(?:-{2,}|\*{3,}|(?:received|return-path|message-id|from):)", re.I)
_ADDRESS_LINE = re.compile(r"^\s*[<\"]?([^\s<>\"@]+@[^\s<>\"@]+?)[>\"]?:?\s*$")
_MAX_TEXT_RECIPIENTS = 20


def classify(mail: ParsedMail, own_addresses: frozenset[str], own_message_id_domain: str) -> Classification:
    """The kind of `mail`; NORMAL when no rule recognises it as automated."""
    own = _Own(frozenset(_canonical_all(own_addresses)), own_message_id_domain.strip().lower())
    for rule in RULES:
        found = rule(mail, own)
        if found is not None:
            return found
    return Classification(MailKind.NORMAL)


# --- rules, in order ---------------------------------------------------------------------------


def _from_own_address(mail: ParsedMail, own: _Own) -> Classification | None:
    if mail.from_addr is None:
        return None
    base, _tag, domain = local_and_tag(mail.from_addr)
    if mail.from_addr in own.addresses or f"{base}@{domain}" in own.addresses:
        return Classification(MailKind.OWN, "from: own address")
    return None


def _delivery_status_report(mail: ParsedMail, own: _Own) -> Classification | None:
    # Some MTAs (msg_16 from UCLA) omit report-type; the delivery-status part still tells.
    if not _is_report(mail):
        return None
    report_type = (mail.report_type or "").strip().lower()
    if report_type == "delivery-status" or (not report_type and mail.delivery_reports):
        return Classification(MailKind.BOUNCE, "multipart/report delivery-status", _bounced_recipients(mail))
    return None


def _other_report(mail: ParsedMail, own: _Own) -> Classification | None:
    if not _is_report(mail):
        return None
    return Classification(MailKind.REPORT, f"multipart/report {mail.report_type or 'unknown'}".strip())


def _failed_recipients_header(mail: ParsedMail, own: _Own) -> Classification | None:
    # Exim and Gmail add X-Failed-Recipients to their bounces and to nothing else.
    if not mail.header_all("x-failed-recipients"):
        return None
    return Classification(MailKind.BOUNCE, "x-failed-recipients", _bounced_recipients(mail))


def _plain_text_bounce(mail: ParsedMail, own: _Own) -> Classification | None:
    # A bounce subject alone could be typed by a person; it needs a machine sender beside it.
    if not _BOUNCE_SUBJECT.search(mail.subject):
        return None
    if _is_daemon_sender(mail):
        return Classification(MailKind.BOUNCE, "daemon sender: bounce subject", _bounced_recipients(mail))
    if _has_null_sender(mail):
        return Classification(MailKind.BOUNCE, "null sender: bounce subject", _bounced_recipients(mail))
    return None


def _own_message_id(mail: ParsedMail, own: _Own) -> Classification | None:
    # One of our own notifications redirected back to us unchanged (a forwarding loop). Checked
    # after the bounce rules in case the local MTA stamps its DSNs with our domain.
    if not own.message_id_domain or not mail.message_id:
        return None
    domain = mail.message_id.strip().strip("<>").rpartition("@")[2].lower()
    if domain == own.message_id_domain:
        return Classification(MailKind.OWN, "message-id: own domain")
    return None


def _auto_submitted(mail: ParsedMail, own: _Own) -> Classification | None:
    for value in mail.header_all("auto-submitted"):
        keyword = _first_token(value)
        if keyword != "no":  # RFC 3834: every value but "no" marks automatic mail
            return Classification(MailKind.AUTO_REPLY, f"auto-submitted: {keyword or 'empty'}")
    return None


def _autoreply_headers(mail: ParsedMail, own: _Own) -> Classification | None:
    for name in ("x-autoreply", "x-autorespond", "x-autoresponder"):
        if any(_first_token(value) not in _FALSE_VALUES for value in mail.header_all(name)):
            return Classification(MailKind.AUTO_REPLY, f"{name}")
    return None


def _precedence_auto_reply(mail: ParsedMail, own: _Own) -> Classification | None:
    if "auto_reply" in _precedences(mail):
        return Classification(MailKind.AUTO_REPLY, "precedence: auto_reply")
    return None


def _autoreply_subject(mail: ParsedMail, own: _Own) -> Classification | None:
    match = _AUTOREPLY_SUBJECT.match(" ".join(mail.subject.split()))
    if match is None:
        return None
    return Classification(MailKind.AUTO_REPLY, f"subject: {match.group(0).lower().rstrip(':')}")


def _precedence_bulk(mail: ParsedMail, own: _Own) -> Classification | None:
    for value in ("bulk", "junk", "list"):
        if value in _precedences(mail):
            return Classification(MailKind.BULK, f"precedence: {value}")
    return None


def _mailing_list(mail: ParsedMail, own: _Own) -> Classification | None:
    if mail.header_all("list-id"):
        return Classification(MailKind.BULK, "list-id")
    return None


def _auto_response_suppress(mail: ParsedMail, own: _Own) -> Classification | None:
    # Exchange sets this on its own automatic mail. After the bulk rules: a newsletter that
    # also carries it is better called bulk.
    for value in mail.header_all("x-auto-response-suppress"):
        tokens = {token.strip().lower() for token in value.split(",")}
        hit = sorted(tokens & _XARS_AUTOMATED)
        if hit:
            return Classification(MailKind.AUTO_REPLY, f"x-auto-response-suppress: {hit[0]}")
    return None


def _null_sender(mail: ParsedMail, own: _Own) -> Classification | None:
    # RFC 5321 §4.5.5: the null reverse-path is for notifications; none of them is a person.
    if _has_null_sender(mail):
        return Classification(MailKind.AUTO_REPLY, "null sender")
    return None


def _machine_sender(mail: ParsedMail, own: _Own) -> Classification | None:
    if mail.from_addr is None:
        return None
    local = mail.from_addr.rpartition("@")[0]
    if _DAEMON_LOCAL.match(local):
        return Classification(MailKind.BULK, f"from: {local}")
    if _NOREPLY_LOCAL.search(local):
        return Classification(MailKind.BULK, "from: noreply")
    return None


RULES: tuple[Rule, ...] = (
    _from_own_address,
    _delivery_status_report,
    _other_report,
    _failed_recipients_header,
    _plain_text_bounce,
    _own_message_id,
    _auto_submitted,
    _autoreply_headers,
    _precedence_auto_reply,
    _autoreply_subject,
    _precedence_bulk,
    _mailing_list,
    _auto_response_suppress,
    _null_sender,
    _machine_sender,
)


# --- helpers -----------------------------------------------------------------------------------


def _is_report(mail: ParsedMail) -> bool:
    return mail.content_type.strip().lower() == "multipart/report"


def _first_token(value: str) -> str:
    """`auto-generated (failure)` → `auto-generated`; `Yes; x=1` → `yes`."""
    return re.split(r"[\s;(]", value.strip(), maxsplit=1)[0].lower()


def _precedences(mail: ParsedMail) -> set[str]:
    return {_first_token(value) for value in mail.header_all("precedence")}


def _has_null_sender(mail: ParsedMail) -> bool:
    # A known envelope (SMTP ingest) wins over any Return-Path the sender wrote itself; without
    # one (IMAP, pipe) the Return-Path was written by the delivering MTA and is trustworthy.
    if mail.envelope_from is not None:
        return mail.envelope_from.strip() in ("", "<>")
    return any(v.strip().lower() in _NULL_RETURN_PATH for v in mail.header_all("return-path"))


def _is_daemon_sender(mail: ParsedMail) -> bool:
    if mail.from_addr is not None and _DAEMON_LOCAL.match(mail.from_addr.rpartition("@")[0]):
        return True
    return bool(_DAEMON_NAME.match(mail.from_name.strip()))


def _canonical_all(addresses: Iterable[str]) -> list[str]:
    return [addr for addr in (canonical(a) for a in addresses) if addr]


def _bounced_recipients(mail: ParsedMail) -> tuple[str, ...]:
    """Failed recipients: from the DSN if there is one, else X-Failed-Recipients, else the text."""
    failed = [r.recipient for r in mail.delivery_reports if _is_failure(r.action, r.status)]
    if mail.delivery_reports:
        return _unique(_canonical_all(_strip_address_type(r) for r in failed))
    header = [part for value in mail.header_all("x-failed-recipients") for part in value.split(",")]
    if header:
        return _unique(_canonical_all(header))
    return _unique(_canonical_all(_addresses_in_bounce_text(mail.text)))


def _is_failure(action: str, status: str) -> bool:
    return action.strip().lower() == "failed" or status.strip().startswith("5")


def _strip_address_type(recipient: str) -> str:
    """`rfc822; user@example.org` → `user@example.org` (RFC 3464 address-type prefix)."""
    return recipient.rpartition(";")[2].strip()


def _addresses_in_bounce_text(text: str) -> list[str]:
    # Only lines that are nothing but an address ("<user@x>:", '"user@x":', "  user@x"), as
    # qmail, Postfix, Exim, GMX, Domino and Gmail print them, and only before the returned copy.
    found: list[str] = []
    for line in text[:20000].splitlines():
        if _COPY_STARTS.match(line):
            break
        match = _ADDRESS_LINE.match(line)
        if match:
            found.append(match.group(1))
        if len(found) >= _MAX_TEXT_RECIPIENTS:
            break
    return found


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))
