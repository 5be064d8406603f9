"""Notification rendering and message composition (rules §7, catalogue 78, 83, 84)."""

from __future__ import annotations

import base64
import dataclasses
import os
import shutil
from datetime import UTC, datetime
from email import message_from_bytes, message_from_string
from email import policy as email_policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.addresses import local_and_tag
from gateway.errors import ConfigError, PermanentDeliveryError
from gateway.model import STATUS_LABELS_DA, STATUS_LABELS_EN, Event, Status
from gateway.notify.compose import (
    MAX_REFERENCES,
    TEMPLATES_DIR,
    Notice,
    Renderer,
    header_text,
    render_sample,
    sample_notice,
)
from gateway.settings import PolicySettings, Settings
from gateway.tokens import verify_token

SNAPSHOTS = Path(__file__).parent / "snapshots"
NOW = datetime(2025, 3, 14, 9, 30, tzinfo=UTC)
SETTINGS = Settings()
SECRET = SETTINGS.mail.reply_token_secret
LABELS = {"da": STATUS_LABELS_DA, "en": STATUS_LABELS_EN}
PREVIOUS = {
    Status.REGISTRERET: None,
    Status.PAABEGYNDT: Status.REGISTRERET,
    Status.TILDELT: Status.PAABEGYNDT,
    Status.AFVENTER_INTERNT: Status.TILDELT,
    Status.AFVENTER_REKVIRENT: Status.TILDELT,
    Status.UDFOERT: Status.TILDELT,
    Status.LUKKET: Status.UDFOERT,
}
EXPECTED_HEADERS = {
    "from", "to", "reply-to", "subject", "date", "message-id", "in-reply-to", "references",
    "auto-submitted", "x-auto-response-suppress", "mime-version", "content-type",
    "content-language",
}


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer(TEMPLATES_DIR, SETTINGS, clock=lambda: NOW)


def notice(event: Event = Event.RECEIPT, language: str = "da", **changes: object) -> Notice:
    return dataclasses.replace(sample_notice(event, language), **changes)  # type: ignore[arg-type]


def parse(raw: bytes, policy: email_policy.Policy = email_policy.default) -> EmailMessage:
    return message_from_bytes(raw, policy=policy)  # type: ignore[return-value,arg-type]


def assert_snapshot(name: str, actual: str) -> None:
    path = SNAPSHOTS / name
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8", newline="")
        return
    if not path.exists():
        pytest.fail(f"missing snapshot {path}; run with UPDATE_SNAPSHOTS=1 to write it")
    assert actual == path.read_bytes().decode("utf-8"), f"snapshot {name} differs"


# --- every template, both languages ------------------------------------------------------------


def _render_cases() -> list[tuple[str, Event, Status | None]]:
    cases: list[tuple[str, Event, Status | None]] = []
    for lang in ("da", "en"):
        for event in Event:
            statuses: list[Status | None] = list(Status) if event is Event.STATUS else [None]
            cases += [(lang, event, status) for status in statuses]
    return cases


@pytest.mark.parametrize(("lang", "event", "status"), _render_cases(),
                         ids=lambda v: getattr(v, "value", v))
def test_item84_every_template_renders_as_snapshotted(renderer: Renderer, lang: str, event: Event,
                                               status: Status | None) -> None:
    changes = {"status": status, "previous_status": PREVIOUS[status]} if status else {}
    n = notice(event, lang, **changes)
    mail = renderer.render(n)

    name = f"{lang}/{event.value}" + (f"-{status.value}" if status else "") + ".txt"
    assert_snapshot(name, f"Subject: {mail.subject}\n\n{mail.text}\n----- html -----\n{mail.html}")
    for part in (mail.text, mail.html):
        assert "{{" not in part and "{%" not in part
        assert "Statens Administration" in part
    if event in (Event.REJECTED, Event.PASSWORD_LINK):  # no case: no tag, no case link
        assert not mail.subject.startswith("[")
        assert SETTINGS.portal.url in mail.text and "/sager/" not in mail.text
    else:
        assert mail.subject.startswith("[SAG-000123] ")
        url = f"{SETTINGS.portal.url}/sager/SAG-000123"
        assert url in mail.text and f'href="{url}"' in mail.html
        assert LABELS[lang][n.status] in mail.text and LABELS[lang][n.status] in mail.html
        assert "Adgang til lønsystemet virker ikke" in mail.subject


