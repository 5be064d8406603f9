"""Notification mails: render the templates, then build the RFC 5322 bytes (rules §7).

Every value that came from a customer (case subject, display names, Message-IDs of their
mails) is made single-line and bounded before it reaches a header (catalogue 78).

The header section is encoded here and not by `email.headerregistry`: on CPython 3.11.7 the
registry decodes encoded-words found in plain `str` values (CVE-2024-6923: a subject holding
`=?utf-8?q?Sag=0ABcc:_x?=` serialises as a real `Bcc:` line) and its folder quotes long
addresses into `<"user@example.org">`. We encode with `email.header.Header` (RFC 2047, exact
round trip) and `EmailMessage` keeps and writes the finished lines as they are
(`_WrittenHeaders`), so the library never re-parses them. It still builds the MIME tree and
picks the boundary.
"""

from __future__ import annotations

import contextlib
import functools
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy as email_policy
from email.charset import Charset
from email.header import Header
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from urllib.parse import quote

import jinja2
import jinja2.bccache

from gateway.addresses import canonical
from gateway.errors import ConfigError, PermanentDeliveryError
from gateway.model import STATUS_LABELS_DA, STATUS_LABELS_EN, Event, Status
from gateway.settings import Settings
from gateway.tokens import link_token, reply_address

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "templates"
LANGUAGES = ("da", "en")
PARTS = ("subject.txt", "txt", "html")
SUBJECT_LIMIT = 200  # characters of the customer's subject kept in our Subject
NAME_LIMIT = 64  # characters of a display name kept in From/To/Reply-To
MAX_REFERENCES = 20
_LABELS = {"da": STATUS_LABELS_DA, "en": STATUS_LABELS_EN}
_AUTO_REPLIED = frozenset({Event.RECEIPT, Event.FOLLOWUP, Event.REJECTED})  # answers to a mail
_MSG_ID = re.compile(r"<[!-;=?-~]{1,250}@[!-;=?-~]{1,250}>")  # printable ASCII, no < > inside
_FOLD = "\r\n "
_LINE = 78


class _WrittenHeaders(email_policy.EmailPolicy):
    """`EmailPolicy` with header values kept as the strings they were set to, as `compat32` keeps
    them (its documented `header_store_parse`/`header_fetch_parse` hooks), and written as they
    are. Ours are encoded and folded already; the registry's parse and refold of every header,
    which we would only throw away, would be a large part of composing a mail. The library's own Content-*
    lines are short but for the root's Content-Type with its boundary, which is folded before
    its parameters (CRLF in place of the space after "; ": unfolding gives the same line)."""

    def header_store_parse(self, name: str, value: str) -> tuple[str, str]:  # type: ignore[override]
        return name, value

    def header_fetch_parse(self, name: str, value: str) -> str:  # type: ignore[override]
        return value

    def fold_binary(self, name: str, value: str) -> bytes:  # type: ignore[override]
        if name.lower().startswith("content-") and len(name) + 2 + len(value) > _LINE and "\n" not in value:
            value = value.replace("; ", ";" + _FOLD)
        return super().fold_binary(name, value)


_OUTPUT_POLICY = _WrittenHeaders(linesep="\r\n", refold_source="none")  # email.policy.SMTP, unparsed
_UTF8_POLICY = _OUTPUT_POLICY.clone(utf8=True)
_UTF8_CHARSET = Charset("utf-8")


@dataclass(frozen=True)
class Notice:
    """One notification to one recipient. `case_number` is "" for `rejected` (no case)."""

    event: Event
    language: str
    case_number: str
    case_subject: str
    status: Status
    previous_status: Status | None
    recipient_email: str
    recipient_name: str
    message_id: str  # ours, with <>
    thread_ids: tuple[str, ...]  # earlier Message-IDs of the case thread, oldest first, with <>
    follows_number: str | None = None
    actor_name: str | None = None
    reason: str | None = None  # kept for the record; never rendered (catalogue 84)
    link: str | None = None  # password_link: the link's selector; the mail gets the signed link
    link_purpose: str | None = None  # password_link: register | reset


@dataclass(frozen=True)
class RenderedMail:
    subject: str
    text: str
    html: str


