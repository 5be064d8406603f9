"""A node's runs: who this node is across restarts, and the claims its earlier lives left.

Every claim the daemon takes (an inbox mail `processing`, an outbox row `sending`) is held as
`node:run`: the node's identity (`daemon.node_id`, stable across restarts) and its run number,
one more at every start (`node_run`). A node that starts knows its earlier runs are dead, so
it takes their claims back at once (`begin_run`) instead of waiting out their lease, and
leaves the claims of every other node to their lease. The worker and sender children of one
run hold that run's claims; the daemon gives a dead child's back as soon as it sees it die
(`give_back`), their try not counted.

Two daemons must never share a node id: one would take back the other's live claims. The
fencing on the claim's attempt keeps a mail from being applied twice even then, but a
notification could be sent twice.
"""

from __future__ import annotations

import hashlib
import re
import socket
from datetime import datetime
from typing import Any

from sqlalchemy import case, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from store.faults import store_errors
from store.inbox import T as INBOX
from store.models import NodeRun
from store.outbox import T as OUTBOX

NR = NodeRun.__table__  # type: ignore[attr-defined]


def default_node_id(store_url: str, base_dir: str) -> str:
    """`daemon.node_id` when none is configured: the host name and a hash of the store (its
    URL without the password: the SQLite file, or the PostgreSQL server and database) and the
    base directory. It survives restarts; two daemons on one host differ unless they share both
    the directory and the store, which one node cannot."""
    from sqlalchemy.engine import make_url

    store = make_url(store_url).render_as_string(hide_password=True)
    digest = hashlib.sha256(f"{store}\0{base_dir}".encode()).hexdigest()[:10]
    host = re.sub(r"[^A-Za-z0-9.-]+", "-", socket.gethostname().split(".")[0])[:40] or "node"
    return f"{host}-{digest}"


def holder_of(node_id: str, run: int) -> str:
    return f"{node_id}:{run}"[:100]


async def begin_run(engine: AsyncEngine, node_id: str, now: datetime) -> tuple[str, int, int]:
    """Start the next run of `node_id`: its holder name, and how many inbox claims and outbox
    rows of the earlier runs went back to the queue."""
    insert = (postgresql if engine.dialect.name == "postgresql" else sqlite).insert
    with store_errors("node run"):
        return await _begin_run(engine, insert, node_id, now)


async def _begin_run(engine: AsyncEngine, insert: Any, node_id: str, now: datetime) -> tuple[str, int, int]:
    async with engine.begin() as conn:
        await conn.execute(insert(NR).values(node_id=node_id, run=0, started_at=now)
                           .on_conflict_do_nothing(index_elements=["node_id"]))
        run = (await conn.execute(update(NR).where(NR.c.node_id == node_id)
                                  .values(run=NR.c.run + 1, started_at=now).returning(NR.c.run))).scalar_one()
        holder = holder_of(node_id, int(run))
        earlier = f"{node_id}:"
        inbox = await conn.execute(_back(INBOX, "processing", INBOX.c.claimed_by.startswith(earlier, autoescape=True),
                                         INBOX.c.claimed_by != holder))
        outbox = await conn.execute(_back(OUTBOX, "sending", OUTBOX.c.claimed_by.startswith(earlier, autoescape=True),
                                          OUTBOX.c.claimed_by != holder).values(next_attempt_at=now))
    return holder, int(inbox.rowcount or 0), int(outbox.rowcount or 0)


async def give_back(engine: AsyncEngine, holder: str, role: str, now: datetime) -> int:
    """The claims `holder` left when its process died: the worker's inbox mails or the sender's
    outbox rows back to the queue, their try not counted."""
    with store_errors("node run"):
        async with engine.begin() as conn:
            if role == "worker":
                done = await conn.execute(_back(INBOX, "processing", INBOX.c.claimed_by == holder))
            else:
                done = await conn.execute(_back(OUTBOX, "sending", OUTBOX.c.claimed_by == holder)
                                          .values(next_attempt_at=now))
    return int(done.rowcount or 0)


def _back(table: Any, claimed: str, *held: Any) -> Any:
    """Rows in state `claimed` that match `held`: pending again, the claim's try not counted."""
    return (update(table).where(table.c.state == claimed, *held)
            .values(state="pending", claimed_until=None,
                    attempts=case((table.c.attempts > 0, table.c.attempts - 1), else_=0)))
