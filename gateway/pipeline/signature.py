"""A reply's signature (rules §5): the last block that starts at "-- ", a closing ("Med venlig
hilsen", "Mvh Jens", "Best regards") or a device footer ("Sent from my iPhone") and holds only
short lines to the end. gateway.pipeline.reply splits it off: kept with the comment, shown
apart. mail-parser-reply's own signature heuristic is not used: it runs to the end from any
line that starts with "Tak" or "- x", which would hide real content (and bullet lists).
"""

from __future__ import annotations

import re

# "Sent from my iPhone" and its kin: a signature of its own, and noise at the end of a text.
DEVICE_FOOTER = re.compile(
    r"^\s*(?:sent from my|sent from (?:mail|outlook|yahoo|typeapp)|sent with (?:sparrow|proton|spark|blackberry)"
    r"|sent via|get outlook for|sendt fra min|sendt fra (?:mail|outlook|yahoo)|hent outlook til|skickat från min"
    r"|von meinem|gesendet von|verzonden (?:vanaf|met) mijn|envoyé (?:de|depuis) mon|envoyé à partir de"
    r"|inviato da|enviado desde mi|wysłano z|отправлено с|lähetetty)\b(?![^\n]*,\s)[^\n]{0,80}(?<![.!?])$",
    re.IGNORECASE,
)
# A device footer on any line: on the first, or after a line break. Python's `re` tries a `^` of
# MULTILINE at every position of the text; a pattern that starts with "\n" it tries only at the
# line breaks, which it finds by a fast search: ~45 µs on 20 KB of text against ~100-115 µs.
# The lookahead is the first letters of the phrases above: on a line that starts otherwise the
# search moves on at once instead of trying each phrase in turn (45 -> 12 µs on 20 KB of text).
_FIRST_LETTERS = "sghveiwlо"  # the last is Cyrillic: "отправлено"
_PHRASES = DEVICE_FOOTER.pattern.removeprefix(r"^\s*")
_FOOTER_FIRST = re.compile(rf"\s*(?=[{_FIRST_LETTERS}]){_PHRASES}", re.IGNORECASE | re.MULTILINE)
_FOOTER_BELOW = re.compile(rf"\n\s*(?=[{_FIRST_LETTERS}]){_PHRASES}", re.IGNORECASE | re.MULTILINE)


def has_device_footer(text: str) -> bool:
    """Whether a line of `text` is a device footer."""
    return _FOOTER_FIRST.match(text) is not None or _FOOTER_BELOW.search(text) is not None


# Closings in the languages the mailbox sees, alone or with a capitalised name after them
# ("Mvh Jens", "Med venlig hilsen, Jens Hansen"). "Tak"/"Thanks" are not closings here: they
# are often the whole message (is_courtesy_reply) and talon's fixtures keep "Thanks,\nAlex".
_CLOSING = re.compile(
    r"^(?:med\s+venlig\s+hilsen|venlig(?:st)?\s+hilsen|venligst|mange\s+hilsner|(?:de\s+)?bedste\s+hilsn?(?:er|en)"
    r"|kærlig\s+hilsen|hilsen|mvh|vh|kh|med\s+vennlig\s+hilsen|vennlig\s+hilsen"
    r"|med\s+vänlig(?:a)?\s+hälsning(?:ar)?|vänlig(?:a)?\s+hälsning(?:ar)?|hälsningar"
    r"|(?:best|kind|warm|warmest)\s+regards|regards|best\s+wishes|(?:yours\s+)?sincerely|yours\s+truly|cheers|best"
    r"|mit\s+freundlichen\s+gr(?:ü|ue)(?:ß|ss)en|(?:freundliche|viele|beste|liebe)\s+gr(?:ü|ue)(?:ß|ss)e|mfg"
    r"|met\s+vriendelijke\s+groet(?:en)?|vriendelijke\s+groet(?:en)?|hartelijke\s+groet(?:en)?|groeten|mvg"
    r"|(?:bien\s+)?cordialement|(?:meilleures\s+)?salutations|bien\s+à\s+vous"
    r"|pozdrawiam|z\s+powa(?:ż|z)aniem|с\s+уважением|ystävällisin\s+terveisin|terveisin"
    r"|cordiali\s+saluti|distinti\s+saluti|saludos|atentamente|un\s+saludo|s\s+pozdravem)"
    r"[\s,.!]*(?-i:(?:[,\s]\s*[A-ZÆØÅÄÖÜÉ][\w'.-]*(?:\s+[A-ZÆØÅÄÖÜÉ][\w'.-]*){0,3})?)[\s,.!]*$",
    re.IGNORECASE,
)
_INITIAL_CLOSING = re.compile(r"^/\s?[A-ZÆØÅÄÖÜ][\w.-]{0,30}$")  # Swedish and Danish "/Jens" on its own
_UNDERSCORES = re.compile(r"^_{2,}$")
_QUESTION = re.compile(r"\?(?:\s|$)")  # a question, not the "?" of a URL
_SIGNATURE_LINES = 12
_SIGNATURE_WIDTH = 100
_DELIMITED_LINES = 20  # after "-- " the sender said where the signature starts
_DELIMITED_WIDTH = 160


def split_signature(lines: list[str]) -> tuple[list[str], list[str]]:
    """(text, signature): the signature starts at the first marker below which only a signature
    follows; a text that would be all signature keeps it all."""
    first = next((i for i, line in enumerate(lines) if line.strip()), len(lines))
    start, count = len(lines), 0
    while start > first + 1 and count <= _DELIMITED_LINES:  # no signature has more lines:
        start -= 1  # the search starts that far from the end
        count += bool(lines[start].strip())
    for index in range(start, len(lines)):
        limits = _signature_limits(lines[index].strip(), index == len(lines) - 1)
        if limits is not None and _signature_tail(lines[index + 1 :], *limits):
            return lines[:index], lines[index:]
    return lines, []


def _signature_limits(line: str, last: bool) -> tuple[int, int] | None:
    """How many and how wide the lines below may be if a signature starts at `line`, or None."""
    if not line or len(line) > _SIGNATURE_WIDTH:
        return None
    if line == "--" or _UNDERSCORES.match(line):  # "-- ", or a list footer under "__…"
        return _DELIMITED_LINES, _DELIMITED_WIDTH
    if _CLOSING.match(line) or DEVICE_FOOTER.match(line) or (last and _INITIAL_CLOSING.match(line)):
        return _SIGNATURE_LINES, _SIGNATURE_WIDTH
    return None


def _signature_tail(lines: list[str], most: int, width: int) -> bool:
    """Name, title, phone, address…: a few short lines, no question, no quote, no "PS"."""
    filled = [line.strip() for line in lines if line.strip()]
    return len(filled) <= most and all(
        len(line) <= width and not _QUESTION.search(line) and not line.startswith(">")
        and not re.match(r"(?i)p\.?\s?s\b", line) for line in filled)
