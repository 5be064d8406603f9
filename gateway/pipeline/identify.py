"""Sender authentication (rules §5, catalogue 55–64), pure.

Only the topmost `Authentication-Results` header counts, and only when its authserv-id is the
one our own trusted MTA writes; anything a sender added lower down is ignored. A mail is
authenticated when DMARC passed, or DKIM/SPF passed for a domain aligned with the From domain.
A DKIM signature with a body length tag (`l=`) covers only the start of the body: anything
appended after it is unsigned (catalogue 64), so then neither a DKIM pass nor a DMARC pass
counts, only an aligned SPF pass.
"""

from __future__ import annotations

import re

from gateway.model import ParsedMail

_RESULT = re.compile(r"\b(dmarc|dkim|spf)\s*=\s*([a-z]+)([^;]*)", re.IGNORECASE)
_BODY_LENGTH = re.compile(r"(?:^|;)\s*l\s*=", re.IGNORECASE)
_DOMAIN = re.compile(r"(?:header\.d|header\.from|smtp\.mailfrom|header\.i)\s*=\s*([^\s;]+)", re.IGNORECASE)


def authenticated(mail: ParsedMail, authserv_id: str, policy: str) -> bool | None:
    """True/False under `mark` and `enforce`; None when the policy is off."""
    if policy == "off":
        return None
    values = mail.header_all("authentication-results")
    if not values or not authserv_id or mail.from_addr is None:
        return False
    top = values[0]
    server = top.split(";", 1)[0].strip().split()[0].lower() if top.strip() else ""
    if server != authserv_id.lower():
        return False
    partly_signed = any(_BODY_LENGTH.search(v) for v in mail.header_all("dkim-signature"))
    return _passes(top, mail.from_addr.rsplit("@", 1)[-1], partly_signed)


def _passes(header: str, from_domain: str, partly_signed: bool = False) -> bool:
    for method, result, props in _RESULT.findall(header):
        method = method.lower()
        if result.lower() != "pass" or (partly_signed and method != "spf"):
            continue
        if method == "dmarc":
            return True
        domain = _DOMAIN.search(props)
        if domain and _aligned(domain.group(1).rsplit("@", 1)[-1].lower(), from_domain):
            return True
    return False


def _aligned(domain: str, from_domain: str) -> bool:
    """Relaxed alignment: the same organisational domain (approximated by the last two labels)."""
    def org(d: str) -> str:
        return ".".join(d.strip(".").split(".")[-2:])

    return org(domain) == org(from_domain)
