"""Passwords: argon2id (argon2-cffi, its RFC 9106 low-memory profile), hashed off the event
loop, at most two at a time (each takes 64 MiB and ~50 ms of a core).

An unknown address is verified against a dummy hash, so a login takes as long whether or not
the address has a password: the answer's timing tells no more than its words.
"""

from __future__ import annotations

import asyncio
import functools

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_LENGTH = 10
MAX_LENGTH = 1024


class Passwords:
    def __init__(self, hasher: PasswordHasher | None = None, at_once: int = 2) -> None:
        self._hasher = hasher or PasswordHasher()  # argon2id, t=3, m=64 MiB, p=4
        self._gate = asyncio.Semaphore(at_once)

    @functools.cached_property
    def _dummy(self) -> str:
        return self._hasher.hash("not a password of anyone")

    async def hash(self, password: str) -> str:
        async with self._gate:
            return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        """True when `password` fits `stored`; None (no password yet) never fits, slowly."""
        async with self._gate:
            return await asyncio.to_thread(self._verify, stored, password)

    def _verify(self, stored: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(stored or self._dummy, password) and stored is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored: str) -> bool:
        return self._hasher.check_needs_rehash(stored)


def problem(password: str, repeated: str, email: str) -> str | None:
    """What is wrong with a new password (the Danish text of the form's error), or None."""
    if len(password) < MIN_LENGTH:
        return "Adgangskoden skal være på mindst {n} tegn."
    if len(password) > MAX_LENGTH:
        return "Adgangskoden er for lang."
    if password != repeated:
        return "De to adgangskoder er ikke ens."
    if password.strip().lower() == email.lower():
        return "Adgangskoden må ikke være din e-mailadresse."
    return None
