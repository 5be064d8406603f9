"""`gateway cases show NUMBER` for a person: the case as plain text (`--json` gives the data).

Subjects, names and texts come from outside mail: control characters (a terminal's escape
sequences) and bidirectional overrides are shown as `\\x..`/`\\u....`, never sent to the terminal.
"""

from __future__ import annotations

import textwrap
import unicodedata
from datetime import UTC, datetime
from typing import Any

from gateway.model import Status

_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
_KIND = {"shared_mailbox": " (shared mailbox)"}
_SOURCE = {"email": "by mail", "agent": "by an agent", "api": "through the API"}


def clean(text: Any, keep_newlines: bool = False) -> str:
    """Text safe to print on a terminal."""
    out = []
    for ch in str(text if text is not None else ""):
        if keep_newlines and ch in "\n\t":
            out.append(ch)
        elif unicodedata.category(ch) == "Cc" or ch in _BIDI:
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def status_words(value: str) -> str:
    try:
        status = Status(value)
    except ValueError:
        return clean(value)
    return f"{status.label_da} ({status.value})"


def when(value: str | None) -> str:
    if not value:
        return "-"
    at = datetime.fromisoformat(value)
    return (at.astimezone(UTC) if at.tzinfo else at).strftime("%Y-%m-%d %H:%M UTC")


def person(user: dict[str, Any] | None) -> str:
    if not user:
        return "-"
    name = clean(user.get("name") or "")
    email = clean(user.get("email") or "")
    label = f"{name} <{email}>" if name else email
    return label + _KIND.get(str(user.get("kind")), "")


def size(count: int) -> str:
    if count < 1024:
        return f"{count} bytes"
    return f"{count / 1024:.1f} KB" if count < 1024 * 1024 else f"{count / 1024 / 1024:.1f} MB"


def render_case(case: dict[str, Any]) -> str:
    """The whole case: header, parties, comments, attachments, history."""
    return "\n".join([*_header(case), "", *_parties(case), "", *_comments(case), "", *_attachments(case), "",
                      *_history(case)]) + "\n"


def _header(case: dict[str, Any]) -> list[str]:
    lines = [f"{clean(case['number'])}  {clean(case.get('subject') or '(no subject)')}",
             f"  Status      {status_words(case['status'])}",
             f"  Requester   {person(case.get('requester'))}",
             f"  Assignee    {person(case.get('assignee'))}",
             f"  Created     {when(case.get('created_at'))}",
             f"  Updated     {when(case.get('updated_at'))}"]
    if case.get("follows"):
        lines.append(f"  Follows     {clean(case['follows'])}")
    if case.get("followed_by"):
        lines.append(f"  Followed by {', '.join(clean(n) for n in case['followed_by'])}")
    if case.get("close_reason"):
        lines.append(f"  Closed      {clean(case['close_reason'])}")
    return lines


def _parties(case: dict[str, Any]) -> list[str]:
    parties = case.get("parties") or []
    return [f"Parties ({len(parties)})", *(f"  {person(p)}" for p in parties)] if parties else ["Parties: none"]


def _comments(case: dict[str, Any]) -> list[str]:
    comments = case.get("comments") or []
    lines = [f"Comments ({len(comments)})"] if comments else ["Comments: none"]
    for n, comment in enumerate(comments, 1):
        mark = "INTERNAL NOTE" if not comment.get("public", True) else _SOURCE.get(str(comment.get("source")), "")
        lines.append(f"  [{n}] {when(comment.get('created_at'))}  {clean(comment.get('author') or 'system')}  {mark}"
                     .rstrip())
        text = clean(comment.get("visible_text") or "", keep_newlines=True).strip() or "(no text)"
        lines.extend(textwrap.indent(text, "      ").splitlines())
        lines.extend(f"      attachment {a['id']}: {clean(a['name'])} ({size(int(a['size']))})"
                     for a in comment.get("attachments") or [])
    return lines


def _attachments(case: dict[str, Any]) -> list[str]:
    rows = [(n, a, c) for n, c in enumerate(case.get("comments") or [], 1) for a in c.get("attachments") or []]
    if not rows:
        return ["Attachments: none"]
    lines = [f"Attachments ({len(rows)})  fetch one: gateway cases attachment {clean(case['number'])} ID --out FILE"]
    for n, a, comment in rows:
        internal = ", internal note" if not comment.get("public", True) else ""
        lines.append(f"  {a['id']:>6}  {clean(a['name'])}  {size(int(a['size']))}  {clean(a.get('content_type'))}  "
                     f"(comment {n}{internal})")
    return lines


def _history(case: dict[str, Any]) -> list[str]:
    rows = case.get("history") or []
    lines = ["History"] if rows else ["History: none"]
    for row in rows:
        change = f"{clean(row.get('from') or '-')} -> {clean(row['to'])}"
        reason = f"  ({clean(row['reason'])})" if row.get("reason") else ""
        lines.append(f"  {when(row.get('at'))}  {clean(row.get('by') or '-'):<24} {change}{reason}")
    return lines