@pytest.mark.parametrize("lang", ["da", "en"])
def test_each_status_has_its_own_sentence(renderer: Renderer, lang: str) -> None:
    texts = {s: renderer.render(notice(Event.STATUS, lang, status=s, previous_status=None)).text
             for s in Status}
    assert len(set(texts.values())) == len(Status)
    subjects = {renderer.render(notice(Event.STATUS, lang, status=s)).subject for s in Status}
    assert len(subjects) == len(Status)


@pytest.mark.parametrize(("lang", "status", "fragments"), [
    ("da", Status.AFVENTER_REKVIRENT, ("Vi mangler svar fra dig", "besvare denne mail", "Serviceportalen")),
    ("da", Status.UDFOERT, ("udført", "inden for 7 dage", "genåbner")),
    ("da", Status.LUKKET, ("kan ikke genåbnes", "ny sag")),
    ("en", Status.AFVENTER_REKVIRENT, ("We need an answer from you", "replying to this e-mail")),
    ("en", Status.UDFOERT, ("done", "within 7 days", "reopen")),
    ("en", Status.LUKKET, ("cannot be reopened", "new case")),
])
def test_status_wording(renderer: Renderer, lang: str, status: Status, fragments: tuple[str, ...]) -> None:
    text = renderer.render(notice(Event.STATUS, lang, status=status)).text
    for fragment in fragments:
        assert fragment in text


@pytest.mark.parametrize(("lang", "days", "expected"), [
    ("da", 1, "inden for 1 dag,"), ("da", 14, "inden for 14 dage,"),
    ("en", 1, "within 1 day "), ("en", 3, "within 3 days "),
])
def test_close_period_comes_from_settings(lang: str, days: int, expected: str) -> None:
    settings = SETTINGS.replace(policy=PolicySettings(close_after_days=days))
    mail = Renderer(TEMPLATES_DIR, settings).render(notice(Event.STATUS, lang, status=Status.UDFOERT))
    assert expected in mail.text


def test_followup_names_the_closed_case(renderer: Renderer) -> None:
    mail = renderer.render(notice(Event.FOLLOWUP, follows_number="SAG-000042"))
    assert "SAG-000042" in mail.subject and "Sag SAG-000042 er lukket" in mail.text


@pytest.mark.parametrize(("lang", "actor", "expected"), [
    ("da", "Mette Jensen", "Mette Jensen har delt sagen med dig"),
    ("da", None, "Sagen er blevet delt med dig"),
    ("en", "Mette Jensen", "Mette Jensen has shared the case with you"),
])
def test_shared_names_who_shared(renderer: Renderer, lang: str, actor: str | None, expected: str) -> None:
    assert expected in renderer.render(notice(Event.SHARED, lang, actor_name=actor)).text


def test_item90_html_escapes_customer_values_and_text_keeps_them(renderer: Renderer) -> None:
    n = notice(Event.SHARED, case_subject='<script>alert("x")</script> & co',
               actor_name="<b onmouseover=alert(1)>Eve</b>", recipient_name="<img src=x>")
    mail = renderer.render(n)
    for raw in ("<script>", "<b onmouseover", "<img src=x>"):
        assert raw not in mail.html
    assert "&lt;script&gt;" in mail.html and "&amp; co" in mail.html
    assert '<script>alert("x")</script> & co' in mail.text


def test_reason_is_never_rendered(renderer: Renderer) -> None:
    mail = renderer.render(notice(Event.STATUS, status=Status.LUKKET, reason="CPR 010101-1234 i sagen"))
    assert "010101" not in mail.text + mail.html + mail.subject


@pytest.mark.parametrize(("language", "policy_language", "greeting"), [
    ("en", "da", "Dear Søren Hansen,"), ("da", "en", "Kære Søren Hansen"),
    ("de", "da", "Kære Søren Hansen"), ("", "en", "Dear Søren Hansen,"),
])
def test_language_with_fallback(language: str, policy_language: str, greeting: str) -> None:
    settings = SETTINGS.replace(policy=PolicySettings(language=policy_language))  # type: ignore[arg-type]
    mail = Renderer(TEMPLATES_DIR, settings).render(notice(language=language))
    assert mail.text.startswith(greeting)


