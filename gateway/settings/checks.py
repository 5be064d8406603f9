"""The rules a setting must keep beyond its type (a port in range, a secret long enough, an
OAuth account complete); each error names the key."""

from __future__ import annotations

import codecs
import ipaddress
import re
import urllib.parse
from typing import Any

from gateway.errors import ConfigError
from gateway.settings.sections import (
    DATABASE_SCHEMES,
    LOG_LEVELS,
    ApiSettings,
    DaemonSettings,
    DatabaseSettings,
    ImapAccount,
    MailSettings,
    OidcSettings,
    OutboundSettings,
    PolicySettings,
    PortalSettings,
    RetentionSettings,
    Settings,
    SmtpSettings,
    WorkerSettings,
)

_NODE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def validate(obj: Any, prefix: str) -> None:
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
    if isinstance(obj, OutboundSettings) and not 0.05 <= obj.poll_interval_s <= 3600:
        raise ConfigError("outbound.poll_interval_s: must be 0.05-3600 seconds")
    if isinstance(obj, OutboundSettings) and not obj.transport.startswith(("maildir:", "smtp://")):
        raise ConfigError("outbound.transport: must be maildir:PATH or smtp://host:port")
    if isinstance(obj, PortalSettings):
        _validate_portal(obj)
    if isinstance(obj, WorkerSettings) and obj.max_attempts < 1:
        raise ConfigError("worker.max_attempts: must be at least 1")
    if isinstance(obj, WorkerSettings) and obj.retry_delay_s < 0:
        raise ConfigError("worker.retry_delay_s: must not be negative")
    if isinstance(obj, ApiSettings) and not 0 <= obj.processes <= 64:
        raise ConfigError("api.processes: must be 0-64 (0: in the daemon's own process)")
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
