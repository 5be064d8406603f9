"""The inbox's keys of a raw mail: the dedup key, the Message-ID, where the header ends.

Stored keys must never change with a release: a mail fetched again after an upgrade would
otherwise become a second case. The pinned keys below were computed by the code before
`header_end` and the bounded searches of `dedup_key`.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from store.inbox import dedup_key, header_end, message_id_of

PINNED = [
    (b"From: a@b\r\nMessage-ID: <x@y>\r\nReceived: by z\r\n\r\nBody\r\nline\r\n",
     "6c77d8f2ac73f1cfb52b6b8222b946d34e33bdc1d8f3c527af80151ea02dcf73", "<x@y>"),
    (b"From: a@b\nMessage-ID: <x@y>\n\nBody\nline\n",
     "6c77d8f2ac73f1cfb52b6b8222b946d34e33bdc1d8f3c527af80151ea02dcf73", "<x@y>"),
    (b"\r\n\nFrom: a@b\r\n\nMessage-ID: <late@y>\r\n\r\nBody\n\n",
     "007dcc72a5d9a8ca92909162e38d6738698630b9ac34aadb3187668c7b73d898", None),
    (b"From: a@b\n\r\nMessage-ID: <m@y>\n\nx",
     "4594daa39d9ef78908146fee7232c300f7e04d3a9064af273466bf2a0ba5fe26", None),
    (b"Subject: no body", "b2f4a6b350bb444c3f44a3722f172e7c46e6ae319b099ab252d98409bf32f7ba", None),
    (b"From: a@b\r\nX: 1\r\n\r\n\r\n", "691c40a96e424e6b5cc7a18475c2ce6805a9fe91668ff02df6fcc8223c3acd1a", None),
]
BLANK_LINE = re.compile(rb"\r?\n\r?\n")


@pytest.mark.parametrize(("raw", "key", "message_id"), PINNED)
def test_keys_of_stored_mails_never_change(raw: bytes, key: str, message_id: str | None) -> None:
    assert dedup_key(raw) == key
    assert message_id_of(raw) == message_id


@given(st.binary(max_size=60).map(lambda b: bytes(b"a\r\n:"[x % 4] for x in b)), st.integers(0, 70))
def test_header_end_is_where_the_blank_line_pattern_first_matches(raw: bytes, limit: int) -> None:
    match = BLANK_LINE.search(raw, 0, limit)
    assert header_end(raw, limit) == (match.start() if match else None)


@given(st.lists(st.text("ab: ", max_size=8), max_size=8), st.lists(st.text("ab ", max_size=8), max_size=8))
def test_crlf_and_lf_forms_of_a_mail_have_one_key(head: list[str], body: list[str]) -> None:
    lines = [f"H{i}: {v}" for i, v in enumerate(head)]
    lf = ("\n".join(lines) + "\n\n" + "\n".join(body)).encode()
    assert dedup_key(lf) == dedup_key(lf.replace(b"\n", b"\r\n"))