def test_missing_template_fails_at_start(tmp_path: Path) -> None:
    shutil.copytree(TEMPLATES_DIR, tmp_path / "templates")
    (tmp_path / "templates" / "en" / "shared.html.j2").unlink()
    with pytest.raises(ConfigError, match="en/shared.html.j2"):
        Renderer(tmp_path / "templates", SETTINGS)


def test_a_broken_template_cache_never_stops_rendering(tmp_path: Path) -> None:
    """Compiled templates are cached on disk; a damaged cache file or a folder that cannot be
    written (disk full, gone) only means compiling again."""
    import jinja2

    from gateway.notify.compose import QuietBytecodeCache

    folder = tmp_path / "cache"
    folder.mkdir()
    env = jinja2.Environment(loader=jinja2.DictLoader({"t.j2": "Hej {{ name }}"}),
                             bytecode_cache=QuietBytecodeCache(str(folder)))
    assert env.get_template("t.j2").render(name="Jens") == "Hej Jens"
    [cached] = list(folder.iterdir())
    cached.write_bytes(b"j2" + b"\x00" * 40)  # damaged: right magic, garbage after it
    env.cache.clear()  # type: ignore[union-attr]
    assert env.get_template("t.j2").render(name="Mette") == "Hej Mette"
    shutil.rmtree(folder)  # the folder gone: nowhere to write the compiled code
    env.cache.clear()  # type: ignore[union-attr]
    assert env.get_template("t.j2").render(name="Ole") == "Hej Ole"


@pytest.mark.parametrize("lang", ["da", "en"])
@pytest.mark.parametrize("event", list(Event))
def test_render_sample(lang: str, event: Event) -> None:
    out = render_sample(event.value, lang, SETTINGS)
    assert out.startswith("Subject: ") and "--- text/plain ---" in out and "<html lang=" in out


# --- headers ---------------------------------------------------------------------------------


def test_item83_item86_headers_of_a_status_notice(renderer: Renderer) -> None:
    n = notice(Event.STATUS, status=Status.TILDELT,
               thread_ids=("<first@kommune.example>", "<sag-000123.1@gateway.statens-adm.example>"))
    raw = renderer.compose(n)
    msg = parse(raw)

    assert {k.lower() for k in msg} == EXPECTED_HEADERS
    assert len(msg.keys()) == len(EXPECTED_HEADERS)
    assert msg["From"].addresses[0].addr_spec == SETTINGS.mail.from_address
    assert msg["From"].addresses[0].display_name == SETTINGS.mail.from_name
    assert [a.addr_spec for a in msg["To"].addresses] == ["soeren.hansen@kommune.example"]
    assert msg["To"].addresses[0].display_name == "Søren Hansen"
    assert str(msg["Subject"]) == "[SAG-000123] Status: Tildelt – Adgang til lønsystemet virker ikke"
    assert msg["Message-ID"] == n.message_id
    assert msg["In-Reply-To"] == "<sag-000123.1@gateway.statens-adm.example>"
    assert msg["References"].split() == list(n.thread_ids)
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert msg["Content-Language"] == "da"
    assert msg["Date"].datetime == NOW


def test_reply_to_carries_a_token_that_verifies(renderer: Renderer) -> None:
    msg = parse(renderer.compose(notice(Event.REPLY)))
    reply_to = msg["Reply-To"].addresses
    assert len(reply_to) == 1
    base, tag, domain = local_and_tag(reply_to[0].addr_spec)
    assert f"{base}@{domain}" == SETTINGS.mail.from_address
    assert tag is not None and verify_token(SECRET, tag) == "SAG-000123"
    assert verify_token("another-secret-of-enough-length", tag) is None


@pytest.mark.parametrize(("event", "expected"), [
    (Event.RECEIPT, "auto-replied"), (Event.REJECTED, "auto-replied"), (Event.FOLLOWUP, "auto-replied"),
    (Event.REPLY, "auto-generated"), (Event.STATUS, "auto-generated"),
    (Event.REOPENED, "auto-generated"), (Event.SHARED, "auto-generated"),
])
def test_auto_submitted(renderer: Renderer, event: Event, expected: str) -> None:
    assert parse(renderer.compose(notice(event)))["Auto-Submitted"] == expected


