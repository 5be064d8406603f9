#!/usr/bin/env python3
"""Score the gateway against a corpus manifest: how many upstream expectations it meets.

    .venv/bin/python bench/corpus_score.py                       # tests/corpus
    .venv/bin/python bench/corpus_score.py tests/corpus_heldout  # the held-out set
    .venv/bin/python bench/corpus_score.py tests/corpus_heldout2 # the second held-out set, scored blind
    .venv/bin/python bench/corpus_score.py --failures            # and list what is not met

Scored "from outside": every expectation the gateway can be judged on counts once (each
needle of a `*_contains` list once), with the rules of tests/test_corpus.py and
tests/test_reply.py but WITHOUT their deviation tables, so a listed deviation counts as not
met. A mail is parsed and planned by the pure steps (parse_mail, classify, plan.draft), which
is what the corpus test's store round trip shows as the comment. Expectations about another
product's internals (`*_zammad`, `*_sisimai`, `*_rt`, `*_mailparser`, `*_imap_tools`, `language`,
`reply_count`, `defects`, flanker's `attached_message_subject`) are not counted. A quoted-reply
needle is met when it occurs more often in the whole text than in the visible reply.
`html_text` (an HTML fragment's expected plain text, tests/corpus_heldout2) is compared with
html_to_text's output; with `html_text_compare: lines` line by line, ignoring trailing spaces
and blank lines (the upstream converter's own paragraph spacing is not a reading).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.errors import UnusableMail  # noqa: E402
from gateway.model import MailKind  # noqa: E402
from gateway.pipeline import reply  # noqa: E402
from gateway.pipeline.classify import classify  # noqa: E402
from gateway.pipeline.htmltext import html_to_text  # noqa: E402
from gateway.pipeline.names import attachment_display_name  # noqa: E402
from gateway.pipeline.parse import parse_mail  # noqa: E402
from gateway.pipeline.plan import draft  # noqa: E402

OWN = frozenset({"kundebetjening@statens-adm.example"})
OWN_DOMAIN = "gateway.statens-adm.example"


def _norm(text: str) -> str:
    return " ".join(text.split())


def _squash(text: str) -> str:
    return "".join(text.split())


def _reply_checks(expect: dict[str, Any], visible: str, signature: str, full: str) -> Iterator[tuple[str, bool]]:
    if "reply_text" in expect:
        if expect.get("reply_text_compare") == "whitespace_insensitive":
            yield "reply_text", _squash(visible) == _squash(expect["reply_text"])
        else:
            yield "reply_text", visible.strip() == expect["reply_text"].strip()
    for needle in expect.get("reply_text_contains", []):
        yield "reply_text_contains", _norm(needle) in _norm(visible)
    for needle in expect.get("reply_text_not_contains", []):
        yield "reply_text_not_contains", _norm(needle) not in _norm(visible)
    for needle in expect.get("signature_contains", []):
        yield "signature_contains", _norm(needle) in _norm(signature)
    for needle in expect.get("quoted_reply_contains", []):
        yield "quoted_reply_contains", _norm(full).count(_norm(needle)) > _norm(visible).count(_norm(needle))


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines() if line.strip()]


def _text_checks(entry: dict[str, Any], raw: bytes) -> Iterator[tuple[str, bool]]:
    text = raw.decode("utf-8")
    if entry["kind"] == "html_body":
        text = html_to_text(text)
        if "html_text" in entry["expect"]:
            want = entry["expect"]["html_text"]
            if entry["expect"].get("html_text_compare") == "lines":
                yield "html_text", _lines(text) == _lines(want)
            else:
                yield "html_text", text.strip() == want.strip()
    if hasattr(reply, "split_reply"):
        visible, signature = reply.split_reply(text)
    else:  # the code before signatures were kept apart (scoring the old tree)
        visible, signature = reply.visible_text(text), ""
    yield from _reply_checks(entry["expect"], visible, signature, text)


def _mail_checks(entry: dict[str, Any], raw: bytes) -> Iterator[tuple[str, bool]]:
    expect = entry["expect"]
    try:
        mail = parse_mail(raw)
    except UnusableMail:
        for key in expect:
            yield key, False
        return
    kind = classify(mail, OWN, OWN_DOMAIN).kind
    names = sorted(a.name for a in mail.attachments)
    simple = {
        "subject": lambda v: _norm(mail.subject) == _norm(v),
        "from": lambda v: mail.from_addr == v.lower(),
        "from_name": lambda v: _norm(mail.from_name) == _norm(v),
        "message_id": lambda v: mail.message_id == v,
        "has_attachments": lambda v: (bool(mail.attachments) == v
                                      or bool([a for a in mail.attachments if not a.inline]) == v),
        "attachment_count": lambda v: len(mail.attachments) == v,
        "attachment_names": lambda v: names == sorted(attachment_display_name(n, "", 0) for n in v),
        "body_is_empty": lambda v: (not mail.text.strip()) == v,
        "is_bounce": lambda v: (kind is MailKind.BOUNCE) == v,
        "is_autoreply": lambda v: (kind is MailKind.AUTO_REPLY) == v,
        "bounce_status": lambda v: any(r.status == v for r in mail.delivery_reports),
        "to": lambda v: set(mail.to) == {a.lower() for a in v},
        "cc": lambda v: set(mail.cc) == {a.lower() for a in v},
        "reply_to": lambda v: set(mail.reply_to) == {a.lower() for a in v},
        "in_reply_to": lambda v: v in mail.in_reply_to,
        "references": lambda v: [r.strip("<>") for r in mail.references] == [r.strip("<>") for r in v],
        "content_type": lambda v: mail.content_type == v,
    }
    for key, check in simple.items():
        if key in expect:
            yield key, bool(check(expect[key]))
    for needle in expect.get("body_contains", []):
        yield "body_contains", _norm(needle) in _norm(mail.text)
    if {"reply_text", "reply_text_contains", "reply_text_not_contains", "signature_contains",
            "quoted_reply_contains"} & set(expect):
        comment = draft(mail)
        yield from _reply_checks(expect, comment.visible_text, getattr(comment, "signature", ""),
                                  comment.full_text)


def score(corpus: Path) -> tuple[int, int, list[str]]:
    manifest = json.loads((corpus / "manifest.json").read_text(encoding="utf-8"))
    met = total = 0
    failures = []
    for entry in manifest["entries"]:
        raw = (corpus / entry["file"]).read_bytes()
        checks = _mail_checks(entry, raw) if entry["kind"] == "rfc822" else _text_checks(entry, raw)
        for key, ok in checks:
            total += 1
            met += ok
            if not ok:
                failures.append(f"{entry['file']}: {key}")
    return met, total, failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", nargs="?", default=str(ROOT / "tests" / "corpus"))
    parser.add_argument("--failures", action="store_true", help="list every expectation not met")
    args = parser.parse_args()
    met, total, failures = score(Path(args.corpus))
    print(f"{args.corpus}: {met} of {total} expectations met ({100 * met / max(total, 1):.1f}%)")
    if args.failures:
        for line in failures:
            print("  not met:", line)


if __name__ == "__main__":
    main()
