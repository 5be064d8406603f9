"""Parse one raw mail into a `ParsedMail`, once (rules §5).

The standard library's parser reads the MIME structure; mail-parser's address parser reads
the From header (`headers.senders`). Its whole `MailParser` is not run: it decodes every part
and attachment again and parses every address, date and Received header, and only its From
was read (a third of a 20 KB mail's parse). Attachments are written to the blob store one at
a time while the message is walked and their payloads dropped, so a 25 MB attachment is never
held in several decoded copies.

`precheck` runs on the bytes *before* any parsing: parser bombs (catalogue 38–41) are
refused for the price of a few `bytes.count` calls.
"""

from __future__ import annotations

import binascii
import email
import email.header
import email.message
import email.parser
import email.policy
import hashlib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from gateway.addresses import canonical
from gateway.errors import UnusableMail
from gateway.model import DeliveryReport, ParsedMail, StoredAttachment
from gateway.pipeline import headers as h
from gateway.pipeline.charsets import DEFAULT_FALLBACKS, decode_text, lf_line_ends
from gateway.pipeline.htmltext import html_to_text, sanitize_html
from gateway.pipeline.names import attachment_display_name
from gateway.pipeline.reply import split_reply

BlobSink = Callable[[Iterable[bytes]], str]  # stores byte chunks, returns their sha256
# Matched on a lower-cased copy: a case-insensitive pattern cannot use the fast literal scan
# (it was a tenth of the parse step on 150 KB mails); the value is then cut from the original.
_BOUNDARY = re.compile(rb'boundary\s*=\s*"?([^";\r\n]{1,200})')
# Machine-readable report parts are kept for staff as text files (nothing hidden, catalogue 44).
_REPORT_NAMES = {"message/delivery-status": "Delivery report.txt",
                 "message/global-delivery-status": "Delivery report.txt",
                 "message/disposition-notification": "Disposition notification.txt",
                 "text/rfc822-headers": "Original headers.txt"}


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int = 65536
    max_header_line_bytes: int = 8192
    max_mime_parts: int = 500
    max_mime_depth: int = 100
    # Tried, in order, for text that declares no charset or a wrong one (pipeline/charsets.py).
    charset_fallbacks: tuple[str, ...] = DEFAULT_FALLBACKS


def normalise(raw: bytes) -> bytes:
    """Tolerate what real stores hand us: leading blank lines, classic-Mac CR-only endings."""
    raw = raw.lstrip(b"\r\n")
    if b"\n" not in raw[:65536] and b"\r" in raw:
        raw = raw.replace(b"\r", b"\n")
    return raw


def header_block(raw: bytes) -> bytes:
    ends = [i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0]
    return raw[: min(ends)] if ends else raw


def precheck(raw: bytes, limits: Limits) -> str | None:
    """Why a mail is too dangerous to parse, or None. Cheap: byte scans only."""
    head = header_block(raw)
    if len(head) > limits.max_header_bytes:
        return f"header block over {limits.max_header_bytes} bytes"
    if _longest_header(head) > limits.max_header_line_bytes:
        return f"a header over {limits.max_header_line_bytes} bytes"
    boundaries = {raw[m.start(1):m.end(1)] for m in _BOUNDARY.finditer(raw.lower())}
    if len(boundaries) > limits.max_mime_depth:
        return f"more than {limits.max_mime_depth} nested or distinct MIME boundaries"
    parts = sum(raw.count(b"\n--" + b) for b in boundaries)
    if parts > limits.max_mime_parts:
        return f"more than {limits.max_mime_parts} MIME parts"
    return None


def _longest_header(head: bytes) -> int:
    longest = current = 0
    for line in head.splitlines():
        current = current + len(line) if line[:1] in (b" ", b"\t") else len(line)
        longest = max(longest, current)
    return longest


# The end of the header block as the stdlib parser reads lines (ended by CRLF, CR or LF): the
# first line that is only its line end.
_FIRST_EMPTY_LINE = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")
# A header block that may declare parts (multipart/*, message/*) is parsed whole at once.
_MAY_HAVE_PARTS = re.compile(rb"multipart|message/", re.IGNORECASE)