def test_rejected_has_no_case_tag_and_no_reply_token(renderer: Renderer) -> None:
    msg = parse(renderer.compose(notice(Event.REJECTED, case_number="")))
    assert "Reply-To" not in msg
    assert not str(msg["Subject"]).startswith("[")
    assert msg["In-Reply-To"] == "<CAF=x1y2z3@mail.kommune.example>"


def test_body_is_alternative_text_and_html(renderer: Renderer) -> None:
    n = notice(Event.RECEIPT)
    msg = parse(renderer.compose(n))
    rendered = renderer.render(n)
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    for subtype, expected in (("plain", rendered.text), ("html", rendered.html)):
        part = msg.get_body((subtype,))
        assert part is not None and part["Content-Transfer-Encoding"] == "quoted-printable"
        assert part.get_content().replace("\r\n", "\n") == expected


def test_references_are_capped_and_filtered(renderer: Renderer) -> None:
    ids = tuple(f"<m{i}@kommune.example>" for i in range(30))
    junk = ("no-brackets@x.example", "<two words@x.example>", "<=?utf-8?q?a?=@x.example>", "<x@y>\r\nBcc: e@x")
    msg = parse(renderer.compose(notice(Event.REPLY, thread_ids=ids[:5] + junk + ids[5:])))
    refs = msg["References"].split()
    assert len(refs) == MAX_REFERENCES
    assert refs[0] == ids[0] and refs[-1] == ids[-1]  # the root, then the newest
    assert msg["In-Reply-To"] == ids[-1]
    assert "Bcc" not in msg


def test_no_thread_means_no_in_reply_to(renderer: Renderer) -> None:
    msg = parse(renderer.compose(notice(Event.RECEIPT, thread_ids=())))
    assert "In-Reply-To" not in msg and "References" not in msg


@pytest.mark.parametrize("bad", ["sag-1@x", "<a b@x>", "<x@y>\r\nBcc: e@x", ""])
def test_own_message_id_must_be_well_formed(renderer: Renderer, bad: str) -> None:
    with pytest.raises(ValueError):
        renderer.compose(notice(message_id=bad))


@pytest.mark.parametrize("address", ["a@b.example\r\nBcc: evil@example.org", "two@at@x.example",
                                     "no-at-sign", "", "a b@x.example", "<a@x.example>, b@y.example"])
def test_bad_recipient_is_refused(renderer: Renderer, address: str) -> None:
    with pytest.raises(PermanentDeliveryError):
        renderer.compose(notice(recipient_email=address))


def test_non_ascii_recipient_gets_an_utf8_header(renderer: Renderer) -> None:
    raw = renderer.compose(notice(recipient_email="søren@kommune.example"))
    assert "<søren@kommune.example>".encode() in raw  # RFC 6532: needs SMTPUTF8 on the way
    msg = message_from_string(raw.decode("utf-8"), policy=email_policy.default)
    assert [a.addr_spec for a in msg["To"].addresses] == ["søren@kommune.example"]


def test_envelope_from(renderer: Renderer) -> None:
    assert renderer.envelope_from() == SETTINGS.mail.from_address


# --- header injection (catalogue 78) -----------------------------------------------------------

_B64_NEWLINE = base64.b64encode(b"Sag\r\nBcc: evil@example.org").decode()
HOSTILE = [
    pytest.param("Sag\r\nBcc: evil@example.org", id="crlf"),
    pytest.param("Sag\nBcc: evil@example.org", id="lf"),
    pytest.param("Sag\rBcc: evil@example.org", id="cr"),
    pytest.param("Sag\u2028Bcc: evil@example.org", id="u2028"),
    pytest.param("Sag\u2029Bcc: evil@example.org", id="u2029"),
    pytest.param("Sag\u0085Bcc: evil@example.org", id="u0085"),
    pytest.param("Sag\x0bBcc: evil@example.org\x00", id="vt-nul"),
    pytest.param("=?utf-8?q?Sag=0ABcc:_evil@example.org?=", id="cve-2024-6923"),
    pytest.param(f"=?utf-8?b?{_B64_NEWLINE}?=", id="encoded-word-b64"),
    pytest.param("æøå =?utf-8?q?Sag=0D=0ABcc:_evil@example.org?= ÆØÅ", id="encoded-word-mixed"),
    pytest.param("Sag " + "A" * 10_240, id="10kb-ascii"),
    pytest.param("Sag " + "ø" * 10_240, id="10kb-utf8"),
    pytest.param("Sag\u202eevil.exe\u200b", id="bidi"),
    pytest.param("\udcff Sag", id="lone-surrogate"),
]