# --- header safety ------------------------------------------------------------------------


def header_text(value: str, limit: int = SUBJECT_LIMIT) -> str:
    """One line of text that is safe in any header: no controls, no line breaks, bounded."""
    kept = []
    for ch in value:
        category = unicodedata.category(ch)
        if category in ("Cc", "Zl", "Zp"):
            kept.append(" ")  # CR, LF, U+0085, U+2028, U+2029, tabs: a word break, not glue
        elif category not in ("Cf", "Cs", "Co", "Cn"):  # bidi overrides, lone surrogates
            kept.append(ch)
    text = " ".join("".join(kept).split())
    # A literal "=?" would be read as an encoded-word by the recipient's client, or by
    # the stdlib on re-parse (CVE-2024-6923); a space makes it plain text again.
    text = text.replace("=?", "= ?")
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


def _unstructured(name: str, text: str) -> str:
    """RFC 2047 value for Subject: the leading ASCII words (our case tag) stay readable.

    Exactly two chunks: `Header` joins more than two ASCII/encoded chunks with the spaces
    at the seams lost or doubled, while this form decodes back to the exact text.
    """
    words = text.split(" ")
    ascii_words = next((i for i, word in enumerate(words) if not word.isascii()), len(words))
    while 0 < ascii_words < len(words) and words[ascii_words - 1][-1:] in ("(", ")", "\\"):
        ascii_words -= 1  # Header takes these as a seam and would drop the space after them
    header = Header(header_name=name, maxlinelen=_LINE)
    if ascii_words:
        header.append(" ".join(words[:ascii_words]), "us-ascii")
    if ascii_words < len(words):
        header.append(" ".join(words[ascii_words:]), "utf-8")
    value = header.encode(splitchars=" ", linesep="\r\n")  # fold only where a space is
    # A first word too long for line one leaves that line empty, which adds a leading space.
    return value.removeprefix(_FOLD)


def _phrase(name: str) -> str:
    """A display name as one quoted-string or one encoded-word.

    One encoded-word on purpose: decoders disagree on the space between adjacent ones in a
    phrase, so a name that would need two is shortened until it fits in one.
    """
    name = header_text(name, NAME_LIMIT)
    if not name:
        return ""
    if name.isascii():
        return '"' + re.sub(r'(["\\])', r"\\\1", name) + '"'
    while len(word := _UTF8_CHARSET.header_encode(name)) > 75:
        name = name[:-2].rstrip() + "…"
    return word


def _mailbox(header: str, name: str, address: str) -> str:
    phrase = _phrase(name)
    if not phrase:
        return address
    fits = len(header) + 2 + len(phrase) + len(address) + 3 <= _LINE
    return f"{phrase}{' ' if fits else _FOLD}<{address}>"


def _address(address: str) -> str:
    """The canonical addr-spec, or PermanentDeliveryError: such a recipient can never work."""
    checked = canonical(address) if "\r" not in address and "\n" not in address else None
    if checked is None:
        raise PermanentDeliveryError("recipient is not a plain e-mail address")
    return checked


def _msg_ids(values: tuple[str, ...]) -> list[str]:
    """Well-formed ids only (thread ids partly come from customers' clients)."""
    return [v for v in (x.strip() for x in values) if _MSG_ID.fullmatch(v) and "=?" not in v]


def _references(thread_ids: tuple[str, ...]) -> list[str]:
    ids = _msg_ids(thread_ids)
    if len(ids) > MAX_REFERENCES:
        ids = [ids[0], *ids[-(MAX_REFERENCES - 1):]]  # keep the root: clients thread on it
    return ids


# --- rendering -----------------------------------------------------------------------------


def _plural_days(days: int, language: str) -> str:
    if language == "da":
        return f"{days} dag" if days == 1 else f"{days} dage"
    return f"{days} day" if days == 1 else f"{days} days"


class QuietBytecodeCache(jinja2.FileSystemBytecodeCache):
    """jinja2's cache of compiled templates, which is only a speed-up: a full or read-only disk,
    or a damaged cache file, means compiling in memory, never a daemon that cannot start."""

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        with contextlib.suppress(OSError):
            super().dump_bytecode(bucket)

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        try:
            super().load_bytecode(bucket)
        except (OSError, EOFError, ValueError, TypeError):
            bucket.reset()


