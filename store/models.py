"""SQLModel tables (rules §2). The schema itself is created by the alembic migrations.

Text columns never hold NUL (PostgreSQL refuses it) and long values are capped before insert
by `store.writes`; raw mail bytes live in a binary column.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Column, Index, Integer, LargeBinary, UniqueConstraint, text
from sqlmodel import Field, SQLModel


class Organisation(SQLModel, table=True):
    __tablename__ = "organisation"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, unique=True)


class AppUser(SQLModel, table=True):
    __tablename__ = "app_user"
    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=320, unique=True)  # canonical form (gateway.addresses)
    name: str = Field(max_length=200, default="")
    organisation_id: int | None = Field(default=None, foreign_key="organisation.id", index=True)
    kind: str = Field(max_length=20, default="person")
    role: str = Field(max_length=20, default="customer")
    language: str | None = Field(default=None, max_length=5)
    bouncing_since: datetime | None = None
    bounce_reason: str | None = Field(default=None, max_length=500)
    created_at: datetime
    # Requester tokens name the generation they were issued in; `users revoke-tokens` bumps it.
    # A server default only: the mail path's INSERTs (store/driver.py) name their columns.
    token_generation: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    # Set when the person's data was erased (store/erasure.py): the row stays as a pseudonym, so
    # the case skeletons that name it stay whole; such a user is never a recipient again.
    erased_at: datetime | None = None


# The queues' claims (store/inbox.py, store/outbox.py) read the rows still due, in id order, from
# an index of only those rows; the claim names the index's condition word for word, so that
# SQLite uses it too. On PostgreSQL every version of a row leaves an entry in an index until
# VACUUM. A plain index scan marks the entries of rows no longer due as dead as it passes them,
# and the next claim skips them; a bitmap scan (the planner's choice on a table without
# statistics) marks none and visits them all at every claim: with autovacuum off, every mail
# ever received. So the claim's transaction turns bitmap scans off (IN_ID_ORDER).
INBOX_DUE = "state IN ('pending', 'processing')"
OUTBOX_DUE = "state IN ('pending', 'sending')"
IN_ID_ORDER = "SET LOCAL enable_bitmapscan = off"


def partial_index(name: str, *columns: str, where: str) -> Index:
    """An index of only the rows `where` holds, on SQLite and PostgreSQL alike."""
    return Index(name, *columns, sqlite_where=text(where), postgresql_where=text(where))


class SupportCase(SQLModel, table=True):
    __tablename__ = "support_case"
    # Lists are newest first by last change, a page at a time (store/queries.py: cases_page).
    # The retention jobs (store/retention.py) find closed cases not yet done by the other two,
    # without reading every case ever closed on each run.
    __table_args__ = (Index("ix_case_updated", "updated_at", "id"),
                      Index("ix_case_raw_due", "status", "raw_deleted_at", "status_changed_at"),
                      Index("ix_case_anonymise_due", "status", "anonymised_at", "status_changed_at"))
    id: int | None = Field(default=None, primary_key=True)
    number: str = Field(max_length=40, unique=True)
    subject: str = Field(max_length=500, default="")
    requester_id: int = Field(foreign_key="app_user.id", index=True)
    assignee_id: int | None = Field(default=None, foreign_key="app_user.id")
    status: str = Field(max_length=30, index=True)
    follows_id: int | None = Field(default=None, foreign_key="support_case.id")
    close_reason: str | None = Field(default=None, max_length=1000)
    created_at: datetime
    updated_at: datetime
    status_changed_at: datetime
    raw_deleted_at: datetime | None = None  # its mails' raw bytes were deleted (retention.raw_mail_days)
    anonymised_at: datetime | None = None  # only the skeleton is left (retention.closed_case_days)


class CaseParty(SQLModel, table=True):
    __tablename__ = "case_party"
    case_id: int = Field(foreign_key="support_case.id", primary_key=True)
    user_id: int = Field(foreign_key="app_user.id", primary_key=True, index=True)
    added_at: datetime
    added_by_id: int | None = Field(default=None, foreign_key="app_user.id")


class Comment(SQLModel, table=True):
    __tablename__ = "comment"
    id: int | None = Field(default=None, primary_key=True)
    case_id: int = Field(foreign_key="support_case.id", index=True)
    author_id: int | None = Field(default=None, foreign_key="app_user.id", index=True)  # index: export, erasure
    created_at: datetime
    source: str = Field(max_length=10)
    public: bool = True
    visible_text: str = ""
    # The whole text with its quoted history; "" when it is the visible text and signature (most
    # first mails): 20 KB less to write a case. Readers use `full_text or joined_text(…)`.
    full_text: str = ""
    signature: str = ""  # the last signature block, kept apart from visible_text (issue 22)
    html: str | None = None
    inbound_id: int | None = Field(default=None, foreign_key="inbound_mail.id")
    kind: str = Field(default="comment", max_length=20)  # comment | courtesy | auto_reply
    via: str | None = Field(default=None, max_length=100)  # the service an agent acted through


class Attachment(SQLModel, table=True):
    __tablename__ = "attachment"
    id: int | None = Field(default=None, primary_key=True)
    comment_id: int = Field(foreign_key="comment.id", index=True)
    name: str = Field(max_length=255)
    size: int
    sha256: str = Field(max_length=64, index=True)
    content_type: str = Field(max_length=200)
    inline: bool = False


class StatusChange(SQLModel, table=True):
    __tablename__ = "status_change"
    # /metrics counts the timed job's closes: an index of the system's rows only.
    __table_args__ = (partial_index("ix_status_change_system", "to_status", where="by_label = 'system'"),)
    id: int | None = Field(default=None, primary_key=True)
    case_id: int = Field(foreign_key="support_case.id", index=True)
    at: datetime
    by_id: int | None = Field(default=None, foreign_key="app_user.id")
    by_label: str = Field(default="", max_length=100)  # "system", "mail", an agent's address
    from_status: str | None = Field(default=None, max_length=30)
    to_status: str = Field(max_length=30)
    reason: str | None = Field(default=None, max_length=1000)
    via: str | None = Field(default=None, max_length=100)  # the service an agent acted through


class ApiToken(SQLModel, table=True):
    """A bearer token of the HTTP API, kept only as the SHA-256 of its text (shown once, at
    issue). `agent`: acts as its user and no one else; `service`: an integration named `name`
    that acts for the agent it names in each request."""

    __tablename__ = "api_token"
    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=10)  # agent | service
    user_id: int | None = Field(default=None, foreign_key="app_user.id", index=True)
    name: str = Field(default="", max_length=100)
    token_hash: str = Field(max_length=64, unique=True)
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class InboundMail(SQLModel, table=True):
    """The durable inbox: every mail received, raw bytes first (rules §4)."""

    __tablename__ = "inbound_mail"
    # (from_addr, processed_at): the loop detector counts one sender's last hour, not all of
    # its mails ever (a flood from one address made every mail slower than the last).
    # processed_at: /metrics reads the mails processed since its last scrape (store/stats.py);
    # only processed rows are in it, so the SMTP edge's inserts do not write it.
    # (outcome, state, processed_at): the retention job finds set-aside mail due for deletion
    # without reading every ignored mail ever received (an `expired` one has left the range).
    __table_args__ = (Index("ix_inbound_claim", "state", "claimed_until"),
                      partial_index("ix_inbound_due", "id", where=INBOX_DUE),
                      Index("ix_inbound_from_processed", "from_addr", "processed_at"),
                      partial_index("ix_inbound_processed", "processed_at", where="processed_at IS NOT NULL"),
                      Index("ix_inbound_expiry", "outcome", "state", "processed_at"))
    id: int | None = Field(default=None, primary_key=True)
    received_at: datetime
    source: str = Field(max_length=100)
    envelope_from: str | None = Field(default=None, max_length=320)
    envelope_to: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    size: int = 0
    sha256: str = Field(max_length=64)
    message_id: str | None = Field(default=None, max_length=998, index=True)
    dedup_key: str = Field(max_length=64, unique=True)
    state: str = Field(default="pending", max_length=20)  # … | expired: raw bytes deleted (retention)
    attempts: int = 0
    claimed_until: datetime | None = None
    claimed_by: str | None = Field(default=None, max_length=100)
    last_error: str | None = None
    outcome: str | None = Field(default=None, max_length=20)
    reason: str | None = None
    case_id: int | None = Field(default=None, foreign_key="support_case.id", index=True)
    processed_at: datetime | None = None
    subject: str | None = Field(default=None, max_length=500)
    from_addr: str | None = Field(default=None, max_length=320)


class InboundRaw(SQLModel, table=True):
    """The raw bytes of an inbox mail, byte for byte as received, in a table of their own: SQLite
    rewrites a whole row on UPDATE, so with the bytes beside the state every claim and finish
    copied the mail again."""

    __tablename__ = "inbound_raw"
    inbound_id: int = Field(foreign_key="inbound_mail.id", primary_key=True)
    raw: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class MessageIndex(SQLModel, table=True):
    """Message-IDs that belong to a case, for threading (ours and the customers')."""

    __tablename__ = "message_index"
    message_id: str = Field(primary_key=True, max_length=998)
    case_id: int = Field(foreign_key="support_case.id", index=True)
    ours: bool = False


class Outbox(SQLModel, table=True):
    """Every notification, queued in the transaction that caused it (rules §2, §7)."""

    __tablename__ = "outbox"
    # The rate limits count a recipient's last day and a case's last hour to one recipient;
    # indexes that end in the time read those windows only, not all the rows ever queued.
    __table_args__ = (Index("ix_outbox_due", "state", "next_attempt_at"),
                      partial_index("ix_outbox_queued", "id", where=OUTBOX_DUE),
                      Index("ix_outbox_recipient_created", "recipient", "created_at"),
                      Index("ix_outbox_case_recipient_created", "case_id", "recipient", "created_at"),
                      partial_index("ix_outbox_sent", "sent_at", where="sent_at IS NOT NULL"),
                      Index("ix_outbox_prune_due", "state", "pruned_at", "sent_at"))
    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime
    event: str = Field(max_length=20)
    case_id: int | None = Field(default=None, foreign_key="support_case.id")
    recipient: str = Field(max_length=320)
    recipient_name: str = Field(default="", max_length=200)
    language: str = Field(default="da", max_length=5)
    message_id: str = Field(max_length=998, unique=True)
    context: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))  # type: ignore[type-arg]
    state: str = Field(default="pending", max_length=20)  # pending|sending|sent|failed|held|cancelled
    attempts: int = 0
    next_attempt_at: datetime
    claimed_until: datetime | None = None
    claimed_by: str | None = Field(default=None, max_length=100)  # `node:run` of the sender that holds it
    last_error: str | None = None
    sent_at: datetime | None = None
    pruned_at: datetime | None = None  # what it said (subject, names) was deleted (retention.sent_mail_days)