def _parse_bytes(raw: bytes, chunk: int = 65536) -> email.message.Message:
    """The stdlib parser. A mail of one part (neither multipart nor message/*) gets the parser's
    headers and, as its body, the rest of the bytes as that parser would have joined them: it
    reads a body a line at a time in Python, a third of the parse of a 20 KB text mail. What
    the header block alone does not settle cleanly (a defect, a body line among the headers)
    is parsed whole."""
    end = _FIRST_EMPTY_LINE.search(raw)
    if end is not None and not _MAY_HAVE_PARTS.search(raw, 0, end.end()):
        head = email.parser.BytesFeedParser(policy=email.policy.compat32)
        head.feed(raw[:end.end()])
        message = head.close()
        if not message.defects and not message.get_payload() and message.get_content_maintype() not in (
                "multipart", "message"):
            message.set_payload(raw[end.end():].decode("ascii", "surrogateescape"))
            return message
    return _parse_whole(raw, chunk)


def _parse_whole(raw: bytes, chunk: int) -> email.message.Message:
    """Fed in chunks: fed at once the parser splits the whole mail into lines first, several
    times the mail in memory; fed in 64 KB chunks it needs far less."""
    parser = email.parser.BytesFeedParser(policy=email.policy.compat32)
    view = memoryview(raw)
    for start in range(0, len(raw), chunk):
        parser.feed(bytes(view[start:start + chunk]))
    return parser.close()


def parse_mail(raw: bytes, blobs: BlobSink | None = None, limits: Limits | None = None,
               envelope_from: str | None = None, envelope_to: tuple[str, ...] = ()) -> ParsedMail:
    """Decode a raw mail. Raises UnusableMail for input that can never be understood."""
    raw = normalise(raw)
    limits = limits or Limits()
    reason = precheck(raw, limits)
    if reason:
        raise UnusableMail(reason)
    try:
        message = _parse_bytes(raw)
        attachments, report = _extract_parts(message, blobs)
    except RecursionError as exc:
        raise UnusableMail(f"MIME structure cannot be parsed: {type(exc).__name__}") from exc
    try:
        defects = {type(defect).__name__ for part in message.walk() for defect in part.defects}
    except RecursionError as exc:
        raise UnusableMail("MIME structure nested too deeply") from exc
    return _build(message, defects, attachments, report, blobs, envelope_from, envelope_to,
                  limits.charset_fallbacks)


def _build(message: email.message.Message, defects: set[str],
           attachments: list[StoredAttachment], report: _Report, blobs: BlobSink | None,
           envelope_from: str | None, envelope_to: tuple[str, ...], fallbacks: tuple[str, ...]) -> ParsedMail:
    headers = h.decoded_headers(message)
    senders = h.senders(message, fallbacks, defects)
    plain, htmls = _body_texts(message, fallbacks)
    html = "\n".join(htmls) or None
    text = "\n".join(plain)
    if not text.strip() and html:
        text = html_to_text(html)
    hidden = _hidden_texts(message)
    if hidden and not text.strip():
        text, hidden = "\n".join(hidden), []
    text, uuencoded = extract_uuencoded(text, blobs, len(attachments))
    if hidden:  # beside a readable body: kept as a file for staff, never mixed into the comment
        data = "\n\n".join(hidden).encode("utf-8", "surrogateescape")  # undecodable bytes as they came
        sha = blobs([data]) if blobs is not None else _sha256([data])
        uuencoded.append(StoredAttachment("Hidden text.txt", len(data), sha, "text/plain"))
    # No NUL, the line ends the reply's split and the stored comment use, no blank lines around.
    # `replace` copies the whole text even when it finds nothing: each runs only when needed.
    if "\x00" in text:
        text = text.replace("\x00", "")
    text = lf_line_ends(text).strip()  # what every reader of it took
    new_text, signature = split_reply(text) if text else ("", "")
    if new_text == text:  # one object: pickled to the worker once, compared there by identity
        new_text = text
    return ParsedMail(
        message_id=h.first_id(message.get("Message-ID")),
        subject=h.clean_line(h.subject(message, fallbacks), h.MAX_HEADER_VALUE),
        from_addr=senders[0][1] if len(senders) == 1 else None,
        from_name=h.clean_line(senders[0][0], 200) if senders else "",
        from_count=len(senders),
        reply_to=h.addresses(message, "Reply-To"),
        to=h.addresses(message, "To"),
        cc=h.addresses(message, "Cc"),
        in_reply_to=h.ids(list(message.get_all("In-Reply-To", []))),
        references=h.ids(list(message.get_all("References", []))),
        date=h.date(message.get("Date")),
        headers=headers,
        content_type=message.get_content_type(),
        text=text,
        html=sanitize_html(html) if html else None,
        attachments=tuple(attachments + uuencoded),
        defects=tuple(sorted(defects)),
        report_type=report.report_type,
        delivery_reports=tuple(report.deliveries or ()),
        original_message_id=report.original_message_id,
        envelope_from=envelope_from,
        envelope_to=envelope_to,
        new_text=new_text,
        signature=signature,
    )


