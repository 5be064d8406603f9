"""The project's own exception tree. Library errors are translated once, at the seam: the
store's driver errors in `store.faults.store_errors`, at the edge of every store call.

    GatewayError
    ├── ConfigError          bad configuration; names the key (sysexits 78)
    │   └── StoreNotReady    no store there, or not at this gateway's schema: `gateway db upgrade`
    ├── UnusableMail         input that can never be processed (sysexits 65)
    ├── TemporaryFailure     try again later (sysexits 75; SMTP 451)
    │   ├── StoreUnavailable the store does not answer now: down, locked, a lost connection, a timeout
    │   ├── StoreRejected    the store refused a statement (a constraint, a value it cannot hold): this
    │   │                    write is wrong, not the store away; tried again it may pass (a race lost)
    │   ├── LostClaim        another worker took the mail over when our lease ran out
    │   └── TokenUnavailable no OAuth2 access token: endpoint unreachable, tenant/client/secret refused
    ├── UsageError           a command line that cannot mean anything (sysexits 64)
    ├── NoInput              an input file that is not there or cannot be read (sysexits 66)
    ├── CannotListen         a port the daemon cannot bind (sysexits 71)
    ├── NotFound             unknown case or user
    ├── Refused              an action the rules do not allow (illegal transition, outsider)
    │   └── InvalidInput     the request itself is malformed (unknown status, empty text)
    └── DeliveryError        outbound relay problem
        └── PermanentDeliveryError   5xx: do not retry
"""


class GatewayError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(GatewayError):
    pass


class StoreNotReady(ConfigError):
    """Only `gateway db upgrade` and `gateway run` create or migrate a store; every other
    command refuses one that is missing or at another schema."""


class UnusableMail(GatewayError):
    pass


class TemporaryFailure(GatewayError):
    pass


class StoreUnavailable(TemporaryFailure):
    """The store does not answer now (store/faults.py: `is_outage`): what was cut off is given
    back and tried again as soon as it answers, its try not counted."""


class StoreRejected(TemporaryFailure):
    """The store answered, and refused the statement: a constraint (another writer won a race)
    or a value it cannot hold. A mail or notification counts it as a failed try."""


class LostClaim(TemporaryFailure):
    """The mail's lease ran out and another worker claimed it: this worker's transaction must
    roll back, or the mail would be applied twice (two cases for one mail)."""


class TokenUnavailable(TemporaryFailure):
    """The token endpoint gave no access token; the message says why in plain words. Temporary
    for the account (it backs off and tries again), though an operator may have to act."""


class UsageError(GatewayError):
    pass


class NoInput(GatewayError):
    pass


class CannotListen(GatewayError):
    pass


class NotFound(GatewayError):
    pass


class Refused(GatewayError):
    pass


class InvalidInput(Refused):
    """The request itself is malformed (unknown status, empty text, bad attachment)."""


class DeliveryError(GatewayError):
    pass


class PermanentDeliveryError(DeliveryError):
    pass
