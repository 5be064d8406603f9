"""One validated settings object, built at start-up from a TOML file and the environment.

Every key can be overridden by `GATEWAY_<SECTION>__<KEY>` (for example
`GATEWAY_DATABASE__URL`, `GATEWAY_SMTP__PORT`). Lists and tables in the environment are
given as JSON (`GATEWAY_MAIL__ADDRESSES='["a@x", "b@x"]'`). Errors name the key.

`sections` holds what there is to set (one frozen dataclass a section), `load` reads the file
and the environment into them, `checks` holds the rules a value must keep beyond its type.
"""

from gateway.settings.load import ENV_PREFIX, load_settings
from gateway.settings.sections import (
    DATABASE_SCHEMES,
    LOG_LEVELS,
    ApiSettings,
    DaemonSettings,
    DatabaseSettings,
    ImapAccount,
    ImapSettings,
    MailSettings,
    OidcSettings,
    OutboundSettings,
    PolicySettings,
    PortalSettings,
    RetentionSettings,
    Settings,
    SmtpSettings,
    StorageSettings,
    WorkerSettings,
)

__all__ = [
    "ApiSettings",
    "DATABASE_SCHEMES",
    "DaemonSettings",
    "DatabaseSettings",
    "ENV_PREFIX",
    "ImapAccount",
    "ImapSettings",
    "LOG_LEVELS",
    "MailSettings",
    "OidcSettings",
    "OutboundSettings",
    "PolicySettings",
    "PortalSettings",
    "RetentionSettings",
    "Settings",
    "SmtpSettings",
    "StorageSettings",
    "WorkerSettings",
    "load_settings",
]
