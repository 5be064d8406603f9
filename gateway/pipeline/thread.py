"""Threading (rules §5), pure: which existing case does a mail refer to?

Order: our own Message-IDs in In-Reply-To/References, then the signed reply token in a
recipient address, then the case tag in the subject after any reply/forward prefixes.
"""

from __future__ import annotations

import re

from gateway.model import Facts, ParsedMail, ThreadKeys, ThreadMatch, ThreadVia
from gateway.tokens import numbers_from_recipients

_PREFIX = re.compile(r"^\s*(?:(?:re|sv|vs|fw|fwd|aw|wg|tr|antw|ynt)\s*(?:\[\d+\])?\s*:\s*)+", re.IGNORECASE)


def strip_prefixes(subject: str) -> str:
    return _PREFIX.sub("", subject)


def tag_pattern(case_prefix: str) -> re.Pattern[str]:
    return re.compile(r"\[\s*(" + re.escape(case_prefix) + r"\d{1,12})\s*\]", re.IGNORECASE)


def subject_number(subject: str, case_prefix: str) -> str | None:
    match = tag_pattern(case_prefix).search(strip_prefixes(subject))
    return match.group(1).upper() if match else None


def clean_subject(subject: str, case_prefix: str) -> str:
    """A case title: reply prefixes and our own tag removed."""
    stripped = tag_pattern(case_prefix).sub("", strip_prefixes(subject))
    return " ".join(strip_prefixes(stripped).split())


def thread_keys(mail: ParsedMail, secret: str, our_addresses: tuple[str, ...], case_prefix: str) -> ThreadKeys:
    ids = tuple(dict.fromkeys(reversed((*mail.references, *mail.in_reply_to))))  # newest first
    recipients = (*mail.envelope_to, *mail.to, *mail.cc)
    return ThreadKeys(
        message_ids=ids[:50],
        token_case_numbers=numbers_from_recipients(secret, recipients, our_addresses)[:5],
        subject_number=subject_number(mail.subject, case_prefix),
    )


def choose_thread(facts: Facts) -> ThreadMatch | None:
    for case, via in ((facts.by_message_id, ThreadVia.MESSAGE_ID), (facts.by_token, ThreadVia.TOKEN),
                      (facts.by_subject, ThreadVia.SUBJECT)):
        if case is not None:
            return ThreadMatch(case, via)
    return None
