"""Courtesy replies (rules §5): a reply that only says thanks, perhaps with a greeting and a
signature, does not reopen a finished case."""

from __future__ import annotations

import re

from gateway.pipeline.reply import QUOTED, RULE, split_reply
from gateway.pipeline.signature import DEVICE_FOOTER

# Deliberately strict: a false "courtesy" leaves a real problem unanswered on a finished
# case, while a false "not courtesy" only reopens it.
_THANKS = re.compile(
    r"^(?:(?:hej|hejsa|hi|hello)(?:\s+[^\W\d_]+)?\s+)?"
    r"(?:(?:ok|okay|super|perfekt|fint|godt|dejligt|great|perfect|fine|cool)\s+)?"
    r"(?:(?:mange|tusind|1000|rigtig\s+mange|hjertelig|many|big)\s+)?"
    r"(?:tak|takk|tack|thanks|thank\s+you|thx|tx|ty|tnx|danke)"
    r"(?:\s+(?:skal\s+du\s+have|skal\s+i\s+have|så\s+meget|very\s+much|so\s+much|a\s+lot|again|igen))?"
    r"(?:\s+for\s+(?:(?:din|jeres|your|the|all|alt|det|et|en)\s+)?(?:(?:hurtige|hurtigt|quick|fast)\s+)?"
    r"(?:hjælpen|hjælp|svaret|svar|det|indsatsen|help|reply|answer|response|everything|alt))?$"
)
_SALUTATION = re.compile(r"^(?:hej|hejsa|hi|hello|kære|dear|goddag|god\s+morgen)(?:\s+[^\W\d_]+){0,3}$")
_SIGN_OFF = re.compile(
    r"^(?:med\s+venlig\s+hilsen|venlig\s+hilsen|vh|mvh|hilsen|kh|kærlig\s+hilsen|de\s+bedste\s+hilsner"
    r"|bedste\s+hilsner|best\s+regards|kind\s+regards|regards|best|br|cheers|god\s+dag|god\s+weekend"
    r"|ha\s+en\s+god\s+dag|have\s+a\s+nice\s+day)\b"
)
_NAME = re.compile(r"^/?[A-ZÆØÅÄÖÜÉ][\w'.-]*(?:\s+[A-ZÆØÅÄÖÜÉ][\w'.-]*){0,3}$")
_PIECES = re.compile(r"(?<=[.!,;])\s+")
_MAX_COURTESY_CHARS = 400
_MAX_SIGNATURE_LINES = 6


def is_courtesy_reply(text: str) -> bool:
    """True when the new text is only a thank-you, perhaps with a greeting and signature."""
    visible, signature = split_reply(text)
    visible = f"{visible}\n\n{signature}" if signature else visible
    if len(visible) > _MAX_COURTESY_CHARS:
        return False
    # Quoted lines only survive when nothing new was written, and then nobody said thanks.
    pieces = [piece for line in visible.split("\n") if not DEVICE_FOOTER.match(line) and not QUOTED.match(line)
              for piece in _PIECES.split(line.strip()) if piece]
    if pieces and _SALUTATION.match(_words(pieces[0])) and not _THANKS.match(_words(pieces[0])):
        pieces = pieces[1:]
    if not pieces or not _THANKS.match(_words(pieces[0])):
        return False
    return _only_closing(pieces[1:])


def _only_closing(pieces: list[str]) -> bool:
    """A sign-off ("Mvh", "--") and a short signature after it, or just a name."""
    for index, piece in enumerate(pieces):
        if _SIGN_OFF.match(_words(piece)) or RULE.match(piece):
            rest = pieces[index + 1 :]
            return len(rest) <= _MAX_SIGNATURE_LINES and all(_signature_line(r) for r in rest)
        if not _NAME.match(piece.strip(" ,.!")):
            return False
    return True


def _signature_line(line: str) -> bool:
    return len(line) <= 60 and "?" not in line and not re.match(r"(?i)p\.?\s?s\b", line)


def _words(line: str) -> str:
    """Lower-case words only: "Mange tak!! :-)" -> "mange tak"."""
    return " ".join(re.sub(r"[^\w\s]", " ", line.lower()).split())
