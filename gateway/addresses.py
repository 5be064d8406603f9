"""Canonical e-mail addresses (catalogue items 58-61).

Only the addr-spec counts. The domain is lower-cased and IDNA-encoded; an ASCII local part is
case-folded; a non-ASCII local part is compared exactly, so a homoglyph never matches.
Anything ambiguous (quotes, several @, route syntax, control characters) is refused (None).
"""

from __future__ import annotations

import re
from email.utils import getaddresses
from functools import lru_cache

_LOCAL_ATOM = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+$")
_DOMAIN_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


# A mailbox writes to Kundebetjening again and again, and every mail names Kundebetjening: the
# answers of the pure functions below are kept for the header values seen last (bounded: values
# longer than CACHED_CHARS are worked out each time). getaddresses and the IDNA codec took
# ~100 µs of a 20 KB mail's 300 µs parse, and canonical() is on every RCPT of the listener.
CACHED_CHARS = 1000


def canonical(address: str | None) -> str | None:
    """The comparable form of one bare address, or None when it is not a plain addr-spec."""
    if not address:
        return None
    return _canonical(address) if len(address) <= CACHED_CHARS else _canonical.__wrapped__(address)


@lru_cache(maxsize=4096)
def _canonical(address: str) -> str | None:
    address = address.strip().strip("<>").strip()
    if address.count("@") != 1 or any(ch in address for ch in ' \t\r\n"\\,;:<>()[]\x00'):
        return None
    local, domain = address.split("@")
    if not local or not domain or local.startswith(".") or local.endswith(".") or ".." in local:
        return None
    if local.isascii():
        if not _LOCAL_ATOM.match(local):
            return None
        local = local.lower()
    elif any(not ch.isprintable() for ch in local):
        return None
    ascii_domain = _canonical_domain(domain)
    return f"{local}@{ascii_domain}" if ascii_domain else None


def _canonical_domain(domain: str) -> str | None:
    domain = domain.rstrip(".")
    try:
        ascii_domain = domain.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return None
    labels = ascii_domain.split(".")
    if not all(_DOMAIN_LABEL.match(label) for label in labels):
        return None
    return ascii_domain


def mailboxes(values: list[str], limit: int = 100) -> list[tuple[str, str | None]]:
    """(display name, canonical address or None) for each mailbox in header values, capped."""
    if sum(map(len, values)) <= CACHED_CHARS:
        return list(_mailboxes(tuple(values), limit))
    return _mailboxes_of(values, limit)


@lru_cache(maxsize=1024)
def _mailboxes(values: tuple[str, ...], limit: int) -> tuple[tuple[str, str | None], ...]:
    return tuple(_mailboxes_of(list(values), limit))


def _mailboxes_of(values: list[str], limit: int) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for name, addr in getaddresses([v[:20000] for v in values]):
        if not name and not addr:
            continue
        out.append((name, canonical(addr)))
        if len(out) >= limit:
            break
    return out


def local_and_tag(address: str) -> tuple[str, str | None, str]:
    """Split `base+tag@domain` into (base, tag, domain); tag None when there is none."""
    local, _, domain = address.rpartition("@")
    base, plus, tag = local.partition("+")
    return base, (tag if plus else None), domain
