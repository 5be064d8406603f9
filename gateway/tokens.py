"""Signed reply tokens: `kundebetjening+<token>@domain` (rules §5, §7).

The token is the case number plus a truncated HMAC-SHA256 over it with the configured secret.
Case numbers alone are guessable; the MAC is not. Verification is constant-time.

Requester tokens for the HTTP API are made here too, with a secret of their own
(`api.requester_token_secret`): rotating it ends every portal session and no reply address
in a customer's mailbox. Each carries its address, issue time, lifetime and the user's token
generation under one MAC; `gateway users revoke-tokens` bumps the generation.

API tokens of agents and services are random (256 bits); the store keeps only their SHA-256,
and a token is found by that hash, so no comparison runs over the secret itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

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

_REQUESTER_CONTEXT = b"gateway-api-requester-v2\x00"
_REQUESTER_TOKEN = re.compile(r"^r2\.([A-Za-z0-9_-]{8,1000})\.([A-Za-z0-9_-]{32})$")
CLOCK_SKEW_S = 60  # another node's clock may run this far ahead of ours


@dataclass(frozen=True, slots=True)
class RequesterClaims:
    """What a valid requester token says: for whom, when it was issued, for how long, and the
    user's token generation at the time."""

    email: str
    issued_at: int  # Unix seconds
    lifetime_s: int
    generation: int

    def valid_at(self, now: int) -> bool:
        return self.issued_at - CLOCK_SKEW_S <= now < self.issued_at + self.lifetime_s

    @property
    def expires_at(self) -> int:
        return self.issued_at + self.lifetime_s


def _requester_mac(secret: str, payload: bytes) -> str:
    return _b64(hmac.new(secret.encode(), _REQUESTER_CONTEXT + payload, hashlib.sha256).digest()[:24])


def requester_token(secret: str, claims: RequesterClaims) -> str:
    """`r2.<claims>.<mac>`: unforgeable without the secret, bound to one address and time."""
    payload = f"{claims.email}\n{claims.issued_at}\n{claims.lifetime_s}\n{claims.generation}".encode()
    return f"r2.{_b64(payload)}.{_requester_mac(secret, payload)}"


def requester_claims(secret: str, token: str) -> RequesterClaims | None:
    """The claims of a requester token, or None if it is forged, malformed or of the old
    format (`r1.`, which had no expiry). Whether it is still valid is the caller's check."""
    match = _REQUESTER_TOKEN.match(token)
    if not match:
        return None
    try:
        payload = base64.urlsafe_b64decode(match.group(1) + "=" * (-len(match.group(1)) % 4))
    except (binascii.Error, ValueError):
        return None
    if not hmac.compare_digest(match.group(2), _requester_mac(secret, payload)):
        return None
    try:  # signed by us, so well-formed; a failure here means a format this version does not know
        email, issued, lifetime, generation = payload.decode().split("\n")
        return RequesterClaims(email, int(issued), int(lifetime), int(generation))
    except ValueError:
        return None


# --- API tokens of agents and services -----------------------------------------------------------

API_TOKEN_PREFIX = "gwt_"  # tells the kind apart without a lookup, and secret scanners find it


def new_api_token() -> str:
    return API_TOKEN_PREFIX + secrets.token_urlsafe(32)


def api_token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


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
