"""Reply text (rules §5): the new part of a reply, without the quoted history, and its signature.

The quote headers of each language ("Fra:/Sendt:/Til:/Emne:", "Den … skrev …:", "On …
wrote:", "-----Original Message-----") come from mail-parser-reply's header grammar, for every
language it knows (`LANGUAGES`). Around it we add what that library does not do:

* `>` quote blocks are removed wherever they are, with the attribution line above them, so
  inline and bottom-posted answers keep their text; so are Supercite "JH>" runs, and "| "
  runs under an attribution (old Gmail's "2013/7/20 Name <x@y>" has no colon);
* attributions wrapped over up to four lines ("… <jens@x.dk" / ">:", German Gmail's
  "… schrieb am Fr., 28." / "Apr. 2017 um 11:53 Uhr:") are joined first; any
  "<date> … <address> <verb>:" line counts as an attribution whatever its language, and
  "Name <address> wrote:" without a date too;
* "-------- Oprindelig besked --------" (also in bold, "*---…---*") and its relatives end the
  new text; so does a forward marker under new text, while a mail that opens with one is
  only a forward: its forwarded text is the content;
* a tracker's lone "ᐧ" line is no text;
* Outlook's From/Sent/To/Subject block in the languages the library lacks (Russian
  "От:/Отправлено:", Finnish, Portuguese…) and "<date> … <name> <verb>:" attributions with
  the verb of any of them (Dutch "Op … schreef … het volgende:"); Windows Mail's invisible
  left-to-right marks are removed first;
* dangling separators at the end are dropped.

The signature is split off (`split_reply`) by gateway.pipeline.signature; whether a reply is
only a thank-you is gateway.pipeline.courtesy's question.

All of it is line based and bounded: only the first `_SCAN_LINES` lines are searched for
headers, and only short lines can be headers, since some library patterns are quadratic
in the length of a line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from mailparser_reply import EmailMessage, EmailReplyParser

from gateway.pipeline.charsets import lf_line_ends
from gateway.pipeline.signature import DEVICE_FOOTER, has_device_footer, split_signature

_SCAN_LINES = 2000
_SCAN_CHARS = 64_000
_HEADER_LINE = 200  # longer lines are never quote headers
_LABEL_ONLY = 60  # a line that cannot be an attribution only needs its "Label:" start

# Every language mail-parser-reply has a grammar for ("david" is one program's header, not a language).
LANGUAGES: tuple[str, ...] = ("da", "en", "de", "nl", "sv", "fr", "it", "es", "pl", "cs", "ja", "ko", "zh")
QUOTED = re.compile(r"^\s*>")
_ADDRESS = r"(?:mailto:)?[^\s<>()\[\]@\"']+@[^\s<>()\[\]\"']+"
# "<date or time> … <address> [verb]:" in any language: Russian, Finnish, Yandex, Polish…
_ATTRIBUTION = re.compile(
    r"^(?=[^\n]*\d)[^\n]{0,200}?[<(\[]\s*" + _ADDRESS + r"\s*[>)\]][\s\"']*(?:[^\s:]+(?:\s+[^\s:]+)?)?\s*:$"
)
# Continuation lines of an attribution wrapped by the sender's client.
_WRAPPED_TAIL = re.compile(
    r"^\s*(?:[<(\[]?\s*" + _ADDRESS + r"\s*[>)\]]?\s*)?[>)\]]?\s*(?:[^\s:]+(?:\s+[^\s:]+){0,2})?\s*:?$"
)
_WRAPPED_TAIL_LEN = 120
_REWRAPPED_WIDTH = 60  # a quoted line at least this long may have been wrapped by the client
# Forward markers: a separator too ("---------- Forwarded message ---------"), and when one opens
# the text the forwarded mail is the content (`_forwarded_body`).
_FORWARDED = (r"forwarded message|forwarded e-?mail|videresendt (?:meddelelse|besked|e-?mail|melding)"
              r"|vidarebefordrat meddelande|weitergeleitete nachricht|message transf[ée]r[ée]|doorgestuurd bericht"
              r"|messaggio inoltrato|mensaje reenviado|mensagem encaminhada|пересылаемое сообщение")
_SEPARATOR = re.compile(
    r"^[\s*_]*-{2,}\s*(?:" + _FORWARDED + r"|original message|oprindelig (?:meddelelse|besked|e-?mail)|opprinnelig melding"
    r"|ursprungligt meddelande|urspr(?:ü|ue)ngliche nachricht|originalnachricht|message d'origine"
    r"|alkuperäinen viesti|oorspronkelijk bericht|origineel bericht|исходное сообщение|messaggio originale"
    r"|mensaje original|mensagem original|wiadomość oryginalna|původní zpráva|eredeti üzenet"
    r"|[^\n]{0,120}\b(?:wrote|schreef|schrieb|skrev|a écrit|написал\(?а?\)?)\b[^\n]{0,40}?)\s*-{2,}[\s*_]*$",
    re.IGNORECASE,
)
_FORWARD_MARKER = re.compile(r"^[\s*_]*-{2,}\s*(?:" + _FORWARDED + r")\s*-{2,}[\s*_]*$|^\s*begin forwarded message:$",
                             re.IGNORECASE)
# "<date> … <name> <verb>:" in the languages whose verb the library lacks or only knows at the
# very end ("Op … schreef Jan het volgende:", "… написал(а):", "… kirjoitti:").
_WROTE = re.compile(
    r"^(?=[^\n]*\d)[^\n]{0,200}?(?<!\w)(?:wrote|schreef|schrieb|skrev|skriver|kirjoitti|napisał\(a\)|napisał"
    r"|napsal\(a\)|a écrit|ha scritto|escribió|escreveu|написал\(а\)|написала|написал|пишет|írta|yazdı)"
    r"(?!\w)(?:[^\n:]|(?<=\d):(?=\d\d)){0,60}\s?:$",  # "schrieb am 28. Apr. 2017 um 11:53 Uhr:"
    re.IGNORECASE,
)
# "Some One <x@y> wrote:", "… via Forum <x@y> schrieb:": no date, so only with an address right
# before the verb and the colon at the end.
_NAMED_WROTE = re.compile(
    r"^[^\n<>]{0,120}?[<(\[]\s*" + _ADDRESS + r"\s*[>)\]][\s\"']*(?:wrote|schreef|schrieb|skrev|skriver|kirjoitti"
    r"|napisał\(a\)|napisał|napsal\(a\)|a écrit|ha scritto|escribió|escreveu|написал\(а\)|написала|написал|пишет"
    r"|írta|yazdı)\s?:$",
    re.IGNORECASE,
)
# Gmail's old colon-less attribution over "| " quotes: "2013/7/20 Name <x@y>" (a year, an address
# at the end). Taken only right above a quote block.
_COLONLESS_ATTRIBUTION = re.compile(
    r"^(?=[^\n]*\b(?:19|20)\d\d\b)[^\n]{0,200}?[<(\[]\s*" + _ADDRESS + r"\s*[>)\]]$")
# Supercite quotes with the writer's initials: "JH> text", "C>".
_SUPERCITE = re.compile(r"^\s?([A-Za-z]{1,4})>(?:\s|$)")
_BAR_QUOTED = re.compile(r"^\s*\|")
_WRAPPED_PARTS = 4  # an attribution wrapped over at most this many lines (blank lines between not counted)
# "On Wed, 14 Nov 2018 08:14:43 -0200 John Doe <john@doe.com> wrote": no colon, so only with
# a date and an address right before the verb at the end of the line.
_WROTE_NO_COLON = re.compile(
    r"^(?=[^\n]*\d)[^\n]{0,200}?[<(\[]\s*" + _ADDRESS + r"\s*[>)\]]\s*(?:wrote|schrieb|skrev|schreef|a écrit"
    r"|ha scritto|escribió|написал\(а\)|написал|kirjoitti)$", re.IGNORECASE)
# Outlook's header block, in more languages than the library: a From line, then Sent/To/Subject.
_BLOCK_FROM = re.compile(
    r"^[\s*]*(?:from|fra|från|von|van|de|da|od|от|від|lähettäjä|feladó|afsender|avsändare|kimden|remitente"
    r"|发件人|寄件者|差出人|보낸\s?사람)[\s*]*:", re.IGNORECASE)
_BLOCK_LABEL = re.compile(
    r"^[\s*]*(?:sent|sendt|skickat|gesendet|verzonden|envoyé|enviado|enviada|inviato|wysłano|odesláno|отправлено"
    r"|дата|date|datum|dato|päivämäärä|lähetetty|data|fecha|to|til|till|an|aan|à|a|para|do|komu|кому"
    r"|vastaanottaja|címzett|subject|emne|ämne|betreff|onderwerp|objet|oggetto|asunto|assunto|temat|předmět"
    r"|тема|aihe|tárgy|sujet|copie à|cc|kopi|kopia|копия|kopie|发送时间|收件人|主题|件名|宛先|送信日時|제목|받는\s?사람)[\s*]*:",
    re.IGNORECASE)
_LABEL_LINE = re.compile(r"^[^\W\d_][\w .'-]{0,30}?\s?:\s?\S")
_BLOCK_LINES = 6  # a From line and the labels that follow it within this many lines
_LABEL = re.compile(r"^[\s>*]*[^\W\d_][^\W\d_ ]{0,15}(?: [^\W\d_]{1,15})?[\s*]*:", re.MULTILINE)
RULE = re.compile(r"^\s*[-_=*~]{2,}\s*$")  # "--", "____…" left after a cut
_FROM_LABEL = re.compile(r"^[\s>*]*(?:from|fra|från|von|de|da|van|od|от|afsender|lähettäjä)[\s*]*:", re.IGNORECASE)

def visible_text(text: str, languages: tuple[str, ...] = LANGUAGES) -> str:
    """The new text of a reply without its signature; the stripped input when nothing new is left."""
    return split_reply(text, languages)[0]


def split_reply(text: str, languages: tuple[str, ...] = LANGUAGES) -> tuple[str, str]:
    """(the new text of a reply without its signature, the signature or "")."""
    text = _normalise(text)
    lines = [line.rstrip() for line in text.split("\n")]
    if not any(line.strip() for line in lines):
        return "", ""
    headers = _header_regex(languages)
    lines = lines[_forwarded_body(lines):]
    # Each step is skipped when the text lacks what all it looks for has (an attribution or a
    # header label has a ":", a quote a ">", a separator a line that starts "--", "___" or
    # "==="): they go line by line, and on a 20 KB mail without them they were a third of its
    # parse (tests/test_reply.py checks the answers against every step run).
    if ":" in text:
        lines = _join_wrapped_attributions(lines, headers)
    kept = _drop_quote_blocks(lines, headers) if ">" in text or "|" in text else lines
    if ":" in text or _RULE_FIRST.match(text) or _RULE_NEXT.search(text) or has_device_footer(text):
        kept = kept[: _history_start_below_top(kept, headers)]
    kept, signature = split_signature(_drop_trailing_noise(kept, footers=False))
    result = "\n".join(_squeeze_blank_lines(_drop_trailing_noise(kept))).strip("\n")
    if not result.strip():
        return "\n".join(lines).strip(), ""
    return result, "\n".join(_squeeze_blank_lines(signature)).strip("\n")


def _forwarded_body(lines: list[str]) -> int:
    """Where the forwarded mail's text starts when the text opens with a forward marker (a mail
    that is only a forward: its content is the forwarded text), else 0. The marker and the
    header block under it (to the first blank line) are left to the full text."""
    first = next((i for i, line in enumerate(lines) if line.strip()), len(lines))
    if first == len(lines) or not _FORWARD_MARKER.match(lines[first]):
        return 0
    gap = next((i for i in range(first + 1, len(lines)) if not lines[i].strip()), len(lines))
    block = lines[first + 1 : gap]
    if block and not _FROM_LABEL.match(block[0]):
        return first + 1  # no header block under the marker
    body = next((i for i in range(gap, len(lines)) if lines[i].strip()), len(lines))
    return body if body < len(lines) else 0


_RULE_FIRST = re.compile(r"[ \t*]*[-_=]")  # a line that may start a separator, at the text's start
_RULE_NEXT = re.compile(r"\n[ \t*]*[-_=]")  # ... or after a line break (a literal first: fast)


# Mail trackers (Gmail add-ons) put a lone "ᐧ" (U+1427) line under the text: no text of the sender's.
_TRACKER = "\u1427"
_TRACKER_LINE = re.compile(r"^[ \t]*\u1427[ \t]*$", re.MULTILINE)
_INVISIBLE = ("\ufeff", "\u200b", "\x00", "\u200e", "\u200f")


def _normalise(text: str) -> str:
    """One kind of line end; no zero-width or direction marks (Windows Mail puts left-to-right
    marks inside its quote headers: "Sendt:\u200e \u200e3.\u200e marts")."""
    text = lf_line_ends(text)
    if _TRACKER in text:
        text = _TRACKER_LINE.sub("", text)
    for mark in _INVISIBLE:  # str.replace per mark: cheaper than str.translate on this text
        if mark in text:
            text = text.replace(mark, "")
    return text


@lru_cache(maxsize=16)
def _header_regex(languages: tuple[str, ...]) -> re.Pattern[str]:
    """mail-parser-reply's quote-header grammar for these languages (plus English).

    Only the grammar is used: `read()` would also run the signature heuristic we do not
    want, and returns re-normalised fragments where we need line positions.
    """
    known = EmailReplyParser(languages=list(languages)).languages
    pattern: re.Pattern[str] = EmailMessage(text="", languages=list(known)).HEADER_REGEX
    return pattern


def _is_attribution(line: str, headers: re.Pattern[str]) -> bool:
    """A single line that introduces quoted text ("On … wrote:", "Den … skrev …:")."""
    line = line.strip()
    if len(line) > _HEADER_LINE or not line.endswith(":"):
        return False
    return bool(_ATTRIBUTION.match(line) or _WROTE.match(line) or _NAMED_WROTE.match(line) or headers.search(line))


def _is_bare_attribution(line: str) -> bool:
    line = line.strip()
    return len(line) <= _HEADER_LINE and line.endswith(("wrote", "schrieb", "skrev", "schreef", "écrit", "scritto",
                                                         "escribió", "написал", "(а)", "kirjoitti")) \
        and bool(_WROTE_NO_COLON.match(line))


def _join_wrapped_attributions(lines: list[str], headers: re.Pattern[str]) -> list[str]:
    """Clients wrap long attributions: Gmail's "… Jens <jens@x.dk" + ">:", "… Coe" +
    "<a@b> kirjoitti:", German Gmail's "… schrieb am Fr., 28." + "Apr. 2017 um 11:53 Uhr:",
    and up to `_WRAPPED_PARTS` lines ("On … Some One" / "<" / "mailto:… <x@y>" / "> wrote:")."""
    out: list[str] = []
    for line in lines:
        if line.endswith(":") and len(line) <= _WRAPPED_TAIL_LEN and out:
            joined = _wrapped_attribution(out, line, headers)
            if joined is not None:
                start, text = joined
                del out[start:]
                out.append(text)
                continue
        out.append(line)
    return out


def _wrapped_attribution(out: list[str], line: str, headers: re.Pattern[str]) -> tuple[int, str] | None:
    """(index in `out` where the attribution ending at `line` starts, the joined line), or None.

    The first line of a wrapped attribution holds its date, so the shortest join whose first
    line has a digit and that one of our own patterns takes wins ("<x@y>" + "a écrit :" alone is
    not the whole of 'Le 4 janv. 2016 19:03, "Name"' / "<x@y>" / "a écrit :"). Failing that, two
    lines may still make any attribution, the library's grammar included, as before."""
    whole = _is_attribution(line, headers)
    if whole and not (line.lstrip().startswith(("<", "(", "[")) or out[-1].rstrip().endswith(("<", "(", "["))):
        return None  # a whole attribution; only one wrapped at its address lacks its head
    parts, index, blank = [line.strip()], len(out), 0
    first_pair: tuple[int, str] | None = None
    while index and len(parts) < (2 if whole else _WRAPPED_PARTS):
        index -= 1
        previous = out[index].strip()
        if not previous:
            blank += 1
            if blank > 1 or whole:
                break
            continue
        if len(previous) > _HEADER_LINE or QUOTED.match(previous) or _is_attribution(previous, headers):
            break
        blank = 0
        parts.insert(0, previous)
        joined = _glue(parts)
        if len(joined) > _HEADER_LINE:
            break
        if any(ch.isdigit() for ch in previous) and (
                _ATTRIBUTION.match(joined) or _WROTE.match(joined) or _NAMED_WROTE.match(joined)):
            return index, joined
        if len(parts) == 2 and previous == out[-1].strip() and not whole \
                and _may_continue(previous, line) and _is_attribution(joined, headers):
            first_pair = (index, joined)
    return first_pair