class Counter(SQLModel, table=True):
    """Named counters (case numbers on SQLite; PostgreSQL uses a sequence)."""

    __tablename__ = "counter"
    name: str = Field(primary_key=True, max_length=40)
    value: int = 0


class NodeRun(SQLModel, table=True):
    """Each node's run number, one more at every start: claims are held as `node:run`, so a
    restarted node knows which claims its own earlier life left behind (store/node_run.py)."""

    __tablename__ = "node_run"
    node_id: str = Field(primary_key=True, max_length=64)
    run: int = 0
    started_at: datetime


class JobLease(SQLModel, table=True):
    """Leases that let one node at a time run a timed job or read an IMAP account."""

    __tablename__ = "job_lease"
    name: str = Field(primary_key=True, max_length=200)
    holder: str = Field(max_length=100)
    until: datetime


class ImapFolderState(SQLModel, table=True):
    __tablename__ = "imap_folder_state"
    __table_args__ = (UniqueConstraint("account", "folder"),)
    id: int | None = Field(default=None, primary_key=True)
    account: str = Field(max_length=200)
    folder: str = Field(max_length=500)
    uidvalidity: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))  # IMAP: unsigned 32-bit
    last_uid: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    failures: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))  # type: ignore[type-arg]
    last_fetch_at: datetime | None = None


