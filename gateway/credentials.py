"""Who is calling the HTTP API, and the tokens that say so (issue 17, items 3 and 4).

- An **agent token** (`gateway tokens issue --agent EMAIL`) acts as that agent and no one else.
- A **service token** (`gateway tokens issue --service NAME`) is an integration, such as the
  portal, that acts for the agent it names in each request (`X-Acting-User`); what it does is
  recorded with both names: the agent as the actor, the service as `via`.
- A **requester token** (`POST /users/token`, issued to agents and services) acts as one
  customer until it expires (`api.requester_token_lifetime_s`) or the operator revokes the
  customer's tokens (`gateway users revoke-tokens EMAIL`).

API tokens are shown once, when issued; the store keeps only their SHA-256 and finds a token
by it (`gateway.tokens`). `Unauthenticated` is a missing, unknown, revoked or expired token;
a valid token whose holder may not act is `lifecycle.Forbidden`.
"""

from __future__ import annotations

import hmac
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.clock import Clock
from gateway.errors import GatewayError, NotFound, Refused
from gateway.lifecycle import Forbidden, InvalidInput, require_address
from gateway.model import Role
from gateway.settings import ApiSettings
from gateway.tokens import (
    API_TOKEN_PREFIX,
    RequesterClaims,
    api_token_hash,
    new_api_token,
    requester_claims,
    requester_token,
)
from store import api_tokens, users, writes
from store.engine import Sessions
from store.transact import in_session, run_in, transaction

log = logging.getLogger("gateway.credentials")

_SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@ -]{0,99}")


class Unauthenticated(GatewayError):
    """No valid token: none, unknown, revoked, expired, or of a format no longer accepted."""


@dataclass(frozen=True, slots=True)
class Caller:
    agent: bool  # an agent's or a service's token: the agents' reads and actions
    email: str | None = None  # the agent (agent token) or the customer (requester token)
    service: str | None = None  # a service token's name; such a caller names its agent per request
    token_id: int | None = None


LEGACY_SERVICE = "api.agent_tokens"  # the `via` of what the deprecated shared tokens do


@dataclass(frozen=True)
class TokenDesk:
    """What the tokens are checked and issued with, built once by the root (`gateway.app`)."""

    sessions: Sessions
    clock: Clock
    api: ApiSettings  # the requester tokens' secret and lifetime, the deprecated shared tokens


async def authenticate(desk: TokenDesk, token: str) -> Caller:
    if token.startswith(API_TOKEN_PREFIX):
        return await _api_token_caller(desk, token)
    if _is_legacy(desk.api.agent_tokens, token):
        return Caller(agent=True, service=LEGACY_SERVICE)
    return await _requester_caller(desk, token)


def _is_legacy(configured: tuple[str, ...], token: str) -> bool:
    """One of the deprecated `api.agent_tokens`: kept working as service tokens until replaced."""
    raw = token.encode("utf-8", "surrogateescape")
    return any(hmac.compare_digest(raw, known.encode()) for known in configured)


async def _api_token_caller(desk: TokenDesk, token: str) -> Caller:
    found = await in_session(desk.sessions, api_tokens.holder, api_token_hash(token), desk.clock.now())
    if found is None:
        raise Unauthenticated("unknown or revoked token")
    if found.kind == api_tokens.SERVICE:
        return Caller(agent=True, service=found.name, token_id=found.id)
    if found.role != Role.AGENT.value:
        raise Forbidden(f"API token {found.id} belongs to {found.email}, who is no longer an agent")
    return Caller(agent=True, email=found.email, token_id=found.id)


async def _requester_caller(desk: TokenDesk, token: str) -> Caller:
    claims = requester_claims(desk.api.requester_token_secret, token)
    if claims is None:
        raise Unauthenticated("unknown token")
    if not claims.valid_at(int(desk.clock.now().timestamp())):
        raise Unauthenticated("the token has expired; ask for a new one")
    user = await in_session(desk.sessions, api_tokens.token_user, claims.email)
    if user is None:
        raise Unauthenticated("unknown token")
    if user.generation != claims.generation:
        raise Unauthenticated("the token was revoked; ask for a new one")
    if user.role == Role.AGENT.value:
        raise Forbidden("requester tokens are for customers; agents use an agent token")
    return Caller(agent=False, email=user.email)


# --- requester tokens ---------------------------------------------------------------------------


async def issue_requester_token(desk: TokenDesk, email: str | None) -> dict[str, Any]:
    """A token that acts as one customer, for the portal acting on their behalf."""
    address = require_address(email)
    user = await in_session(desk.sessions, api_tokens.token_user, address)
    if user is None:
        raise NotFound(f"no user {address}")
    if user.role == Role.AGENT.value:
        raise Refused(f"{address} is an agent; agents use agent tokens")
    claims = RequesterClaims(user.email, int(desk.clock.now().timestamp()), desk.api.requester_token_lifetime_s,
                             user.generation)
    return {"email": user.email, "token": requester_token(desk.api.requester_token_secret, claims),
            "expires_at": datetime.fromtimestamp(claims.expires_at, UTC).isoformat()}


async def revoke_requester_tokens(desk: TokenDesk, email: str | None) -> dict[str, Any]:
    """Every requester token issued to this user so far is refused from now on."""
    address = require_address(email)
    generation = await in_session(desk.sessions, writes.bump_token_generation, address)
    log.info("user.tokens_revoked", extra={"generation": generation})
    return {"email": address, "revoked": True}


# --- agent and service tokens --------------------------------------------------------------------


async def issue_api_token(desk: TokenDesk, agent: str | None = None, service: str | None = None) -> dict[str, Any]:
    """A new token for an agent or a service, returned this once; only its hash is kept."""
    token = new_api_token()
    async with transaction(desk.sessions) as session:
        if agent is not None:
            user = await run_in(session, users.require, require_address(agent))
            if user.role is not Role.AGENT:
                raise Refused(f"{user.email} is not an agent (gateway users add EMAIL --agent)")
            token_id = await run_in(session, api_tokens.add, api_tokens.AGENT, api_token_hash(token),
                                    desk.clock.now(), user_id=user.id)
            holder: dict[str, Any] = {"kind": api_tokens.AGENT, "agent": user.email, "service": None}
        else:
            name = (service or "").strip()
            if not _SERVICE_NAME.fullmatch(name):
                raise InvalidInput("a service name is 1-100 letters, digits and . _ @ - or spaces")
            token_id = await run_in(session, api_tokens.add, api_tokens.SERVICE, api_token_hash(token),
                                    desk.clock.now(), name=name)
            holder = {"kind": api_tokens.SERVICE, "agent": None, "service": name}
    log.info("token.issued", extra={"token_id": token_id, "kind": holder["kind"]})
    return {"id": token_id, **holder, "token": token}


async def list_api_tokens(desk: TokenDesk) -> list[dict[str, Any]]:
    return await in_session(desk.sessions, api_tokens.listing)


async def revoke_api_token(desk: TokenDesk, token_id: int) -> dict[str, Any]:
    changed = await in_session(desk.sessions, api_tokens.revoke, token_id, desk.clock.now())
    log.info("token.revoked", extra={"token_id": token_id})
    return {"id": token_id, "revoked": True, "changed": changed}
