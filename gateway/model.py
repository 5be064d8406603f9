"""Frozen domain values shared by every layer.

Nothing here does I/O. The pipeline steps (`gateway.pipeline.*`) take and return these
values; the store translates them to and from rows; the edges never see rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class Status(StrEnum):
    REGISTRERET = "registreret"
    PAABEGYNDT = "paabegyndt"
    TILDELT = "tildelt"
    AFVENTER_INTERNT = "afventer_internt"
    AFVENTER_REKVIRENT = "afventer_rekvirent"
    UDFOERT = "udfoert"
    LUKKET = "lukket"

    @property
    def label_da(self) -> str:
        return STATUS_LABELS_DA[self]

    @property
    def label_en(self) -> str:
        return STATUS_LABELS_EN[self]

    @property
    def is_active(self) -> bool:
        return self not in DONE_STATUSES


STATUS_LABELS_DA = {
    Status.REGISTRERET: "Registreret",
    Status.PAABEGYNDT: "Påbegyndt",
    Status.TILDELT: "Tildelt",
    Status.AFVENTER_INTERNT: "Afventer internt",
    Status.AFVENTER_REKVIRENT: "Afventer rekvirent",
    Status.UDFOERT: "Udført",
    Status.LUKKET: "Lukket",
}
STATUS_LABELS_EN = {
    Status.REGISTRERET: "Registered",
    Status.PAABEGYNDT: "In progress",
    Status.TILDELT: "Assigned",
    Status.AFVENTER_INTERNT: "Awaiting internal reply",
    Status.AFVENTER_REKVIRENT: "Awaiting your reply",
    Status.UDFOERT: "Done",
    Status.LUKKET: "Closed",
}
DONE_STATUSES = frozenset({Status.UDFOERT, Status.LUKKET})
ACTIVE_STATUSES = frozenset(set(Status) - DONE_STATUSES)


class UserKind(StrEnum):
    PERSON = "person"
    SHARED_MAILBOX = "shared_mailbox"


class Role(StrEnum):
    CUSTOMER = "customer"
    AGENT = "agent"


class Source(StrEnum):
    EMAIL = "email"
    AGENT = "agent"
    API = "api"
    PORTAL = "portal"


class Outcome(StrEnum):
    """What was done with one inbound mail (rules §2)."""

    CREATED = "created"
    COMMENTED = "commented"
    REOPENED = "reopened"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"
    QUARANTINED = "quarantined"
    REJECTED = "rejected"


class Event(StrEnum):
    """Notification events (rules §7)."""

    RECEIPT = "receipt"
    REPLY = "reply"
    STATUS = "status"
    REOPENED = "reopened"
    SHARED = "shared"
    FOLLOWUP = "followup"  # new case because the old one is closed
    REJECTED = "rejected"  # unknown sender under policy `reject`
    PASSWORD_LINK = "password_link"  # the portal's single-use link to set a password (no case)


# --- parsed mail ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredAttachment:
    """An attachment already written to the blob store (content-addressed)."""

    name: str
    size: int
    sha256: str
    content_type: str
    inline: bool = False


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """What a DSN (RFC 3464) says about one recipient."""

    recipient: str
    action: str
    status: str


@dataclass(frozen=True, slots=True)
class ParsedMail:
    """Everything the pipeline needs from one raw mail, decoded once."""

    message_id: str | None
    subject: str
    from_addr: str | None  # canonical addr-spec of the single From mailbox, else None
    from_name: str
    from_count: int  # how many mailboxes the From header(s) named
    reply_to: tuple[str, ...]
    to: tuple[str, ...]
    cc: tuple[str, ...]
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    date: datetime | None
    headers: tuple[tuple[str, str], ...]  # (lower-cased name, value), capped
    content_type: str
    text: str  # readable body text (HTML-only mails converted), LF line ends, stripped (the parse)
    html: str | None  # sanitised HTML, for display only
    attachments: tuple[StoredAttachment, ...] = ()
    defects: tuple[str, ...] = ()  # the MIME structure's defect classes; "AddressHeaderDefect" for a doubtful From
    report_type: str | None = None  # multipart/report; report-type=…
    delivery_reports: tuple[DeliveryReport, ...] = ()
    original_message_id: str | None = None  # of the mail a report is about
    envelope_from: str | None = None
    envelope_to: tuple[str, ...] = ()
    # The new part of `text` without the quoted history and the signature (pipeline.reply),
    # found in the parse step, off the store's transaction; None when the mail was built elsewhere.
    new_text: str | None = None
    signature: str = ""  # the last signature block of the new part, kept apart

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.headers if key == name]


# --- classification --------------------------------------------------------------------


class MailKind(StrEnum):
    NORMAL = "normal"
    AUTO_REPLY = "auto_reply"
    BOUNCE = "bounce"
    REPORT = "report"  # MDN and other reports: never a case
    BULK = "bulk"
    OWN = "own"  # from one of our own addresses: a loop


@dataclass(frozen=True, slots=True)
class Classification:
    kind: MailKind
    reason: str = ""
    bounced_recipients: tuple[str, ...] = ()

    @property
    def is_automated(self) -> bool:
        return self.kind is not MailKind.NORMAL


# --- facts loaded from the store for planning -----------------------------------------------


@dataclass(frozen=True, slots=True)
class UserRef:
    id: int
    email: str
    name: str
    kind: UserKind
    role: Role
    organisation_id: int | None = None
    language: str | None = None
    bouncing: bool = False  # mail to this address bounces: notifications are held


@dataclass(frozen=True, slots=True)
class CaseRef:
    id: int
    number: str
    subject: str
    status: Status
    requester_id: int
    assignee_id: int | None
    party_ids: frozenset[int] = frozenset()
    requester_org_id: int | None = None

    def admits(self, user: UserRef) -> bool:
        """Who may add to a case (rules §5): the requester, and its parties while they still belong
        to the requester's organisation; checked when a mail or action is processed, so access
        ends when someone leaves the organisation (catalogue 68)."""
        if user.id == self.requester_id:
            return True
        return user.id in self.party_ids and (self.requester_org_id is None
                                              or user.organisation_id == self.requester_org_id)


class ThreadVia(StrEnum):
    MESSAGE_ID = "message_id"
    TOKEN = "token"
    SUBJECT = "subject"


@dataclass(frozen=True, slots=True)
class ThreadKeys:
    """Candidate references to an existing case, pulled from a mail (pure)."""

    message_ids: tuple[str, ...] = ()
    token_case_numbers: tuple[str, ...] = ()
    subject_number: str | None = None


@dataclass(frozen=True, slots=True)
class ThreadMatch:
    case: CaseRef
    via: ThreadVia


@dataclass(frozen=True, slots=True)
class Triage:
    """What a mail shows by itself, before the store is asked (`gateway.pipeline.triage`): its
    kind, whether it proves its sender, and what the store must look up for it."""

    kind: Classification
    authenticated: bool | None  # None: the policy is off
    keys: ThreadKeys
    sender: str | None  # the From address
    cc: tuple[str, ...] = ()  # the Cc'd addresses to look up (CC sharing only)
    recent_cap: int = 0  # count the sender's mails of the last hour up to this; 0: not counted


@dataclass(frozen=True, slots=True)
class Facts:
    """What the store knows that the plan needs (`store.queries.load_facts`)."""

    sender: UserRef | None = None
    by_message_id: CaseRef | None = None
    by_token: CaseRef | None = None
    by_subject: CaseRef | None = None
    cc_users: tuple[UserRef, ...] = ()
    recent_from_sender: int = 0  # mails from this address that opened or touched a case in the last hour
    sender_blocked: bool = False  # an unknown sender whose data was erased: never registered again by mail


# --- plans: what to do with one mail ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewUser:
    email: str
    name: str


@dataclass(frozen=True, slots=True)
class CommentDraft:
    visible_text: str
    full_text: str
    html: str | None
    attachments: tuple[StoredAttachment, ...]
    public: bool = True
    signature: str = ""  # shown apart from visible_text, or hidden


@dataclass(frozen=True, slots=True)
class OpenCase:
    requester: UserRef | NewUser
    subject: str
    comment: CommentDraft
    follows: CaseRef | None = None
    parties: tuple[UserRef, ...] = ()
    receipt: bool = True
    note: str = ""  # e.g. why a thread reference was not honoured


@dataclass(frozen=True, slots=True)
class AppendComment:
    case: CaseRef
    author: UserRef
    comment: CommentDraft
    new_status: Status | None = None
    reopened: bool = False
    parties: tuple[UserRef, ...] = ()
    notify: bool = True


@dataclass(frozen=True, slots=True)
class Ignore:
    reason: str
    case: CaseRef | None = None  # a courtesy reply kept on the case's record
    author: UserRef | None = None
    comment: CommentDraft | None = None
    bounced_recipients: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Quarantine:
    reason: str


@dataclass(frozen=True, slots=True)
class Reject:
    reason: str
    reply_to: str | None  # where the templated answer goes (None: nobody)


Plan = OpenCase | AppendComment | Ignore | Quarantine | Reject


@dataclass(frozen=True, slots=True)
class Result:
    """The answer of processing one inbound mail."""

    action: Outcome
    case: str | None = None
    reason: str = ""
    inbound_id: int | None = None
    notifications: tuple[str, ...] = field(default=())  # Message-IDs queued to be sent now (not held)
    retry: bool = False  # processing failed this time; the mail is pending again
