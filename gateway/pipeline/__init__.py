"""The mail's steps, in order. Pure: two halves around the store's reads.

    parse        gateway.parse_pool (a child process), before the transaction
    triage       classify → thread keys → authenticate: what the mail is, what to look up
    load_facts   store.queries, in the transaction: the sender, the cases the keys name,
                 the Cc'd users, the sender's mails of the last hour
    decide       plan: one frozen `Plan` value
    apply_plan   gateway.apply, in the same transaction

`gateway.apply.handle` runs that sequence. Classify comes first because its answer decides a
read: an automated mail's sender is not counted for the loop guard. Which plan an outcome
gets, and in what order its conditions are asked, is `plan.make_plan`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.model import Facts, ParsedMail, Plan, Triage
from gateway.pipeline.classify import classify
from gateway.pipeline.identify import authenticated
from gateway.pipeline.plan import PlanPolicy, make_plan
from gateway.pipeline.thread import thread_keys

Planner = Callable[[ParsedMail, Triage, Facts, PlanPolicy], Plan]


@dataclass(frozen=True)
class Policy:
    """The part of the settings the pure steps need."""

    own_addresses: frozenset[str]
    message_id_domain: str
    token_secret: str
    addresses: tuple[str, ...]
    authserv_id: str = ""
    plan: PlanPolicy = field(default_factory=PlanPolicy)
    planner: Planner = make_plan  # the plan step (a test passes one that fails)


def triage(mail: ParsedMail, policy: Policy) -> Triage:
    """The steps before the reads: the mail's kind, its thread keys, whether it proves its
    sender, and which of its addresses the store must look up."""
    kind = classify(mail, policy.own_addresses, policy.message_id_domain)
    keys = thread_keys(mail, policy.token_secret, policy.addresses, policy.plan.case_prefix)
    proven = authenticated(mail, policy.authserv_id, policy.plan.sender_authentication)
    counted = mail.from_addr is not None and not kind.is_automated
    return Triage(kind, proven, keys, mail.from_addr, cc=mail.cc if policy.plan.cc_sharing else (),
                  recent_cap=policy.plan.max_mails_per_sender_per_hour if counted else 0)


def decide(mail: ParsedMail, triage: Triage, facts: Facts, policy: Policy) -> Plan:
    """The step after the reads: what the mail does."""
    return policy.planner(mail, triage, facts, policy.plan)
