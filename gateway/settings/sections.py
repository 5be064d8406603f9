"""The settings' sections: what there is to set, with its type and default (gateway.example.toml
shows every key). Read and checked by gateway.settings.load."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DATABASE_SCHEMES = ("sqlite+aiosqlite:", "postgresql+asyncpg:")


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = "sqlite+aiosqlite:///var/gateway.db"
    busy_timeout_ms: int = 5000
    echo: bool = False


@dataclass(frozen=True)
class StorageSettings:
    blob_dir: str = "var/blobs"


@dataclass(frozen=True)
class RetentionSettings:
    """How long personal data is kept (rules §10; docs/operations.md, "Data protection"), in days; 0 keeps it
    for good (that job is off). Enforced by the timed jobs (gateway/retention.py)."""

    raw_mail_days: int = 90  # a mail's raw bytes, after its case was closed (lukket)
    set_aside_mail_days: int = 30  # quarantined, ignored and rejected mail, after it was handled
    sent_mail_days: int = 30  # what a notification said (subject, names), after it was sent
    closed_case_days: int = 1826  # a closed case's comments, attachments and names (5 years)
    blob_grace_s: int = 3600  # an attachment file no row names is deleted once untouched this long
    blob_sweep_hours: float = 24.0  # how often the whole attachment folder is checked for such files


@dataclass(frozen=True)
class MailSettings:
    addresses: tuple[str, ...] = ("kundebetjening@statens-adm.example",)
    from_address: str = "kundebetjening@statens-adm.example"
    from_name: str = "Kundebetjening, Statens Administration"
    message_id_domain: str = "gateway.statens-adm.example"
    reply_token_secret: str = "change-me-in-production"
    case_prefix: str = "SAG-"
    case_digits: int = 6
    # Tried in order for text that names no charset or a wrong one, before detection.
    charset_fallbacks: tuple[str, ...] = ("utf-8", "windows-1252")


@dataclass(frozen=True)
class OidcSettings:
    """Single sign-on for the portal by OpenID Connect (gateway/http/portal/oidc.py). The portal is
    a confidential client: register `{portal.url}/login/sso/callback` as its redirect URI. As for
    the IMAP OAuth accounts, the secret itself never is a setting: client_secret_env names the
    environment variable that holds it."""

    issuer: str  # exactly as the provider's discovery document and ID tokens give it
    client_id: str
    client_secret_env: str
    discovery_url: str = ""  # default: {issuer}/.well-known/openid-configuration
    scopes: tuple[str, ...] = ("openid", "email")
    display_name: str = "single sign-on"  # the login page's button: "Log ind med {display_name}"
    timeout_s: float = 10.0  # per request to the provider

    @property
    def discovery_endpoint(self) -> str:
        return self.discovery_url or self.issuer.rstrip("/") + "/.well-known/openid-configuration"


@dataclass(frozen=True)
class PortalSettings:
    """Serviceportalen, served on the API's listener (gateway/http/portal). `url` is where the
    customers reach it: the links in mails, and whether cookies need https (they do unless it is
    plain http on the loopback)."""

    url: str = "https://serviceportal.statens-adm.example"
    session_idle_minutes: int = 60  # a session unused this long has ended
    session_hours: int = 12  # and every session ends this long after the login
    link_minutes: int = 30  # a mailed link to set a password works once, for this long
    attempts_per_address: int = 5  # failed logins (and link requests) per address before the back-off
    attempts_per_client: int = 50  # the same per client address
    oidc: OidcSettings | None = None  # [portal.oidc]: single sign-on, off unless configured


@dataclass(frozen=True)
class SmtpSettings:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 2525
    max_message_size: int = 35_000_000
    max_recipients: int = 100
    max_connections: int = 100
    max_connections_per_ip: int = 20
    # The MTAs in front (Postfix): their own, higher limit, outside the two above. Postfix opens
    # up to 20 connections per destination and keeps more in its connection cache.
    trusted_relays: tuple[str, ...] = ("127.0.0.0/8", "::1")
    max_connections_per_relay: int = 100
    command_call_limit: int = 100
    session_deadline_s: int = 600
    store_timeout_s: float = 60.0
    max_received_headers: int = 50
    lmtp: bool = False
    tls_cert: str = ""
    tls_key: str = ""
    hostname: str = "gateway.statens-adm.example"


@dataclass(frozen=True)
class ImapAccount:
    name: str
    host: str
    username: str
    password: str = ""
    port: int = 993
    tls: Literal["implicit", "starttls", "none"] = "implicit"
    folder: str = "INBOX"
    after: Literal["move", "flag", "delete"] = "move"
    move_to: str = "Processed"
    failed_folder: str = "Failed"
    max_tries: int = 3
    poll_interval_s: float = 30.0
    idle: bool = True
    max_message_size: int = 35_000_000
    # OAuth2 (Microsoft 365): the client-credentials grant of an Entra app (gateway/ingest/oauth.py).
    # The secret itself never is a setting: client_secret_env names the variable that holds it.
    auth: Literal["password", "xoauth2", "oauthbearer"] = "password"
    tenant: str = ""
    client_id: str = ""
    client_secret_env: str = ""
    token_url: str = ""  # default: Microsoft's token URL for the tenant
    scope: str = "https://outlook.office365.com/.default"

    @property
    def token_endpoint(self) -> str:
        return self.token_url or f"https://login.microsoftonline.com/{self.tenant}/oauth2/v2.0/token"


@dataclass(frozen=True)
class ImapSettings:
    accounts: tuple[ImapAccount, ...] = ()
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 300.0


@dataclass(frozen=True)
class OutboundSettings:
    transport: str = "maildir:var/outbound"
    tls: Literal["none", "starttls", "implicit"] = "none"
    username: str = ""
    password: str = ""
    timeout_s: float = 30.0
    concurrency: int = 10
    max_attempts: int = 8
    backoff_initial_s: float = 30.0
    backoff_max_s: float = 3600.0
    # How often the sender looks for due notifications when nothing woke it: what this daemon
    # queues wakes it at once; another node's, or a retry coming due, waits at most this long.
    poll_interval_s: float = 1.0


@dataclass(frozen=True)
class PolicySettings:
    unknown_sender: Literal["register", "reject", "quarantine"] = "register"
    language: Literal["da", "en"] = "da"
    close_after_days: int = 7
    cc_sharing: bool = False
    sender_authentication: Literal["off", "mark", "enforce"] = "off"
    authserv_id: str = ""
    courtesy_replies: bool = True
    max_auto_answers_per_day: int = 40
    max_mails_per_sender_per_hour: int = 30  # beyond: a mail loop, recorded and ignored (0: off)
    notify_per_10_minutes: int = 10
    notify_per_hour: int = 25
    bounce_hold_days: int = 60


@dataclass(frozen=True)
class WorkerSettings:
    batch_size: int = 32
    max_attempts: int = 3
    retry_delay_s: float = 30.0
    lease_s: float = 300.0
    poll_interval_s: float = 0.5
    parse_in_subprocess: bool = True
    parse_processes: int = 2
    parse_timeout_s: float = 30.0
    parse_memory_mb: int = 1024
    max_header_bytes: int = 65536
    max_header_line_bytes: int = 8192
    max_mime_parts: int = 500
    max_mime_depth: int = 100


@dataclass(frozen=True)
class ApiSettings:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8025
    # HMAC key of requester tokens, apart from the reply-token secret: rotating it ends portal
    # sessions without breaking the reply addresses in customers' mailboxes.
    requester_token_secret: str = ""
    requester_token_lifetime_s: int = 3600
    # Deprecated: shared tokens that act for any agent, kept working as service tokens named
    # "api.agent_tokens" until replaced by `gateway tokens issue` (logged at start-up).
    agent_tokens: tuple[str, ...] = ()
    # Processes that serve the pages and the API (`gateway run`'s children on one listening
    # socket, gateway/runtime/web.py): 2 uses both cores of a small machine for pages, and the
    # SMTP listener never waits behind a page. 0: served in the daemon's own event loop.
    processes: int = 2


@dataclass(frozen=True)
class DaemonSettings:
    grace_s: float = 20.0
    maintenance_interval_s: float = 300.0
    log_format: Literal["json", "text"] = "json"
    log_level: str = "INFO"
    node_id: str = ""  # "" = host name + a hash of the store and base directory (store/node_run.py)


@dataclass(frozen=True)
class Settings:
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    mail: MailSettings = field(default_factory=MailSettings)
    portal: PortalSettings = field(default_factory=PortalSettings)
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    imap: ImapSettings = field(default_factory=ImapSettings)
    outbound: OutboundSettings = field(default_factory=OutboundSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    base_dir: str = "."

    def path(self, value: str) -> Path:
        """A configured path, relative to the base directory when not absolute."""
        p = Path(value)
        return p if p.is_absolute() else Path(self.base_dir) / p

    def replace(self, **sections: Any) -> Settings:
        return dataclasses.replace(self, **sections)

