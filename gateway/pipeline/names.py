"""Attachment display names (catalogue 45, 48). Storage keys never come from here.

A name from a mail is shown to people only: path separators, control and bidi characters are
removed, Windows reserved device names are defused, the result is NFC and at most 200 chars.
"""

from __future__ import annotations

import mimetypes
import re
import unicodedata

from gateway.pipeline.charsets import without_surrogates

_UNSAFE = re.compile(r"[\x00-\x1f\x7f\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029\ufeff]")
_RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?$", re.IGNORECASE)
_MAX = 200


def attachment_display_name(raw: str | None, content_type: str, index: int) -> str:
    name = unicodedata.normalize("NFC", without_surrogates(raw or ""))
    name = _UNSAFE.sub("", name)
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = " ".join(name.split()).strip(" .")
    if _RESERVED.match(name):
        name = "_" + name
    if not name:
        ext = mimetypes.guess_extension(content_type) or ".bin"
        name = f"attachment-{index}{ext}"
    if len(name) > _MAX:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: _MAX - len(ext) - 1] + "." + ext) if dot and len(ext) <= 10 else name[:_MAX]
    return name