class AuditEvent(SQLModel, table=True):
    """Who exported, erased or allowed whose data, when and why; and what the retention jobs
    deleted (actor "system"). The agents' case actions are in `status_change` and `comment`;
    `gateway audit list` shows both (store/audit.py)."""

    __tablename__ = "audit_event"
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(index=True)
    actor: str = Field(max_length=320)  # an agent's address, "cli:<login>", or "system"
    via: str | None = Field(default=None, max_length=100)  # the API service the agent acted through
    action: str = Field(max_length=30)  # export | erase | allow | retention
    subject: str | None = Field(default=None, max_length=320, index=True)  # whose data: an address
    reason: str = Field(default="", max_length=1000)
    detail: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))  # type: ignore[type-arg]


class BlockedAddress(SQLModel, table=True):
    """The address of a person whose data was erased: mail from it registers nobody until an
    operator allows it again (`gateway users allow`). `user_id` is the pseudonymised record
    that remains, so an export by the address shows what is left."""

    __tablename__ = "blocked_address"
    email: str = Field(primary_key=True, max_length=320)
    user_id: int | None = Field(default=None, foreign_key="app_user.id")
    blocked_at: datetime


def joined_text(visible: str, signature: str) -> str:
    """A comment's whole text when it had no quoted history: its visible text and signature."""
    return f"{visible}\n\n{signature}" if signature else visible
