"""Decoding the header section of a parsed mail, bounded (part of the parse step, pure).

Values are decoded from RFC 2047 (repairing bad base64 padding), raw 8-bit bytes are given a
charset by a bounded guess, and every value is capped before it is decoded, so a header can
never cost more than its cap (catalogue 40).
"""

from __future__ import annotations

import email.message
import re
from datetime import datetime
from email.header import decode_header
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import Any

from mailparser.utils import get_addresses

from gateway.addresses import CACHED_CHARS, canonical, mailboxes
from gateway.pipeline.charsets import DEFAULT_FALLBACKS, decode_text, without_surrogates

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u2028\u2029\u0085]")
_MSGID = re.compile(r"<[^<>\s]{1,500}>")
MAX_HEADERS = 300
MAX_HEADER_VALUE = 4000



def declared(message: email.message.Message) -> str | None:
    for part in message.walk():
        if part.get_content_maintype() == "text" and part.get_content_charset():
            return part.get_content_charset()
    return None


def body_bytes(message: email.message.Message) -> bytes:
    """The body's bytes as they came (a hint for guessing a header's charset)."""
    payload = message.get_payload(decode=True) if not message.is_multipart() else None
    return payload[:65536] if isinstance(payload, bytes) else b""


def senders(message: email.message.Message, fallbacks: tuple[str, ...] = DEFAULT_FALLBACKS,
            defects: set[str] | None = None) -> list[tuple[str, str | None]]:
    """(display name, canonical address) of every From mailbox; names decoded once. mail-parser's
    address parser reads the From (it recovers mailboxes from obfuscated and broken headers);
    its doubts go to `defects` as "AddressHeaderDefect", as its MailParser names them."""
    raw_from = [str(v) for k, v in message.raw_items() if k.lower() == "from"]
    if any(not v.isascii() for v in raw_from):  # raw 8-bit bytes: mail-parser escapes them
        return mailboxes([guess_8bit(v, body_bytes(message), declared(message), fallbacks) for v in raw_from])
    if len(raw_from) > 1:  # mail-parser reads the first From only; two are two senders (catalogue 59)
        return mailboxes([decode(v) for v in raw_from])
    if not raw_from:
        return []
    value = message.get("From")
    if isinstance(value, str) and len(value) <= CACHED_CHARS:
        found, doubted = _from_mailboxes(value)
    else:
        found, doubted = _from_mailboxes.__wrapped__(value)
    if doubted and defects is not None:
        defects.add("AddressHeaderDefect")
    return list(found) or mailboxes([decode(v) for v in message.get_all("From", [])])


@lru_cache(maxsize=1024)  # the same sender again and again (gateway/addresses.py, CACHED_CHARS)
def _from_mailboxes(value: Any) -> tuple[tuple[tuple[str, str | None], ...], bool]:
    """mail-parser's reading of a From value: its mailboxes, and whether it had doubts."""
    doubts: list[Any] = []
    try:
        parsed = get_addresses(value, defects=doubts, decode_names=True)
    except Exception:  # a library defect on odd input must not lose the mail: our own reading takes over
        parsed = []
    found = tuple((_display(str("" if name == addr else name)), canonical(str(addr))) for name, addr in parsed[:100]
                  if addr)
    return found, bool(doubts)


def _display(name: str) -> str:
    if "=?" in name:
        return decode(name)
    if any("\udc80" <= ch <= "\udcff" for ch in name):
        return guess_8bit(name)
    return name


def subject(message: email.message.Message, fallbacks: tuple[str, ...] = DEFAULT_FALLBACKS) -> str:
    raw = next((str(v) for k, v in message.raw_items() if k.lower() == "subject"), None)
    if raw is None:
        return ""
    if not raw.isascii():
        return guess_8bit(raw, body_bytes(message), declared(message), fallbacks)
    return decode(raw)  # the first Subject (mail-parser gives a list when there are several)