def _may_continue(previous: str, line: str) -> bool:
    return (line.endswith(":") and 0 < len(previous.strip()) <= _HEADER_LINE
            and len(line) <= _WRAPPED_TAIL_LEN and bool(_WRAPPED_TAIL.match(line)))


def _glue(parts: list[str]) -> str:
    joined = parts[0]
    for part in parts[1:]:
        joined += ("" if joined.endswith(("<", "(", "[")) or part.startswith(">") else " ") + part
    return joined


def _drop_quote_blocks(lines: list[str], headers: re.Pattern[str]) -> list[str]:
    """Remove `>` lines, Supercite "JH>" runs and "| " runs under an attribution, and the
    attribution right above each block of them."""
    drop = [">" in line and bool(QUOTED.match(line)) for line in lines]
    _mark_supercite(lines, drop)
    if "|" in "".join(lines):
        _mark_bar_quotes(lines, drop, headers)
    for index, quoted in enumerate(drop):
        if not quoted or (index and drop[index - 1]):
            continue
        above = index - 1
        while above >= 0 and not lines[above].strip():
            above -= 1
        if above >= 0 and not drop[above] and _is_attribution_above_quote(lines[above], headers):
            drop[above] = True
    _drop_rewrapped_quote_lines(lines, drop)
    return [line for line, dropped in zip(lines, drop, strict=True) if not dropped]


