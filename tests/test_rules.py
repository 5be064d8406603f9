"""The status rules (gateway/rules.py), table-driven; the 7×7 grids in test_lifecycle.py check
that the mail path and the actions obey them."""

from __future__ import annotations

import pytest

from gateway import rules
from gateway.model import Status
from gateway.rules import Move

REG, PAA, TIL, AFI, AFR, UDF, LUK = Status

# status -> where an answer from the requester's side moves it (with an assignee, without one)
ANSWER = {
    REG: (None, None),
    PAA: (None, None),
    TIL: (None, None),
    AFI: (None, None),
    AFR: (Move(TIL), Move(PAA)),
    UDF: (Move(TIL, reopens=True), Move(PAA, reopens=True)),
    LUK: (None, None),
}


@pytest.mark.parametrize("current", list(Status))
def test_an_answer_from_the_requester_side(current: Status) -> None:
    assert (rules.after_answer(current, True), rules.after_answer(current, False)) == ANSWER[current]


@pytest.mark.parametrize("current", list(Status))
@pytest.mark.parametrize("target", list(Status))
def test_what_an_agent_may_not_do(current: Status, target: Status) -> None:
    refusal = rules.agent_refusal(current, target, has_assignee=False)
    if current is LUK and target is not LUK:
        assert refusal is not None and "never be reopened" in refusal
    elif target is TIL:
        assert refusal is not None and "assignee" in refusal
    else:
        assert refusal is None
    assert (rules.agent_refusal(current, target, has_assignee=True) is None) == (current is not LUK or target is LUK)


@pytest.mark.parametrize("current", list(Status))
def test_the_requester_may_close_anything_not_closed(current: Status) -> None:
    assert (rules.requester_close_refusal(current) is None) == (current is not LUK)


@pytest.mark.parametrize(("word", "status"), [("udfoert", UDF), (" Tildelt ", TIL), ("LUKKET", LUK),
                                              ("udført", None), ("", None), ("closed", None)])
def test_status_words(word: str, status: Status | None) -> None:
    assert rules.status_named(word) is status