@functools.lru_cache(maxsize=1)
def _bytecode_cache() -> jinja2.BytecodeCache | None:
    try:
        return QuietBytecodeCache()  # jinja2 checks the folder is the user's own, mode 0700
    except (OSError, RuntimeError):
        return None  # no usable temp folder: compile each time


class Renderer:
    """Renders and composes notifications; built once at start-up."""

    def __init__(self, templates_dir: Path, settings: Settings,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._settings = settings
        self._clock = clock
        self._envs = {lang: self._environment(templates_dir / lang) for lang in LANGUAGES}
        self._load_all()

    @staticmethod
    @functools.lru_cache(maxsize=8)
    def _environment(directory: Path) -> jinja2.Environment:
        # One environment per folder and process, and compiled templates kept in jinja2's own
        # per-user cache folder, so that no command compiles the templates anew. auto_reload off,
        # as for the portal's pages: the templates ship with the code, and each part of every
        # notification cost a stat() of its file.
        return jinja2.Environment(
            loader=jinja2.FileSystemLoader(directory), auto_reload=False,
            bytecode_cache=_bytecode_cache(),
            undefined=jinja2.StrictUndefined,
            autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",),
                                                default_for_string=False),
            trim_blocks=True,
            lstrip_blocks=True,
        )

    def _load_all(self) -> None:
        """Fail at start-up, not at the first notification, when a template is missing or broken."""
        for lang, env in self._envs.items():
            for event in Event:
                for part in PARTS:
                    try:
                        env.get_template(f"{event.value}.{part}.j2")
                    except jinja2.TemplateError as exc:
                        raise ConfigError(f"template {lang}/{event.value}.{part}.j2: {exc}") from exc

    def _language(self, notice: Notice) -> str:
        return notice.language if notice.language in LANGUAGES else self._settings.policy.language

    def _case_url(self, number: str) -> str:
        return f"{self._settings.portal.url.rstrip('/')}/sager/{quote(number, safe='')}"

    def _context(self, notice: Notice, language: str) -> dict[str, object]:
        labels = _LABELS[language]
        previous = notice.previous_status
        return {
            "language": language,
            "event": notice.event.value,
            "case_number": notice.case_number,
            "tag": f"[{notice.case_number}]" if notice.case_number else "",
            "case_subject": header_text(notice.case_subject),
            "status": notice.status.value,
            "status_label": labels[notice.status],
            "previous_status_label": labels[previous] if previous else None,
            "case_url": self._case_url(notice.case_number),
            "portal_url": self._settings.portal.url.rstrip("/"),
            "recipient_name": header_text(notice.recipient_name, NAME_LIMIT),
            "actor_name": header_text(notice.actor_name, NAME_LIMIT) if notice.actor_name else None,
            "follows_number": notice.follows_number,
            "close_after": _plural_days(self._settings.policy.close_after_days, language),
            "link_url": self._link_url(notice.link) if notice.link else None,
            "link_purpose": notice.link_purpose,
            "link_minutes": self._settings.portal.link_minutes,
        }

    def _link_url(self, selector: str) -> str:
        """The portal's single-use link, signed only now: the outbox row holds its selector alone."""
        token = link_token(self._settings.mail.reply_token_secret, selector)
        return f"{self._settings.portal.url.rstrip('/')}/link/{token}"

    def render(self, notice: Notice) -> RenderedMail:
        language = self._language(notice)
        env, context = self._envs[language], self._context(notice, language)
        name = notice.event.value
        subject = header_text(env.get_template(f"{name}.subject.txt.j2").render(context), 400)
        if context["tag"]:
            subject = f"{context['tag']} {subject}"  # first, so "Re: [SAG-…]" threads (rules §5)
        context["subject"] = subject
        text = env.get_template(f"{name}.txt.j2").render(context).strip() + "\n"
        html = env.get_template(f"{name}.html.j2").render(context).strip() + "\n"
        return RenderedMail(subject, text, html)

    def envelope_from(self) -> str:
        """The bounce address (MAIL FROM) for every notification."""
        return self._settings.mail.from_address

    def compose(self, notice: Notice) -> bytes:
        """The whole message (CRLF line ends) for one recipient.

        `EmailMessage` builds the MIME tree, so the generator picks the boundary: random, and
        checked against the encoded parts (a customer's subject inside the body can never
        end a part). Our header lines go in with `set_raw`, never through the registry.
        """
        rendered = self.render(notice)
        recipient = _address(notice.recipient_email)
        msg = EmailMessage(policy=_OUTPUT_POLICY)
        for name, value in self._headers(notice, rendered, recipient):
            msg.set_raw(name, value)
        msg.set_content(rendered.text, cte="quoted-printable")
        msg.add_alternative(rendered.html, subtype="html", cte="quoted-printable")
        msg.set_raw("Content-Language", self._language(notice))  # after: multipart moves Content-*
        # SMTPUTF8 only for a non-ASCII address, which goes out as UTF-8 (RFC 6532).
        return msg.as_bytes(policy=_OUTPUT_POLICY if recipient.isascii() else _UTF8_POLICY)

    def _headers(self, notice: Notice, rendered: RenderedMail, recipient: str) -> list[tuple[str, str]]:
        mail = self._settings.mail
        if not _MSG_ID.fullmatch(notice.message_id):
            raise ValueError(f"not a Message-ID of ours: {notice.message_id!r}")
        headers = [
            ("From", _mailbox("From", mail.from_name, mail.from_address)),
            ("To", _mailbox("To", notice.recipient_name, recipient)),
        ]
        if notice.case_number:  # `rejected` has no case to reply into
            token_address = reply_address(mail.reply_token_secret, mail.from_address, notice.case_number)
            headers.append(("Reply-To", _mailbox("Reply-To", mail.from_name, token_address)))
        headers += [
            ("Subject", _unstructured("Subject", rendered.subject)),
            ("Date", format_datetime(self._clock())),
            ("Message-ID", notice.message_id),
        ]
        references = _references(notice.thread_ids)
        if references:
            headers.append(("In-Reply-To", references[-1]))
            headers.append(("References", _FOLD.join(references)))
        auto = "auto-replied" if notice.event in _AUTO_REPLIED else "auto-generated"
        headers += [("Auto-Submitted", auto), ("X-Auto-Response-Suppress", "All")]
        return headers


