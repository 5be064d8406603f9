"""Bytes to text for mail bodies and raw 8-bit headers (part of the parse step, pure).

In this order (issue 22): the declared charset, read as the superset mail programs really
send under that name (gb2312 → gb18030, ks_c_5601 → cp949, iso-8859-1 → cp1252 when C1 bytes
show it is Windows text); then the configured fallback list, each tried strictly and only
taken when the text it gives looks like text; then charset_normalizer's detection. The raw
mail is kept in the raw store whatever this decides, so a wrong guess loses nothing.

charset_normalizer cannot tell KOI8-R from Windows-1251 on a few bytes (the two differ only in
which half holds the capital letters) and ranks them equal; ordinary text is mostly lower
case, so among equal ranks the reading with more lower-case letters wins.

`lf_line_ends` gives the decoded text the one kind of line end the rest of the pipeline and the
stored comment use.
"""

from __future__ import annotations

import codecs
import re
from functools import lru_cache

import charset_normalizer
from charset_normalizer.md import mess_ratio

DEFAULT_FALLBACKS: tuple[str, ...] = ("utf-8", "cp1252")
# Detection is asked among these: the scripts a Danish authority's mailbox sees.
CANDIDATES: tuple[str, ...] = (
    "utf_8", "cp1252", "iso8859_15", "cp1250", "iso8859_2", "koi8_r", "cp1251", "koi8_u", "iso8859_5",
    "iso8859_7", "cp1253", "cp1254", "iso8859_9", "cp1257", "cp1256", "cp1255", "gb18030", "big5", "cp949",
    "shift_jis", "euc_jp", "cp874",
)
# What mail programs send under a name is often its superset (the WHATWG encoding standard
# maps these the same way): decoding by the superset never breaks text the name allows.
_SUPERSETS = {
    "gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030", "euc-cn": "gb18030", "cp936": "gb18030",
    "ks_c_5601-1987": "cp949", "ks_c_5601": "cp949", "ks_c_5601-1989": "cp949", "euc-kr": "cp949",
    "ksc5601": "cp949", "big5": "big5hkscs", "x-big5": "big5hkscs",
    "shift_jis": "cp932", "x-sjis": "cp932", "sjis": "cp932", "ms_kanji": "cp932", "windows-31j": "cp932",
    "iso-2022-jp": "iso2022_jp_ext", "tis-620": "cp874", "iso-8859-11": "cp874",
    "iso-8859-8-i": "iso8859_8", "iso-8859-6-i": "iso8859_6", "x-mac-roman": "mac_roman",
    "us-ascii": "cp1252", "ascii": "cp1252", "ansi_x3.4-1968": "cp1252", "iso-8859-1": "cp1252",
    "latin1": "cp1252", "latin-1": "cp1252", "iso_8859-1": "cp1252", "iso8859-1": "cp1252", "l1": "cp1252",
    "iso-8859-9": "cp1254", "latin5": "cp1254", "iso-8859-11:2001": "cp874", "utf8": "utf-8",
}
_MULTIBYTE = frozenset({"gb18030", "cp949", "big5hkscs", "cp932", "iso2022_jp_ext", "gb2312", "gbk", "big5",
                        "shift_jis", "euc_jp", "euc-jp", "euc_kr", "iso-2022-jp", "iso-2022-kr", "hz-gb-2312",
                        "utf-7", "iso2022_jp", "iso2022_kr"})
_SEVEN_BIT = ("iso-2022", "utf-7", "hz", "csiso2022")  # stateful encodings written in ASCII bytes
# Names that say nothing about the bytes: treated as if no charset were declared.
_MEANINGLESS = frozenset({"unknown-8bit", "x-unknown", "unknown", "x-user-defined", "default", "8bit", "binary"})
_C1 = re.compile(rb"[\x80-\x9f]")
_PLAUSIBLE = 0.2  # charset_normalizer's mess ratio above which a decoding is not taken as text


_SURROGATE = re.compile("[\ud800-\udfff]")


def without_surrogates(text: str) -> str:
    """`text` with every lone surrogate as U+FFFD. A decoder such as UTF-7's turns "+2AA-"
    into an unpaired surrogate that no store can encode as UTF-8, so such a mail would fail at
    the write every time instead of becoming a case (catalogue 43)."""
    if text.isascii():  # a flag of the string: no scan
        return text
    try:  # the codec's scan in C: a third of the regular expression's on a 20 KB text
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