def _is_attribution_above_quote(line: str, headers: re.Pattern[str]) -> bool:
    return _is_attribution(line, headers) or (len(line) <= _HEADER_LINE and bool(_COLONLESS_ATTRIBUTION.match(line.strip())))


def _mark_supercite(lines: list[str], drop: list[bool]) -> None:
    """Runs of two or more lines quoted with the same initials ("C>", "JH> …")."""
    index = 0
    while index < len(lines):
        found = _SUPERCITE.match(lines[index]) if ">" in lines[index] else None
        end = index + 1
        while found and end < len(lines) and (following := _SUPERCITE.match(lines[end])) \
                and following.group(1) == found.group(1):
            end += 1
        if found and end - index >= 2:
            drop[index:end] = [True] * (end - index)
        index = end


def _mark_bar_quotes(lines: list[str], drop: list[bool], headers: re.Pattern[str]) -> None:
    """Lines quoted with "| " right under an attribution (a "|" table under none stays)."""
    for index, line in enumerate(lines):
        if not _BAR_QUOTED.match(line) or (index and _BAR_QUOTED.match(lines[index - 1])):
            continue
        above = index - 1
        while above >= 0 and not lines[above].strip():
            above -= 1
        if above < 0 or not _is_attribution_above_quote(lines[above], headers):
            continue
        end = index
        while end < len(lines) and _BAR_QUOTED.match(lines[end]):
            drop[end] = True
            end += 1