# --- parts -------------------------------------------------------------------------------


def _body_texts(message: email.message.Message, fallbacks: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The readable text/plain and text/html parts, decoded from bytes with their charset.

    Parts inside an attachment (a forwarded message/rfc822 with a filename, a container marked
    attachment) are not body text; a named inline text part is both body and attachment. An
    HTML part outside any multipart/alternative is content of its own, not another rendering of
    a plain part: beside plain parts, its text takes its place among them.
    """
    parts: list[tuple[str, str, bool]] = []  # (subtype, text, inside a multipart/alternative)
    blocked: set[int] = set()
    alternative: set[int] = set()
    for part in message.walk():
        if id(part) in blocked:
            if part.is_multipart():
                blocked.update(id(p) for p in _children(part))
            continue
        disposition = (part.get_content_disposition() or "").lower()
        if part.is_multipart():
            if disposition == "attachment" or (part.get_content_type() == "message/rfc822" and _filename(part)):
                blocked.update(id(p) for p in _children(part))
            elif id(part) in alternative or part.get_content_type() == "multipart/alternative":
                alternative.update(id(p) for p in _children(part))
            continue
        ctype = part.get_content_type()
        if ctype in ("text/plain", "text/html") and disposition != "attachment":
            parts.append((ctype[5:], _text_of(part, fallbacks), id(part) in alternative))
        elif part.get_content_maintype() == "multipart":  # boundary never found: show what is there
            parts.append(("plain", _text_of(part, fallbacks), False))
    parts = [p for p in parts if p[1].strip()]
    html = [text for kind, text, _ in parts if kind == "html"]
    if not any(kind == "plain" for kind, _, _ in parts):
        return [], html
    return [text if kind == "plain" else html_to_text(text) for kind, text, inside in parts
            if kind == "plain" or not inside], html


# The notices mail programs put before the first part for readers without MIME.
_MIME_BOILERPLATE = re.compile(r"(>\s*)?(this is an? [\w/ -]{0,40}message|this message is in mime format"
                               r"|denne meddelelse er i mime-format)", re.IGNORECASE)


def _hidden_texts(message: email.message.Message) -> list[str]:
    """Text outside every part, before the first boundary or after the last: mail programs
    do not show it, staff must see it (catalogue 44). The usual MIME notice is not text."""
    found = []
    for part in message.walk():
        if part.is_multipart():
            for value in (part.preamble or "", part.epilogue or ""):
                text = " ".join(value.split())
                if text and not (len(text) <= 300 and _MIME_BOILERPLATE.match(text)):
                    found.append(value.strip())
    return found


def _children(part: email.message.Message) -> list[email.message.Message]:
    payload = part.get_payload()
    return [p for p in payload if isinstance(p, email.message.Message)] if isinstance(payload, list) else []


def _text_of(part: email.message.Message, fallbacks: tuple[str, ...]) -> str:
    data = part.get_payload(decode=True) or b""
    if not isinstance(data, bytes):
        return str(data)
    return decode_text(data, part.get_content_charset(), fallbacks)


@dataclass
class _Report:
    report_type: str | None = None
    deliveries: list[DeliveryReport] | None = None
    original_message_id: str | None = None

    def __post_init__(self) -> None:
        self.deliveries = self.deliveries or []


def _extract_parts(message: email.message.Message, blobs: BlobSink | None
                   ) -> tuple[list[StoredAttachment], _Report]:
    report = _Report()
    if message.get_content_type() == "multipart/report":
        report.report_type = (message.get_param("report-type") or "").lower() or None  # type: ignore[union-attr]
    attachments: list[StoredAttachment] = []
    for part in message.walk():
        ctype = part.get_content_type()
        if ctype in ("message/delivery-status", "message/global-delivery-status"):
            report.deliveries = _delivery_status(part)
        if ctype in ("message/rfc822", "text/rfc822-headers") and report.report_type:
            report.original_message_id = report.original_message_id or _inner_message_id(part)
        if _is_attachment(part):
            stored = _store(part, blobs, len(attachments) + 1)
            if stored is not None:
                attachments.append(stored)
    return attachments, report


def _filename(part: email.message.Message) -> str | None:
    try:
        return part.get_filename()
    except (ValueError, LookupError, UnicodeError):
        return None


def _is_attachment(part: email.message.Message) -> bool:
    if part.get_content_type() in _REPORT_NAMES:
        return True
    if part.is_multipart() and part.get_content_type() != "message/rfc822":
        return False
    disposition = (part.get_content_disposition() or "").lower()
    ctype = part.get_content_type()
    if ctype in ("text/plain", "text/html") and disposition != "attachment":
        return bool(_filename(part))  # a named inline text part is both body and attachment
    return disposition == "attachment" or bool(part.get_filename()) or ctype.split("/")[0] in (
        "image", "application", "audio", "video", "message", "model", "font") or ctype == "text/calendar"


def _store(part: email.message.Message, blobs: BlobSink | None, index: int) -> StoredAttachment | None:
    data: bytes | Iterator[bytes]
    if part.get_content_type() in _REPORT_NAMES:
        payload = part.get_payload()
        blocks = payload if isinstance(payload, list) else [payload]
        data = b"\n".join(b.as_bytes() if isinstance(b, email.message.Message) else str(b).encode("utf-8", "replace")
                          for b in blocks)
        name = _REPORT_NAMES[part.get_content_type()]
    elif part.get_content_type() == "message/rfc822":
        inner = part.get_payload(0) if part.is_multipart() else None
        data = inner.as_bytes() if isinstance(inner, email.message.Message) else b""
        fallback = h.decode(inner.get("Subject", "")) if isinstance(inner, email.message.Message) else ""
        name = f"{fallback or 'message'}.eml"
    elif _is_big_base64(part):
        data = _base64_chunks(part)  # decoded piece by piece into the blob store
        name = ""
    else:
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        name = ""
    display = attachment_display_name(_shown_name(part) or name, part.get_content_type(), index)
    sized = _Counted(data)
    sha = blobs(sized) if blobs is not None else _sha256(sized)
    if not part.is_multipart() and part.get_content_maintype() != "text":
        part.set_payload("")  # drop the encoded copy: the blob store has the bytes now
    inline = (part.get_content_disposition() or "") == "inline" and bool(part.get("Content-ID"))
    return StoredAttachment(display, sized.size, sha, part.get_content_type(), inline)


def _shown_name(part: email.message.Message) -> str:
    """The part's file name for people: RFC 2047 words decoded, and a name sent as raw 8-bit
    bytes read like a raw 8-bit subject (UTF-8 first). The email package would show those
    bytes as U+FFFD; its raw header keeps them, so the header is read first, then parsed."""
    raw = {k.lower(): str(v) for k, v in part.raw_items() if k.lower() in ("content-type", "content-disposition")}
    if any(not value.isascii() for value in raw.values()):
        readable = email.message.Message()
        for key, value in raw.items():
            readable[key] = h.guess_8bit(value) if not value.isascii() else value
        part = readable
    filename = _filename(part) or ""
    return h.decode(filename) if "=?" in filename else filename


class _Counted:
    """Bytes, or an iterator of byte chunks, that remembers how many bytes went through."""

    def __init__(self, data: bytes | Iterator[bytes]) -> None:
        self._data = data
        self.size = len(data) if isinstance(data, bytes) else 0

    def __iter__(self) -> Iterator[bytes]:
        if isinstance(self._data, bytes):
            yield self._data
            return
        for chunk in self._data:
            self.size += len(chunk)
            yield chunk


def _is_big_base64(part: email.message.Message) -> bool:
    payload = part.get_payload()
    return (isinstance(payload, str) and len(payload) > 1_000_000
            and str(part.get("Content-Transfer-Encoding", "")).strip().lower() == "base64")


def _base64_chunks(part: email.message.Message, lines: int = 4096) -> Iterator[bytes]:
    """Decode a big base64 body a few thousand lines at a time, never holding it twice."""
    payload = str(part.get_payload())
    start = 0
    while start < len(payload):
        end = payload.find("\n", start + 76 * lines)
        end = len(payload) if end < 0 else end + 1
        piece = payload[start:end].encode("ascii", "ignore")
        try:
            yield binascii.a2b_base64(piece)
        except binascii.Error:
            yield binascii.a2b_base64(piece + b"==")  # a broken last line: take what decodes
        start = end


def _sha256(data: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in data:
        digest.update(chunk)
    return digest.hexdigest()


def _delivery_status(part: email.message.Message) -> list[DeliveryReport]:
    blocks = part.get_payload()
    if not isinstance(blocks, list):
        blocks = [email.message_from_string(str(blocks))]
    out = []
    for block in blocks[1:] if len(blocks) > 1 else blocks:
        if not isinstance(block, email.message.Message):
            continue
        # Original-Recipient is the address we sent to (our user); Final-Recipient may be a rewrite.
        recipient = str(block.get("Original-Recipient") or block.get("Final-Recipient") or "")
        address = canonical(recipient.split(";", 1)[-1].strip())
        if address:
            out.append(DeliveryReport(address, str(block.get("Action", "")).strip().lower(),
                                      str(block.get("Status", "")).strip().split(" ")[0]))
    return out[:100]


def _inner_message_id(part: email.message.Message) -> str | None:
    """The Message-ID of the returned mail in a report: its message/rfc822 part, or the headers
    of a text/rfc822-headers part."""
    if part.get_content_type() == "message/rfc822":
        inner = part.get_payload(0) if part.is_multipart() else None
        return h.first_id(inner.get("Message-ID")) if isinstance(inner, email.message.Message) else None
    headers = email.message_from_string(str(part.get_payload())[:65536])
    return h.first_id(headers.get("Message-ID"))


_UU_BLOCK = re.compile(r"^begin [0-7]{3,4} ([^\n]{1,255})\n(.*?)^end$", re.MULTILINE | re.DOTALL)


def extract_uuencoded(text: str, blobs: BlobSink | None, index: int) -> tuple[str, list[StoredAttachment]]:
    """Files some clients (Lotus Notes) embed uuencoded in a text body become attachments."""
    if "begin " not in text:
        return text, []
    found: list[StoredAttachment] = []

    def take(match: re.Match[str]) -> str:
        data = bytearray()
        for line in match.group(2).splitlines():
            try:
                data += binascii.a2b_uu(line.encode("latin-1", "replace"))
            except binascii.Error:
                continue
        name = attachment_display_name(match.group(1).strip(), "application/octet-stream", index + len(found) + 1)
        sha = blobs([bytes(data)]) if blobs is not None else _sha256([bytes(data)])
        found.append(StoredAttachment(name, len(data), sha, "application/octet-stream"))
        return ""

    return _UU_BLOCK.sub(take, text[:5_000_000]), found