def decode_text(data: bytes, declared: str | None, fallbacks: tuple[str, ...] = DEFAULT_FALLBACKS,
                context: bytes = b"") -> str:
    """The text of `data`; `context` (the body, for a header) only helps detection."""
    return without_surrogates(_decode_text(data, declared, fallbacks, context))


def _decode_text(data: bytes, declared: str | None, fallbacks: tuple[str, ...], context: bytes) -> str:
    name = _usable(declared)
    if data.isascii() and not (name and name.startswith(_SEVEN_BIT)):
        return data.decode("ascii")
    if name is not None:
        target = _superset(name, data)
        if target not in _MULTIBYTE and not target.startswith("utf"):
            try:  # UTF-8 labelled as a legacy charset: valid UTF-8 is never chance in real text
                return data.decode("utf-8")
            except UnicodeDecodeError:
                pass
        try:
            return data.decode(target)
        except UnicodeDecodeError:
            pass  # declared wrongly (UTF-8 bytes labelled Latin-1, or the reverse): go on
    for fallback in fallbacks:
        try:
            text = data.decode(fallback)
        except (UnicodeDecodeError, LookupError):
            continue
        if fallback.replace("-", "").replace("_", "").lower() == "utf8" or mess_ratio(text, _PLAUSIBLE) < _PLAUSIBLE:
            return text
    detected = detect(data + (b"\n" + context[:65536] if context else b""))
    if detected is not None:
        return data.decode(detected, "replace")
    return data.decode(_superset(name, data) if name else (fallbacks or DEFAULT_FALLBACKS)[-1], "replace")


def _usable(declared: str | None) -> str | None:
    """The declared name when Python knows it (after our supersets), else None."""
    name = (declared or "").strip().strip("\"'").lower()
    if not name or name in _MEANINGLESS:
        return None
    try:
        codecs.lookup(_SUPERSETS.get(name, name))
    except LookupError:
        return None
    return name


def _superset(name: str, data: bytes) -> str:
    """Latin-1 and ASCII are read as Windows-1252 only when C1 bytes are there: in real
    Latin-1 they never are, in Windows text they are its quotes, dashes and euro sign."""
    target = _SUPERSETS.get(name, name)
    if target == "cp1252" and not _C1.search(data):
        return "latin-1"
    if target == "cp1252" and _cp1252_undefined(data):
        return "latin-1"
    return target


def _cp1252_undefined(data: bytes) -> bool:
    return any(b in data for b in (b"\x81", b"\x8d", b"\x8f", b"\x90", b"\x9d"))


def detect(data: bytes) -> str | None:
    """charset_normalizer's best reading of unlabelled bytes, or None."""
    return _detect(bytes(data[:262144]))


@lru_cache(maxsize=64)
def _detect(data: bytes) -> str | None:
    matches = list(charset_normalizer.from_bytes(data, cp_isolation=list(CANDIDATES)))
    if not matches:
        return None
    best = matches[0]
    tied = [m for m in matches if m.chaos <= best.chaos and m.coherence >= best.coherence]
    if len(tied) > 1:
        best = max(tied, key=lambda m: _lower_share(str(m)))
    return str(best.encoding)


def _lower_share(text: str) -> float:
    cased = [ch for ch in text if ch.isalpha() and ch.lower() != ch.upper()]
    return sum(ch.islower() for ch in cased) / len(cased) if cased else 0.0


_LONE_CR = re.compile("\r(?!\n)")


def lf_line_ends(text: str) -> str:
    """CRLF and a lone CR as LF. The text itself when it has no CR: `str.replace` copies the
    whole text even when it finds nothing (5 µs and a pass over memory for a mail's 20 KB).
    Without a lone CR, dropping every CR is the same and costs less: 10 + 10 µs (the search
    for a lone one) against 33 µs for replacing each CRLF, on 20 KB of 80-character lines."""
    if "\r" not in text:
        return text
    if _LONE_CR.search(text) is None:
        return text.replace("\r", "")
    return text.replace("\r\n", "\n").replace("\r", "\n")