# --- sample for `gateway render` -------------------------------------------------------------


def sample_notice(event: Event, language: str) -> Notice:
    """A realistic notice for previews and tests."""
    statuses = {Event.STATUS: (Status.AFVENTER_REKVIRENT, Status.TILDELT),
                Event.REOPENED: (Status.TILDELT, Status.UDFOERT)}
    status, previous = statuses.get(event, (Status.REGISTRERET, None))
    rejected = event in (Event.REJECTED, Event.PASSWORD_LINK)
    return Notice(
        event=event, language=language,
        case_number="" if rejected else "SAG-000123",
        case_subject="Adgang til lønsystemet virker ikke",
        status=status, previous_status=previous,
        recipient_email="soeren.hansen@kommune.example", recipient_name="Søren Hansen",
        message_id="<sag-000123.1.a1b2c3@gateway.statens-adm.example>",
        thread_ids=("<CAF=x1y2z3@mail.kommune.example>",),
        follows_number="SAG-000098" if event is Event.FOLLOWUP else None,
        actor_name="Mette Jensen" if event in (Event.SHARED, Event.REOPENED) else None,
        link="q1w2e3r4t5y6u7i8o9p0aa" if event is Event.PASSWORD_LINK else None,
        link_purpose="register" if event is Event.PASSWORD_LINK else None,
    )


def render_sample(event: Event | str, lang: str, settings: Settings,
                  templates_dir: Path = TEMPLATES_DIR) -> str:
    """Subject, text and HTML of a sample notification, for `gateway render EVENT --lang`."""
    rendered = Renderer(templates_dir, settings).render(sample_notice(Event(event), lang))
    return (f"Subject: {rendered.subject}\n\n--- text/plain ---\n{rendered.text}\n"
            f"--- text/html ---\n{rendered.html}")