def _assert_one_clean_recipient(raw: bytes) -> None:
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert all(0x20 <= byte < 0x7F for byte in head.replace(b"\r\n", b""))  # ASCII, no controls
    assert b"\n" not in head.replace(b"\r\n", b"") and b"\r" not in head.replace(b"\r\n", b"")
    assert all(len(line) <= 998 for line in head.split(b"\r\n"))
    for policy in (email_policy.default, email_policy.compat32):
        msg = parse(raw, policy)
        assert msg.get_all("Bcc") is None and msg.get_all("Cc") is None
        assert len(msg.get_all("To") or []) == 1
        assert {k.lower() for k in msg} == EXPECTED_HEADERS
    msg = parse(raw)
    assert [a.addr_spec for a in msg["To"].addresses] == ["soeren.hansen@kommune.example"]
    subject = str(msg["Subject"])
    assert "\n" not in subject and "\r" not in subject and len(subject) < 300


@pytest.mark.parametrize("hostile", HOSTILE)
def test_item78_hostile_subject_adds_no_header(renderer: Renderer, hostile: str) -> None:
    raw = renderer.compose(notice(Event.STATUS, case_subject=hostile))
    _assert_one_clean_recipient(raw)
    assert str(parse(raw)["Subject"]).startswith("[SAG-000123] Status: Afventer rekvirent – ")


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_names_add_no_header(renderer: Renderer, hostile: str) -> None:
    raw = renderer.compose(notice(Event.SHARED, recipient_name=hostile, actor_name=hostile))
    _assert_one_clean_recipient(raw)


@pytest.mark.parametrize(("value", "expected"), [
    ("Printer virker ikke", "Printer virker ikke"),
    ("  a \t b\r\nc\u2028d\u0085e  ", "a b c d e"),
    ("=?utf-8?q?x?=", "= ?utf-8?q?x?="),
    ("a\x00b\x1b[31mc\x7f", "a b [31mc"),
    ("a\u200bb\u202ec\ufeff", "abc"),
    ("Løn – æøå ÆØÅ 🙂", "Løn – æøå ÆØÅ 🙂"),
    ("x" * 250, "x" * 199 + "…"),
    ("", ""),
])
def test_header_text(value: str, expected: str) -> None:
    assert header_text(value) == expected


