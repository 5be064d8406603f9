"""Signed reply tokens: `kundebetjening+<token>@domain` (SPEC §5, §7).

The token is the case number plus a truncated HMAC-SHA256 over it with the configured secret.
Case numbers alone are guessable; the MAC is not. Verification is constant-time.

Requester tokens for the HTTP API (`r1.<address>.<mac>`) are made here too, with the same
secret under a context prefix, so one kind can never pass for the other.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re

from gateway.addresses import local_and_tag

_MAC_BYTES = 12  # 96 bits: unguessable, and the address stays short
_TOKEN = re.compile(r"^([A-Za-z0-9-]{1,40})\.([A-Za-z0-9_-]{16})$")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _mac(secret: str, number: str) -> str:
    digest = hmac.new(secret.encode(), number.lower().encode(), hashlib.sha256).digest()
    return _b64(digest[:_MAC_BYTES])


def make_token(secret: str, number: str) -> str:
    return f"{number.lower()}.{_mac(secret, number)}"


def verify_token(secret: str, token: str) -> str | None:
    """The case number a token was made for, or None if it is forged or malformed."""
    match = _TOKEN.match(token)
    if not match:
        return None
    number, mac = match.groups()
    if not hmac.compare_digest(mac, _mac(secret, number)):
        return None
    return number.upper()


def reply_address(secret: str, base_address: str, number: str) -> str:
    local, _, domain = base_address.partition("@")
    return f"{local}+{make_token(secret, number)}@{domain}"


def numbers_from_recipients(secret: str, recipients: tuple[str, ...] | list[str],
                            our_addresses: tuple[str, ...]) -> tuple[str, ...]:
    """Case numbers named by valid tokens in recipients that are ours (`base+token@domain`)."""
    ours = {(base.lower(), domain.lower()) for base, _, domain in map(local_and_tag, our_addresses)}
    found: list[str] = []
    for recipient in recipients:
        base, tag, domain = local_and_tag(recipient)
        if tag is None or (base.lower(), domain.lower()) not in ours:
            continue
        number = verify_token(secret, tag)
        if number and number not in found:
            found.append(number)
    return tuple(found)


# --- requester tokens for the HTTP API --------------------------------------------------------

_REQUESTER_CONTEXT = b"gateway-api-requester\x00"
_REQUESTER_TOKEN = re.compile(r"^r1\.([A-Za-z0-9_-]{4,600})\.([A-Za-z0-9_-]{24})$")


def _requester_mac(secret: str, email: str) -> str:
    # A context prefix keeps these MACs apart from the reply tokens made with the same secret.
    return _b64(hmac.new(secret.encode(), _REQUESTER_CONTEXT + email.encode(), hashlib.sha256).digest()[:18])


def requester_token(secret: str, email: str) -> str:
    """`r1.<address>.<mac>`: unguessable without the secret, bound to one address."""
    return f"r1.{_b64(email.encode())}.{_requester_mac(secret, email)}"


def requester_email(secret: str, token: str) -> str | None:
    """The address a requester token was issued for, or None if it is forged or malformed."""
    match = _REQUESTER_TOKEN.match(token)
    if not match:
        return None
    try:
        email = base64.urlsafe_b64decode(match.group(1) + "=" * (-len(match.group(1)) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return email if hmac.compare_digest(match.group(2), _requester_mac(secret, email)) else None


# --- the portal's mailed single-use links -------------------------------------------------------

_LINK_CONTEXT = b"gateway-portal-link\x00"
_LINK_TOKEN = re.compile(r"^([A-Za-z0-9_-]{22})\.([A-Za-z0-9_-]{24})$")


def _link_mac(secret: str, selector: str) -> str:
    return _b64(hmac.new(secret.encode(), _LINK_CONTEXT + selector.encode(), hashlib.sha256).digest()[:18])


def link_token(secret: str, selector: str) -> str:
    """`<selector>.<mac>`: the store keeps the selector (22 random characters), never the MAC, so
    neither the store nor the queued mail holds a link that works without the secret."""
    return f"{selector}.{_link_mac(secret, selector)}"


def link_selector(secret: str, token: str) -> str | None:
    """The selector of a genuine link token, or None if it is forged or malformed."""
    match = _LINK_TOKEN.match(token)
    if not match or not hmac.compare_digest(match.group(2), _link_mac(secret, match.group(1))):
        return None
    return match.group(1)
