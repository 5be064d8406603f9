"""CSRF tokens for every form: a signed double-submit cookie, bound to the session.

Every visitor gets a random form cookie (HttpOnly, SameSite=Lax) before the first form it
sees. A form's token is an HMAC, with the secret, over that cookie and the session cookie (none
before login): a site elsewhere can neither read the cookies nor make the HMAC, and a token
taken before login (or from another session) does not fit after it. The login and registration
forms are protected the same way, before there is any session.
"""

from __future__ import annotations

import hashlib
import hmac

_CONTEXT = b"gateway-portal-csrf\x00"


def csrf_token(secret: str, form_cookie: str, session_cookie: str) -> str:
    message = _CONTEXT + form_cookie.encode() + b"\x00" + session_cookie.encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def csrf_valid(secret: str, form_cookie: str, session_cookie: str, posted: str | None) -> bool:
    if not form_cookie or not posted:
        return False
    return hmac.compare_digest(posted.encode("utf-8", "replace"),
                               csrf_token(secret, form_cookie, session_cookie).encode())