def _drop_rewrapped_quote_lines(lines: list[str], drop: list[bool]) -> None:
    """A client that re-wraps a quote leaves the tail of a long "> " line unmarked, with quoted
    lines right above and below it; an answer between quotes has a blank line around it."""
    for index in range(1, len(lines) - 1):
        if drop[index - 1] and QUOTED.match(lines[index - 1]) and not drop[index] and lines[index].strip() \
                and QUOTED.match(lines[index + 1]) and len(lines[index - 1]) >= _REWRAPPED_WIDTH:
            drop[index] = True


def _history_start(lines: list[str], headers: re.Pattern[str]) -> int:
    """Index of the first line of quoted history (a header block, separator or attribution)."""
    window = _scan_window(lines)
    starts = [len(lines)]
    forms = _scan_forms(window)
    scanned = "\n".join(forms)
    match = next((m for m in headers.finditer(scanned, _first_candidate(scanned))
                  if _plausible_header(m.group())), None) if _CANDIDATE.search(scanned) else None
    if match:
        starts.append(scanned.count("\n", 0, match.start() + match.group().startswith("\n")))
    for index, form in enumerate(forms):
        # A separator starts with "--" once stripped; an attribution ends in ":" (a stripped
        # line over _LABEL_ONLY that ends in ":" keeps it in its form when it can be one).
        if form.lstrip("*_")[:2] == "--" or form[-1:] == ":":
            line = window[index]
            if _SEPARATOR.match(line) or _is_attribution(line, headers):
                starts.append(index)
                break
        elif _is_bare_attribution(window[index]) or (DEVICE_FOOTER.match(form) and index):
            starts.append(index + bool(DEVICE_FOOTER.match(form)))  # below a device footer: history
            break
    block = _header_block(forms, min(starts))
    if block is not None:
        starts.append(block)
    return _include_split_from(lines, min(starts))


