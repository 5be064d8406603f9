"""What the HTTP wing (the API and Serviceportalen's pages) works with: `HttpDeps`, built once
by the root (`gateway.app`) over the opened store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.clock import Clock
from gateway.credentials import TokenDesk
from gateway.datastore import DataStore
from gateway.lifecycle import CaseDesk
from gateway.settings import Settings
from store.blobs import BlobStore
from store.engine import Database, Sessions
from store.transact import Transactor


@dataclass(frozen=True)
class HttpDeps:
    # The surfaces' own sections (`api`, `portal`, `daemon.grace_s`) and the few keys of others
    # that they show or check (`smtp.max_message_size`, `policy.language`, the mail's secrets).
    settings: Settings
    desk: CaseDesk  # the actions of agents and requesters (`gateway.lifecycle`)
    tokens: TokenDesk  # who is calling (`gateway.credentials`)
    sessions: Sessions  # the API's reads (`store.queries`)
    tx: Transactor  # the portal's reads and writes (`store.portal`, `store.portal_cases`)
    blobs: BlobStore  # the attachments' content
    clock: Clock
    engine: Database  # /healthz and /metrics
    # What /healthz asks besides the daemon's loops (name -> alive now): the daemon's parts add
    # themselves as they start (`App.liveness`, the same dict).
    liveness: dict[str, Callable[[], bool]]
    data: DataStore  # the data-protection endpoints (`gateway.privacy`)
