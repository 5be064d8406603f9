"""One validated settings object, built at start-up from a TOML file and the environment.

Every key can be overridden by `GATEWAY_<SECTION>__<KEY>` (for example
`GATEWAY_DATABASE__URL`, `GATEWAY_SMTP__PORT`). Lists and tables in the environment are
given as JSON (`GATEWAY_MAIL__ADDRESSES='["a@x", "b@x"]'`). Errors name the key.
"""

from __future__ import annotations

import codecs
import dataclasses
import ipaddress
import json
import os
import re
import tomllib
import types
import typing
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gateway.errors import ConfigError

ENV_PREFIX = "GATEWAY_"
_NODE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
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
    """How long personal data is kept (rules §10; README "Data protection"), in days; 0 keeps it
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


def load_settings(path: str | Path | None = None, env: typing.Mapping[str, str] | None = None) -> Settings:
    """Read the TOML file (if any), apply environment overrides, validate."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    base_dir = Path.cwd()
    if path is not None:
        p = Path(path)
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"configuration file not found: {p}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: {exc}") from exc
        base_dir = p.resolve().parent.parent if p.resolve().parent.name == "config" else p.resolve().parent
    _apply_env(raw, env)
    base_dir_value = raw.pop("base_dir", None) or env.get(ENV_PREFIX + "BASE_DIR") or str(base_dir)
    return _build(Settings, raw, "", extra={"base_dir": str(base_dir_value)})


_RENAMED = {
    "storage.raw_retention_days": "renamed to retention.raw_mail_days, which is now enforced (default 90 days "
                                  "after the case is closed); see [retention] in gateway.example.toml",
}


def _apply_env(raw: dict[str, Any], env: typing.Mapping[str, str]) -> None:
    sections = {f.name for f in dataclasses.fields(Settings)}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX):].lower().partition("__")
        if section not in sections:  # a typo (GATEWAY_SMPT__PORT) must not pass unseen
            raise ConfigError(f"unknown key {section}.{key} (from the environment variable {name})")
        table = raw.setdefault(section, {})
        if isinstance(table, dict):
            table[key] = _EnvValue(value)


class _EnvValue(str):
    """A string from the environment, converted to the field's type when built."""