def _history_start_below_top(lines: list[str], headers: re.Pattern[str]) -> int:
    """A header block that opens the text (a pasted or forwarded mail's header, with the new
    text under it) is not history: then the history starts at the next start below it."""
    start = _history_start(lines, headers)
    first = next((i for i, line in enumerate(lines) if line.strip()), len(lines))
    if start > first or start >= len(lines):
        return start
    gap = next((i for i in range(first, len(lines)) if not lines[i].strip()), len(lines))
    return gap + _history_start(lines[gap:], headers) if gap < len(lines) else start


def _header_block(forms: list[str], before: int) -> int | None:
    """The first From line (any language) followed by Sent/To/Subject lines: Outlook's block
    in languages the library has no grammar for. Plausible only with an address or three labels."""
    for index in range(min(before, len(forms))):
        if ":" not in forms[index] or not _BLOCK_FROM.match(forms[index]):
            continue
        following = forms[index + 1 : index + _BLOCK_LINES]
        labels = 1 + sum(1 for form in following if _BLOCK_LABEL.match(form))
        if labels >= 2 and _plausible_header("\n".join(forms[index : index + _BLOCK_LINES])):
            above = index - 1  # "Message du : 12/12/2016 13:20", "Date: …" over the From line
            return above if above >= 0 and _LABEL_LINE.match(forms[above]) else index
    return None