# --- Serviceportalen (rules §11): passwords, sessions, single-use links, attempt counters --------


class PortalPassword(SQLModel, table=True):
    """A portal user's password as an argon2id hash; a user who never registered has no row."""

    __tablename__ = "portal_password"
    user_id: int = Field(foreign_key="app_user.id", primary_key=True)
    password_hash: str = Field(max_length=255)
    set_at: datetime


class PortalSession(SQLModel, table=True):
    """A logged-in browser. Only a SHA-256 of the cookie's value is stored: a copy of the store
    lets no one log in. Ended by deleting the row (log out, a new password, expiry)."""

    __tablename__ = "portal_session"
    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(max_length=64, unique=True)
    user_id: int = Field(foreign_key="app_user.id", index=True)
    method: str = Field(max_length=20)  # password | oidc
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime = Field(index=True)


class PortalLink(SQLModel, table=True):
    """A mailed single-use link that proves an address and lets it set a password. The store
    keeps the link's public half (`selector`) only; its other half is an HMAC of it with the
    secret (gateway.tokens.link_token), so neither this table nor the outbox holds a usable link."""

    __tablename__ = "portal_link"
    id: int | None = Field(default=None, primary_key=True)
    selector: str = Field(max_length=32, unique=True)
    email: str = Field(max_length=320, index=True)
    purpose: str = Field(max_length=10)  # register | reset
    next_path: str | None = Field(default=None, max_length=500)
    created_at: datetime
    expires_at: datetime = Field(index=True)
    used_at: datetime | None = None


class PortalThrottle(SQLModel, table=True):
    """Attempts under one key (an address's or a client's logins, its link requests) since the
    last quiet spell, and the time before which the next attempt is refused (the back-off). In
    the store, so every node of a cluster counts the same attempts."""

    __tablename__ = "portal_throttle"
    key: str = Field(primary_key=True, max_length=100)
    attempts: int = 0
    last_attempt_at: datetime
    blocked_until: datetime | None = None
