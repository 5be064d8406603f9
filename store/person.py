"""A person in the store: found by their address, and the rows that are theirs.

Shared by the export (store/export.py) and the erasure (store/erasure.py), so both mean the
same rows. After an erasure the user record remains as a pseudonym and the address is only
in `blocked_address` (with the record's id), so an export by the address still finds — and
shows — what is left.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.engine import Connection

from store.models import AppUser, BlockedAddress, CaseParty, Comment, InboundMail, Organisation, SupportCase

U = AppUser.__table__  # type: ignore[attr-defined]
B = BlockedAddress.__table__  # type: ignore[attr-defined]
C = Comment.__table__  # type: ignore[attr-defined]
P = CaseParty.__table__  # type: ignore[attr-defined]
IN = InboundMail.__table__  # type: ignore[attr-defined]
CASE = SupportCase.__table__  # type: ignore[attr-defined]
ORG = Organisation.__table__  # type: ignore[attr-defined]

ERASED_TEXT = "[slettet]"  # what stands where an erased person's text was
PSEUDONYM_DOMAIN = "slettet.invalid"  # .invalid never delivers (RFC 2606)


def pseudonym_email(user_id: int) -> str:
    return f"slettet-{user_id}@{PSEUDONYM_DOMAIN}"


def pseudonym_name(user_id: int) -> str:
    return f"Slettet bruger {user_id}"


@dataclass(frozen=True, slots=True)
class Person:
    address: str  # canonical, as asked about
    user_id: int | None  # their user record, pseudonymised or not; None: mail only, no user
    role: str | None
    erased: bool  # the record was pseudonymised already
    blocked: bool  # the address may not register again by mail

    @property
    def pseudonym(self) -> str | None:
        """The address their rows carry once erased (None when they have no user record)."""
        return pseudonym_email(self.user_id) if self.user_id is not None else None


def find_person(conn: Connection, address: str) -> Person:
    address = address.lower()
    user = conn.execute(select(U.c.id, U.c.role, U.c.erased_at).where(U.c.email == address)).first()
    blocked = conn.execute(select(B.c.user_id).where(B.c.email == address)).first()
    if user is None and blocked is not None and blocked.user_id is not None:
        user = conn.execute(select(U.c.id, U.c.role, U.c.erased_at).where(U.c.id == blocked.user_id)).first()
    if user is None:
        return Person(address, None, None, False, blocked is not None)
    return Person(address, int(user.id), user.role, user.erased_at is not None, blocked is not None)


def address_blocked(conn: Connection, address: str) -> bool:
    return conn.execute(select(B.c.email).where(B.c.email == address.lower())).first() is not None


def user_record(conn: Connection, person: Person) -> dict[str, Any] | None:
    if person.user_id is None:
        return None
    row = conn.execute(select(U, ORG.c.name.label("organisation")).select_from(
        U.outerjoin(ORG, ORG.c.id == U.c.organisation_id)).where(U.c.id == person.user_id)).mappings().one()
    return {key: row[key] for key in ("id", "email", "name", "organisation", "kind", "role", "language",
                                      "bouncing_since", "bounce_reason", "created_at", "erased_at")}


def case_roles(conn: Connection, user_id: int) -> list[tuple[int, str]]:
    """Every case the user is requester or party of, or wrote on: (case id, role), by id."""
    roles = {int(i): "requester" for (i,) in conn.execute(select(CASE.c.id).where(CASE.c.requester_id == user_id))}
    for (case_id,) in conn.execute(select(P.c.case_id).where(P.c.user_id == user_id)):
        roles.setdefault(int(case_id), "party")
    for (case_id,) in conn.execute(select(C.c.case_id).where(C.c.author_id == user_id).distinct()):
        roles.setdefault(int(case_id), "author")
    return sorted(roles.items())


def inbound_of(person: Person) -> Any:
    """WHERE clause of the inbox rows from the person: From or envelope sender, or the mails
    their comments came from."""
    clauses = [IN.c.from_addr == person.address, func.lower(IN.c.envelope_from) == person.address]
    if person.user_id is not None:
        clauses.append(IN.c.from_addr == person.pseudonym)
        clauses.append(IN.c.id.in_(select(C.c.inbound_id).where(C.c.author_id == person.user_id,
                                                                 C.c.inbound_id.is_not(None))))
    return or_(*clauses)


def inbound_ids(conn: Connection, person: Person) -> list[int]:
    """The ids of the inbox rows from the person, read once (the envelope sender has no index:
    a scan per page would read the whole inbox again for every page)."""
    return [int(i) for (i,) in conn.execute(select(IN.c.id).where(inbound_of(person)).order_by(IN.c.id))]