def _build(cls: type, data: Any, prefix: str, extra: dict[str, Any] | None = None) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'configuration'}: expected a table")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    for key in sorted(unknown):
        if f"{prefix}{key}" in _RENAMED:
            raise ConfigError(f"{prefix}{key}: {_RENAMED[prefix + key]}")
    if unknown:
        raise ConfigError(f"unknown key {prefix}{sorted(unknown)[0]}")
    kwargs: dict[str, Any] = dict(extra or {})
    for key, value in data.items():
        kwargs[key] = _convert(hints[key], value, f"{prefix}{key}")
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{prefix.rstrip('.') or 'configuration'}: {exc}") from exc
    _validate(obj, prefix)
    return obj


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if isinstance(value, _EnvValue) and tp is not str and origin is not Literal:
        value = _parse_env(tp, str(value), key)
    if origin in (typing.Union, types.UnionType):  # an optional section: `X | None`
        (inner,) = (arg for arg in typing.get_args(tp) if arg is not type(None))
        return _convert(inner, value, key)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")  # type: ignore[arg-type]
    if origin is tuple:
        (item_tp, _) = typing.get_args(tp)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list")
        return tuple(_convert(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: must be one of {', '.join(map(str, allowed))}, not {value!r}")
        return str(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected a whole number")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string")
        return str(value)
    return value


def _parse_env(tp: Any, text: str, key: str) -> Any:
    if tp is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key} (environment): expected true or false, not {text!r}")
    if tp in (int, float):
        try:
            return tp(text)
        except ValueError as exc:
            raise ConfigError(f"{key} (environment): expected a number, not {text!r}") from exc
    stripped = text.strip()
    if stripped.startswith(("[", "{")):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{key} (environment): invalid JSON: {exc}") from exc
    if typing.get_origin(tp) is tuple:
        return [item.strip() for item in text.split(",") if item.strip()]
    return text


def _validate(obj: Any, prefix: str) -> None:
    if isinstance(obj, MailSettings):
        if not obj.addresses:
            raise ConfigError("mail.addresses: at least one address is required")
        for address in (*obj.addresses, obj.from_address):
            if address.count("@") != 1:
                raise ConfigError(f"mail.addresses: not an e-mail address: {address!r}")
        if len(obj.reply_token_secret) < 16:
            raise ConfigError("mail.reply_token_secret: must be at least 16 characters")
        for charset in obj.charset_fallbacks:
            try:
                codecs.lookup(charset)
            except LookupError:
                raise ConfigError(f"mail.charset_fallbacks: unknown charset {charset!r}") from None
    if isinstance(obj, ApiSettings) and obj.enabled and len(obj.requester_token_secret) < 16:
        raise ConfigError("api.requester_token_secret: must be at least 16 characters when the API is enabled")
    if isinstance(obj, ApiSettings) and not 60 <= obj.requester_token_lifetime_s <= 30 * 86400:
        raise ConfigError("api.requester_token_lifetime_s: must be 60 s to 30 days")
    if isinstance(obj, Settings) and obj.api.enabled and obj.api.requester_token_secret == obj.mail.reply_token_secret:
        raise ConfigError("api.requester_token_secret: must differ from mail.reply_token_secret")
    if isinstance(obj, SmtpSettings | ApiSettings) and not 0 <= obj.port <= 65535:
        raise ConfigError(f"{prefix}port: must be 0-65535")
    if isinstance(obj, RetentionSettings):
        for name in ("raw_mail_days", "set_aside_mail_days", "sent_mail_days", "closed_case_days", "blob_grace_s",
                     "blob_sweep_hours"):
            if getattr(obj, name) < 0:
                raise ConfigError(f"retention.{name}: must not be negative (0 keeps the data for good)")
    if isinstance(obj, PolicySettings) and obj.close_after_days < 0:
        raise ConfigError("policy.close_after_days: must not be negative")
    if isinstance(obj, OutboundSettings) and not obj.transport.startswith(("maildir:", "smtp://")):
        raise ConfigError("outbound.transport: must be maildir:PATH or smtp://host:port")
    if isinstance(obj, PortalSettings):
        _validate_portal(obj)
    if isinstance(obj, WorkerSettings) and obj.max_attempts < 1:
        raise ConfigError("worker.max_attempts: must be at least 1")
    if isinstance(obj, WorkerSettings) and obj.retry_delay_s < 0:
        raise ConfigError("worker.retry_delay_s: must not be negative")
    if isinstance(obj, WorkerSettings) and not 1 <= obj.parse_processes <= 64:
        raise ConfigError("worker.parse_processes: must be 1-64")
    if isinstance(obj, ImapAccount):
        _validate_imap_auth(obj, prefix)
    if isinstance(obj, OidcSettings):
        _validate_oidc(obj, prefix)
    if isinstance(obj, DaemonSettings) and obj.node_id and not _NODE_ID.fullmatch(obj.node_id):
        raise ConfigError("daemon.node_id: 1-64 letters, digits, '.', '_' or '-'")
    if isinstance(obj, SmtpSettings):
        for relay in obj.trusted_relays:
            try:
                ipaddress.ip_network(relay, strict=False)
            except ValueError as exc:
                raise ConfigError(f"smtp.trusted_relays: not an address or network: {relay!r}") from exc
    if isinstance(obj, DaemonSettings) and obj.log_level.upper() not in LOG_LEVELS:
        raise ConfigError(f"daemon.log_level: must be one of {', '.join(LOG_LEVELS)}, not {obj.log_level!r}")
    if isinstance(obj, DatabaseSettings) and not obj.url.startswith(DATABASE_SCHEMES):
        raise ConfigError(f"database.url: unsupported {obj.url.partition(':')[0]!r}; "
                          "use sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST/DB")


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OAUTH_KEYS = ("tenant", "client_id", "client_secret_env")


def _validate_imap_auth(a: ImapAccount, prefix: str) -> None:
    if a.auth == "password":
        for key in (*_OAUTH_KEYS, "token_url"):
            if getattr(a, key):
                raise ConfigError(f"{prefix}{key}: only used with auth = \"xoauth2\" or \"oauthbearer\"")
        return
    for key in _OAUTH_KEYS:
        if not getattr(a, key):
            raise ConfigError(f"{prefix}{key}: required with auth = {a.auth!r}")
    if a.password:
        raise ConfigError(f"{prefix}password: not used with auth = {a.auth!r}; remove it")
    if not _ENV_NAME.fullmatch(a.client_secret_env):  # never echo it: it may be a pasted secret
        raise ConfigError(f"{prefix}client_secret_env: must be the NAME of the environment variable that "
                          "holds the secret (letters, digits and _), never the secret itself")
    path = urllib.parse.urlsplit(a.token_endpoint)
    if path.scheme != "https" or not path.path.endswith("/oauth2/v2.0/token"):
        raise ConfigError(f"{prefix}token_url: must be https://<host>/<tenant>/oauth2/v2.0/token")
    if path.path.split("/")[1:2] != [a.tenant]:
        raise ConfigError(f"{prefix}token_url: its tenant differs from {prefix}tenant ({a.tenant!r})")
    if not a.scope.strip():
        raise ConfigError(f"{prefix}scope: must not be empty")


def _validate_portal(portal: PortalSettings) -> None:
    if not portal.url.startswith(("https://", "http://")):
        raise ConfigError("portal.url: must start with https:// (or http:// on the loopback)")
    for key in ("session_idle_minutes", "session_hours", "link_minutes", "attempts_per_address",
                "attempts_per_client"):
        if getattr(portal, key) < 1:
            raise ConfigError(f"portal.{key}: must be at least 1")


def _validate_oidc(oidc: OidcSettings, prefix: str) -> None:
    for key in ("issuer", "discovery_endpoint"):
        parts = urllib.parse.urlsplit(getattr(oidc, key))
        loopback = parts.scheme == "http" and parts.hostname in ("127.0.0.1", "::1", "localhost")
        if not parts.hostname or not (parts.scheme == "https" or loopback):
            name = "discovery_url" if key == "discovery_endpoint" else key
            raise ConfigError(f"{prefix}{name}: must be an https:// URL (http:// only on the loopback)")
    if not oidc.client_id:
        raise ConfigError(f"{prefix}client_id: required")
    if not _ENV_NAME.fullmatch(oidc.client_secret_env):  # never echo it: it may be a pasted secret
        raise ConfigError(f"{prefix}client_secret_env: must be the NAME of the environment variable that "
                          "holds the secret (letters, digits and _), never the secret itself")
    for scope in ("openid", "email"):
        if scope not in oidc.scopes:
            raise ConfigError(f"{prefix}scopes: must include {scope!r}")
    if not oidc.display_name.strip():
        raise ConfigError(f"{prefix}display_name: must not be empty")
    if not 0 < oidc.timeout_s <= 60:
        raise ConfigError(f"{prefix}timeout_s: must be more than 0 and at most 60")