def guess_8bit(value: str, context: bytes = b"", declared: str | None = None,
               fallbacks: tuple[str, ...] = DEFAULT_FALLBACKS) -> str:
    """A header sent as raw 8-bit bytes with no charset of its own: read as the body's text
    would be (pipeline/charsets.py), with the body's bytes as context for the guess (a few
    header bytes alone are too little)."""
    return decode_text(value.encode("utf-8", "surrogateescape"), declared, fallbacks, context)


def clean_line(value: str, limit: int = 998) -> str:
    """One display line: no control or line-separator characters, collapsed, capped."""
    return " ".join(_CONTROL.sub(" ", value).split())[:limit]


def header(message: email.message.Message, name: str) -> str:
    value = message.get(name)
    return decode(value) if value is not None else ""


_B_WORD = re.compile(r"(=\?[^?\s]{1,40}\?[bB]\?)([A-Za-z0-9+/]*)=*(\?=)")


def _repad(match: re.Match[str]) -> str:
    """Some clients pad base64 encoded-words wrongly ("…==" after a full quantum)."""
    data = match.group(2)
    return match.group(1) + data + "=" * (-len(data) % 4) + match.group(3)


# A run of encoded-words with only white space between them (RFC 2047 §6.2: that space goes).
_ENCODED_RUN = re.compile(r"=\?[^?\s]{1,40}\?[qQbB]\?[^?\s]*\?=(?:\s+=\?[^?\s]{1,40}\?[qQbB]\?[^?\s]*\?=)*")
_FOLD = re.compile(r"\r?\n(?=[ \t])")


def decode(value: object) -> str:
    """A header's text: each run of encoded-words decoded as one (a character may be split
    between two words), the text around them kept as it is. `decode_header` alone also drops
    the space between an encoded-word and the plain text after it ("✔ (1476…)" became "✔(1476…)")."""
    text = _FOLD.sub("", _B_WORD.sub(_repad, str(value)[:MAX_HEADER_VALUE * 4]))
    try:
        return without_surrogates(_ENCODED_RUN.sub(lambda run: _decode_run(run.group(0)), text))[:MAX_HEADER_VALUE]
    except (ValueError, UnicodeError, AssertionError):
        return text.encode("ascii", "replace").decode("ascii")[:MAX_HEADER_VALUE]


def _decode_run(run: str) -> str:
    """Encoded-words only; an unknown charset ("NONE", a typo) is read as UTF-8, replacing."""
    parts = []
    for data, charset in decode_header(run):
        if isinstance(data, str):
            parts.append(data)
            continue
        try:
            parts.append(data.decode(charset or "ascii"))
        except (LookupError, UnicodeError):
            parts.append(data.decode("utf-8", "replace"))
    return "".join(parts)


def decoded_headers(message: email.message.Message) -> tuple[tuple[str, str], ...]:
    """Every header decoded, capped; a long Received chain cannot push the others out.

    `X-Gateway-*` headers are ours to steer with, so any that arrive from outside are dropped
    here (catalogue 63); the raw mail keeps them as evidence.
    """
    out = []
    received = 0
    for name, value in message.items():
        lower = name.lower()
        if lower.startswith("x-gateway-"):
            continue
        if lower == "received":
            received += 1
            if received > 20:
                continue
        out.append((lower, decode(value).replace("\x00", "")))
        if len(out) >= MAX_HEADERS:
            break
    return tuple(out)


def addresses(message: email.message.Message, name: str) -> tuple[str, ...]:
    values = [str(v) for v in message.get_all(name, []) or []]
    return tuple(addr for _, addr in mailboxes(values) if addr)


def ids(values: list[Any]) -> tuple[str, ...]:
    found: list[str] = []
    for value in values:
        for mid in _MSGID.findall(str(value)[:20000]):
            if mid not in found:
                found.append(mid)
    return tuple(found[-100:])


def first_id(value: object) -> str | None:
    if value is None:
        return None
    ids = _MSGID.findall(str(value)[:2000])
    return ids[0] if ids else None


def date(value: object) -> datetime | None:
    if value is None:
        return None
    try:
        return parsedate_to_datetime(str(value))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
