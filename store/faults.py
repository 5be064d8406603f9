"""Which store errors mean "the store does not answer now" (an outage) and which "this write is
wrong" (the data). The worker and the sender give their claims back, their try not counted,
on the first kind and retry as soon as the store answers; only the second kind is a failed
try of that mail or notification (counted, and quarantined in the end).

An outage: the file or server cannot be reached or written (SQLite's "database is locked",
"disk I/O error", "database or disk is full", "unable to open database file", a read-only
file), a lost or refused connection, and on PostgreSQL the SQLSTATE classes 08 (connection),
40 (serialization, deadlock), 53 (disk full, out of memory, too many connections), 57
(administrator shutdown, cancelled), 58 (I/O), a lock not available, a database that does not
accept connections (ALLOW_CONNECTIONS false) and a revoked privilege.

`store_errors` is where the store's callers stop seeing the driver: every store call that
the gateway awaits runs inside it (`store.transact`, the queues, the lease, the IMAP state,
the metrics reads, opening the store), and an outage comes out as `StoreUnavailable`, any
other refusal of the driver as `StoreRejected`. Nothing outside `store/` catches a driver error.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError

from gateway.errors import GatewayError, StoreRejected, StoreUnavailable

_OUTAGE_CLASSES = ("08", "40", "53", "57", "58")
# lock not available, object in use, a database not accepting connections, a revoked privilege
_OUTAGE_STATES = frozenset({"55P03", "55006", "55000", "42501"})


def is_store_error(exc: BaseException) -> bool:
    """True when the store refused a statement (or did not answer), translated at its edge or
    not yet. The driver's text carries the statement's parameters, a mail's text among them:
    record only its name."""
    return isinstance(exc, DBAPIError | sqlite3.Error | StoreRejected | StoreUnavailable)


def is_outage(exc: BaseException) -> bool:
    """True when `exc` says the store is unavailable, not that the data is wrong."""
    if isinstance(exc, StoreUnavailable | OSError | TimeoutError | sqlite3.OperationalError
                  | OperationalError | InterfaceError | DisconnectionError):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        state = str(getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None) or "")
        return state in _OUTAGE_STATES or state[:2] in _OUTAGE_CLASSES
    return False


def translated(exc: Exception, what: str = "") -> Exception:
    """The project's own exception for a driver error (`exc` itself for anything else). Only the
    error's type is named: a driver's message can quote the statement's values (addresses)."""
    if isinstance(exc, GatewayError):
        return exc
    where = f"{what}: " if what else ""
    if is_outage(exc):
        return StoreUnavailable(f"{where}the store does not answer ({type(exc).__name__})")
    if isinstance(exc, DBAPIError | sqlite3.Error):
        return StoreRejected(f"{where}the store refused the statement ({type(exc).__name__})")
    return exc


@contextmanager
def store_errors(what: str = "") -> Iterator[None]:
    """Run a store call: the driver's errors raised in it come out translated (`translated`)."""
    try:
        yield
    except Exception as exc:
        ours = translated(exc, what)
        if ours is exc:
            raise
        raise ours from exc