@pytest.mark.parametrize("subject", [
    "Løn for marts – spørgsmål om årsopgørelse (ærligt talt: hvorfor?) " * 2,
    "Ønsker adgang til systemet", "Re: [SAG-000099] spørgsmål", "a_b=c?d \"quoted\" (x) <y>",
])
def test_subject_round_trips_exactly(renderer: Renderer, subject: str) -> None:
    n = notice(Event.REPLY, case_subject=subject)
    raw = renderer.compose(n)
    assert str(parse(raw)["Subject"]) == renderer.render(n).subject
    assert all(len(line) <= 78 for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n"))


_TEXT = st.text(st.characters(codec="utf-8"), max_size=300) | st.text("aæ ,;()\\\"=?_\r\n\u2028", max_size=120)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(subject=_TEXT, name=_TEXT)
def test_any_subject_and_name_round_trip_without_extra_headers(renderer: Renderer, subject: str, name: str) -> None:
    n = notice(Event.REPLY, case_subject=subject, recipient_name=name)
    raw = renderer.compose(n)
    _assert_one_clean_recipient(raw)
    msg = parse(raw)
    assert str(msg["Subject"]) == renderer.render(n).subject
    shown = msg["To"].addresses[0].display_name
    expected = header_text(name, 64)
    assert shown == expected or (shown.endswith("…") and expected.startswith(shown[:-1]))


# --- the MIME tree (issue 17, item 2) ----------------------------------------------------------------

# Text that tries to end or split a part: boundary lines of the old fixed "None" boundary and of
# the library's own "===…==" form, line breaks of every kind, and encoded-words.
_BOUNDARY_LIKE = st.sampled_from([
    "--None--", "--None", "\r\n--None\r\n", "\n--None--\n", "--", "=_", "===============",
    "--===============0123456789==", "\r\n--===============0123456789==--\r\n", "Content-Type: text/html",
    "\r\n\r\nX-Evil: 1\r\n", "\u2028", "\u2029", "\u0085", "\r", "\n", "=?utf-8?q?a=0D=0A--None?=",
    "=?utf-8?b?LS1Ob25lLS0=?=", "A" * 69, "ø" * 40, ".", "\r\n.\r\n", "=", "=3D", "\x00",
])
_HOSTILE_TEXT = st.lists(_BOUNDARY_LIKE | st.text(st.characters(codec="utf-8"), max_size=40),
                         max_size=8).map("".join)


def _parsed(raw: bytes) -> EmailMessage:
    """As a receiving client reads it; an SMTPUTF8 message (RFC 6532) is UTF-8 text."""
    if raw.isascii():
        return parse(raw)
    return message_from_string(raw.decode("utf-8"), policy=email_policy.default)  # type: ignore[return-value]


def _parts_of(raw: bytes) -> list[tuple[str, str]]:
    """(content type, decoded text) of every part below the root, parsed strictly."""
    msg = _parsed(raw)
    assert not msg.defects, msg.defects
    assert msg.get_content_type() == "multipart/alternative"
    boundary = msg.get_boundary()
    assert boundary and boundary != "None"
    parts = []
    for part in msg.iter_parts():
        assert not part.is_multipart() and not part.defects
        parts.append((part.get_content_type(), part.get_content().replace("\r\n", "\n")))
    assert sum(1 for _ in msg.walk()) == 3  # the root and its two parts, nothing nested
    return parts


def test_item17_2_a_subject_holding_the_old_boundary_keeps_both_parts(renderer: Renderer) -> None:
    n = notice(Event.RECEIPT, case_subject="A" * 69 + "--None--")
    rendered = renderer.render(n)
    assert _parts_of(renderer.compose(n)) == [("text/plain", rendered.text), ("text/html", rendered.html)]
    n = notice(Event.STATUS, case_subject="Sag --None\r\nContent-Type: text/html\r\n\r\n<b>x</b>")
    rendered = renderer.render(n)
    assert _parts_of(renderer.compose(n)) == [("text/plain", rendered.text), ("text/html", rendered.html)]


def test_item17_2_every_message_has_its_own_boundary(renderer: Renderer) -> None:
    boundaries = {parse(renderer.compose(notice(Event.STATUS))).get_boundary() for _ in range(20)}
    assert len(boundaries) == 20


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(event=st.sampled_from(list(Event)), subject=_HOSTILE_TEXT, name=_HOSTILE_TEXT, actor=_HOSTILE_TEXT,
       comment=_HOSTILE_TEXT, utf8_address=st.booleans())
def test_item17_2_any_text_parses_back_to_exactly_the_intended_parts(
        renderer: Renderer, event: Event, subject: str, name: str, actor: str, comment: str,
        utf8_address: bool) -> None:
    """Whatever a customer or an agent typed (subject, names, the status comment that is never
    rendered), the message is the two alternatives we rendered and our headers, nothing else."""
    address = "søren@kommune.example" if utf8_address else "soeren.hansen@kommune.example"
    n = notice(event, case_subject=subject, recipient_name=name, actor_name=actor or None, reason=comment,
               recipient_email=address)
    rendered = renderer.render(n)
    raw = renderer.compose(n)
    assert _parts_of(raw) == [("text/plain", rendered.text), ("text/html", rendered.html)]
    msg = _parsed(raw)
    caseless = event in (Event.REJECTED, Event.PASSWORD_LINK)  # no case to reply into
    assert {k.lower() for k in msg} == EXPECTED_HEADERS - ({"reply-to"} if caseless else set())
    assert len(msg.keys()) == len({k.lower() for k in msg})  # each header once
    assert str(msg["Subject"]) == rendered.subject == header_text(rendered.subject, 10_000)
    assert [a.addr_spec for a in msg["To"].addresses] == [address]
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert b"\r" not in head.replace(b"\r\n", b"") and b"\n" not in head.replace(b"\r\n", b"")
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    if not utf8_address:
        assert all(0x20 <= byte < 0x7F for byte in raw.replace(b"\r\n", b""))  # 7-bit throughout
