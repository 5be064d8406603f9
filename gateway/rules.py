"""The case's status rules (rules §3), once: the mail path (`gateway.pipeline.plan`) and the
actions of agents and requesters (`gateway.lifecycle`) ask the same table.

    an answer from the requester's side (a mail, a portal or API comment)
        afventer_rekvirent  → back to work: tildelt when the case has an assignee, else paabegyndt
        udfoert             → the same, and that is a reopen (the parties are told so)
        lukket              → never touched: a mail opens a new case that follows it
    an agent sets a status  → any, but never out of lukket, and tildelt only with an assignee
    the requester closes    → lukket, from any status but lukket
    time                    → udfoert for the configured days becomes lukket (`gateway.jobs`)

Pure: the standard library and `gateway.model` only.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.model import Status

# A closed case is never changed again; a mail about it opens a new case that follows it.
FINAL = Status.LUKKET

# The statuses an answer from the requester's side moves back to work, and whether that
# move is a reopen (rules 1–2).
BACK_TO_WORK: dict[Status, bool] = {Status.AFVENTER_REKVIRENT: False, Status.UDFOERT: True}

STATUS_WORDS = ", ".join(status.value for status in Status)


@dataclass(frozen=True, slots=True)
class Move:
    """A status change a rule calls for."""

    to: Status
    reopens: bool = False


def is_final(status: Status) -> bool:
    return status is FINAL


def after_answer(current: Status, has_assignee: bool) -> Move | None:
    """Where an answer from the requester's side moves a case; None: it stays where it is."""
    reopens = BACK_TO_WORK.get(current)
    if reopens is None:
        return None
    return Move(Status.TILDELT if has_assignee else Status.PAABEGYNDT, reopens)


def agent_refusal(current: Status, target: Status, has_assignee: bool) -> str | None:
    """Why an agent may not move a case from `current` to `target` (rule 6), or None."""
    if is_final(current) and target is not current:
        return "a closed case (lukket) can never be reopened; a new mail opens a new case"
    if target is Status.TILDELT and not has_assignee:
        return "tildelt needs an assignee: use assign with the agent's address"
    return None


def requester_close_refusal(current: Status) -> str | None:
    """Why the requester may not close ("Luk", rule 5), or None."""
    if is_final(current):
        return "the case is already closed"
    return None


def status_named(word: str) -> Status | None:
    """The status a word names (its key, in any case, spaces around it), or None."""
    try:
        return Status(word.strip().lower())
    except ValueError:
        return None