# A line that could begin quoted history in any language: "Label:" near its start, a line
# ending in ":" (an attribution), or a rule. The library's header patterns backtrack at every
# position, so they run only from two lines before the first such line (most new mails have none).
_CANDIDATE = re.compile(r"^[ \t>*]*(?:[^\W\d_][\w .-]{0,30}:|.*:[ \t]*$|[-_=]{3,})", re.MULTILINE)


def _first_candidate(scanned: str) -> int:
    found = _CANDIDATE.search(scanned)
    if found is None:
        return len(scanned)
    start = found.start()
    for _ in range(3):  # two lines back, for attributions wrapped over lines
        start = scanned.rfind("\n", 0, max(0, start - 1)) + 1 if start > 0 else 0
    return max(0, start - 1)  # from the newline before it: the patterns anchor on "\n"


def _plausible_header(found: str) -> bool:
    """A "Label: value" block is a mail header only with an address or three labels:
    "Fra: 1. januar" / "Til: 31. marts" in a person's own text is a date range."""
    found = found.strip()
    if "\n" not in found:
        return True  # an attribution or a separator line
    return "@" in found or len(_LABEL.findall(found)) >= 3


def _scan_window(lines: list[str]) -> list[str]:
    size = 0
    for count, line in enumerate(lines[:_SCAN_LINES]):
        size += len(line) + 1
        if size > _SCAN_CHARS:
            return lines[:count]
    return lines[:_SCAN_LINES]


def _scan_forms(lines: list[str]) -> list[str]:
    """The lines as the header grammar sees them: stripped, and short enough to stay linear
    (a line that may be an attribution whole, any other cut to its "Label:" start)."""
    return [s if len(s) <= _LABEL_ONLY or (len(s) <= _HEADER_LINE and s[-1] == ":") else s[:_LABEL_ONLY]
            for s in map(str.strip, lines)]


def _include_split_from(lines: list[str], start: int) -> int:
    """Outlook sometimes wraps "From: Name" and "<address>" onto two lines above "Sent:",
    which the grammar then misses; the header block starts at the From line."""
    for back in (1, 2):
        if start - back >= 0 and _FROM_LABEL.match(lines[start - back]):
            return start - back
    return start




def _drop_trailing_noise(lines: list[str], footers: bool = True) -> list[str]:
    """Blank lines, separators and (unless kept for the signature) device footers left at the
    end after the cut."""
    end = len(lines)
    while end and (not lines[end - 1].strip() or _is_noise(lines[end - 1], footers)):
        end -= 1
    return lines[:end]


def _is_noise(line: str, footers: bool = True) -> bool:
    return bool(RULE.match(line) or _SEPARATOR.match(line) or (footers and DEVICE_FOOTER.match(line)))


def _squeeze_blank_lines(lines: Sequence[str]) -> list[str]:
    """Removing quotes leaves runs of blank lines; keep at most one."""
    if all(map(str.strip, lines)):  # no blank line (in C: a third of the loop's time on 20 KB)
        return list(lines)
    out: list[str] = []
    for line in lines:
        if line.strip():
            out.append(line)
        elif out and out[-1]:  # blank lines are kept as "", every other kept line has text
            out.append("")
    return out
