"""Reply text (rules §5) and HTML to text: the corpus (tests/corpus), then table-driven cases."""

from __future__ import annotations

import email
import email.policy
import json
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.pipeline.courtesy import is_courtesy_reply
from gateway.pipeline.htmltext import html_to_text, sanitize_html
from gateway.pipeline.reply import split_reply, visible_text
from gateway.pipeline.signature import split_signature

CORPUS = Path(__file__).resolve().parent / "corpus"

# --- the corpus ----------------------------------------------------------------------------------


def _reply_entries() -> list[dict[str, Any]]:
    manifest = json.loads((CORPUS / "manifest.json").read_text(encoding="utf-8"))
    return [e for e in manifest["entries"]
            if e["kind"] in ("body_text", "html_body")
            or (e["kind"] == "rfc822" and e["file"].startswith("replies/"))]


def _body(entry: dict[str, Any]) -> str:
    raw = (CORPUS / entry["file"]).read_bytes()
    if entry["kind"] == "body_text":
        return raw.decode("utf-8")
    if entry["kind"] == "html_body":
        return html_to_text(raw.decode("utf-8"))
    # gitlab/dutch.eml starts with an empty line (SOURCES.md); whether parsing lstrips is the
    # parse step's decision, here only the body matters. It also declares multipart without
    # parts, so its body is the bare payload.
    message = email.message_from_bytes(raw.lstrip(b"\r\n"), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    part = message.get_body(("plain", "html"))
    if part is None:
        payload = message.get_payload()
        assert isinstance(payload, str)
        return payload
    content = part.get_content()
    return html_to_text(content) if part.get_content_type() == "text/html" else content


def _squash(text: str) -> str:
    return "".join(text.split())


def _meets_upstream(visible: str, expect: dict[str, Any]) -> bool:
    """The manifest's expectation, as the upstream library defines its reply."""
    if "reply_text" in expect:
        if expect.get("reply_text_compare") == "whitespace_insensitive":
            if _squash(visible) != _squash(expect["reply_text"]):
                return False
        elif visible.strip() != expect["reply_text"].strip():
            return False
    return (all(n in visible for n in expect.get("reply_text_contains", []))
            and not any(n in visible for n in expect.get("reply_text_not_contains", [])))


Check = Callable[[str, dict[str, Any], str], bool]  # (our visible text, expect, body) -> ok

# Entries whose expectation encodes another library's idea of "reply" that we deliberately
# do not follow. Each states what we produce instead; the test also insists that the entry
# still deviates, so the table cannot go stale.
DEVIATIONS: dict[str, tuple[str, Check]] = {
    "replies/talon/iphone.eml": (
        "talon keeps device footers in the reply; we split a trailing 'Sent from my iPhone' off as "
        "the comment's signature (issue 22; zapier/email_iPhone.txt and mail-parser-reply agree)",
        lambda ours, expect, body: ours == "Hello" and split_reply(body)[1] == "Sent from my iPhone",
    ),
    "replies/talon/sparrow.eml": (
        "talon keeps trailing spaces and the signature after '-- ' in the reply; we rstrip every "
        "line and split the signature off, stored apart with the comment (issue 22)",
        lambda ours, expect, body: ours == "Hello" and split_reply(body)[1].startswith("--\nxxx\nSent with Sparrow"),
    ),
    "replies/discourse/exchange_html_reply.eml": (
        "Discourse converts HTML to Markdown (**bold**); we produce plain text",
        lambda ours, expect, body: ours == expect["reply_text"].replace("**", ""),
    ),
    "replies/discourse/word_html_reply.eml": (
        "Discourse renders Markdown (**bold**, every item '1.') and elides Outlook's border-top "
        "reply container by its style; we produce plain text, number lists, and strip quoted "
        "history only by its headers, so the (header-less) elided paragraph stays",
        lambda ours, expect, body: ours == (
            "This is the body of the email.\n\n- a bullet\n- another bullet\n\n"
            "And these are the steps to follow:\n\n1. a first step\n2. a second step\n\n"
            "That's all folks!\n\nThis is the elided part!"),
    ),
    "replies/gitlab/html_table_and_blockquote.eml": (
        "GitLab keeps <blockquote> text in the reply; we treat a blockquote as quoted history "
        "(that is how Gmail, Thunderbird and Apple Mail quote), so only the table remains",
        lambda ours, expect, body: ours == expect["reply_text"].rsplit("\n", 1)[0],
    ),
}

ENTRIES = _reply_entries()


def test_corpus_selection_is_what_the_deviation_table_refers_to() -> None:
    files = {e["file"] for e in ENTRIES}
    assert len(ENTRIES) >= 45
    assert set(DEVIATIONS) <= files


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["file"] for e in ENTRIES])
def test_corpus_reply_text(entry: dict[str, Any]) -> None:
    expect = entry["expect"]
    body = _body(entry)
    ours, signature = split_reply(body)
    if entry["file"] in DEVIATIONS:
        _reason, check = DEVIATIONS[entry["file"]]
        assert check(ours, expect, body), ours
        assert not _meets_upstream(ours, expect), "now matches upstream: remove the deviation"
        return
    assert _meets_upstream(ours, expect), ours
    for needle in expect.get("signature_contains", []):
        assert needle in signature
    for needle in expect.get("quoted_reply_contains", []):  # in the history, not only in the reply
        assert body.count(needle) > ours.count(needle)


# --- visible_text ------------------------------------------------------------------------------

OUTLOOK_DA = ("Hej\r\n\r\nDet virker nu.\r\n\r\nMed venlig hilsen\r\nJens\r\n\r\n"
              "Fra: Kundebetjening <kundebetjening@statens-adm.example>\r\nSendt: 3. marts 2026 10:12\r\n"
              "Til: Jens Hansen <jens@x.dk>\r\nEmne: SV: [SAG-000001] Faktura\r\n\r\nHej Jens\r\n")

VISIBLE: list[tuple[str, str, str]] = [
    ("danish outlook block, CRLF", OUTLOOK_DA, "Hej\n\nDet virker nu."),
    ("outlook block under a rule",
     "Svar her\n\n________________________________\nFra: K <k@s.dk>\nSendt: 3. marts 2026\nTil: J\n"
     "Emne: Sag\n\nGammel tekst", "Svar her"),
    ("oprindelig meddelelse",
     "Svar her\n\n-----Oprindelig meddelelse-----\nFra: K [mailto:k@s.dk]\nSendt: 3. marts 2026 10:12\n"
     "Til: Jens\nEmne: Sag\n\nGammel tekst", "Svar her"),
    ("oprindelig besked with dato",
     "Svar her\n\n-------- Oprindelig besked --------\nFra: A <a@b.dk>\nDato: 04.07.2024 17.45\n"
     "Til: c@d.dk\nEmne: Hej", "Svar her"),
    ("outlook without addresses, four labels",
     "Svar\n\nFra: Kundebetjening\nSendt: 3. marts 2026\nTil: Jens\nEmne: Sag\n\nx", "Svar"),
    ("gmail danish",
     "Svar her\n\nDen 3. mar. 2026 kl. 10.12 skrev Jens Hansen <jens@x.dk>:\n\n> Gammel\n> tekst",
     "Svar her"),
    ("gmail danish wrapped before '>:'",
     "Svar her\n\nDen tir. 3. mar. 2026 kl. 10.12 skrev Jens Hansen <jens.hansen@kommune.dk\n>:\n\n> Gammel",
     "Svar her"),
    ("gmail danish wrapped inside the address",
     "Svar her\n\nDen tir. 3. mar. 2026 kl. 10.12 skrev Jens Hansen <\njens.hansen@kommune.dk>:\n\nGammel",
     "Svar her"),
    ("apple mail danish without quote marks",
     "Svar her\n\nDen 3. mar. 2026 kl. 10.12 skrev Jens Hansen <jens@x.dk>:\n\nGammel tekst", "Svar her"),
    ("english on wrote", "Answer\n\nOn Tue, Mar 3, 2026 at 10:12 AM Jens <jens@x.dk> wrote:\n> old", "Answer"),
    ("english on wrote, no address", "Answer\n\nOn 3 Mar 2026, at 10:12, Jens wrote:\n\n> old", "Answer"),
    ("original message", "Answer\n\n-----Original Message-----\nFrom: a@b.c\nSent: x\nTo: y\n\nold", "Answer"),
    ("bare quotes", "Svar\n\n> citat\n>\n> mere citat", "Svar"),
    ("inline answers keep their text",
     "Første svar\n> citat 1\nAndet svar\n\n> citat 2\n\nTredje svar", "Første svar\nAndet svar\n\nTredje svar"),
    ("device footer dropped", "Svar\n\nSendt fra min iPhone", "Svar"),
    ("outlook mobile footer above the header",
     "Svar\n\nHent Outlook til iOS<https://aka.ms/o0ukef>\n________________________________\n"
     "Fra: K <k@s.dk>\nSendt: 3. marts 2026\nTil: J\nEmne: Sag", "Svar"),
    ("a date range is not a header", "Periode:\nFra: 1. januar\nTil: 31. marts\n\nHilsen Jens",
     "Periode:\nFra: 1. januar\nTil: 31. marts"),
    ("'Tak' lines and bullet lists are not a signature",
     "Hej\n\nTak for svaret.\n- punkt 1\n- punkt 2\n\nHilsen\nJens",
     "Hej\n\nTak for svaret.\n- punkt 1\n- punkt 2"),
    ("indentation kept", "Kør:\n\n    systemctl restart x\n\n> citat", "Kør:\n\n    systemctl restart x"),
    ("only a quote shows the quote", "> kun citat\n> mere", "> kun citat\n> mere"),
    ("only a header shows everything", "Fra: A <a@b.dk>\nSendt: i dag\nTil: B\nEmne: x\n\nTekst",
     "Fra: A <a@b.dk>\nSendt: i dag\nTil: B\nEmne: x\n\nTekst"),
    ("empty", "", ""),
    ("whitespace only", " \r\n\t\n", ""),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in VISIBLE], ids=[c[0] for c in VISIBLE])
def test_visible_text(text: str, expected: str) -> None:
    assert visible_text(text) == expected


def test_visible_text_is_stable_on_its_own_output() -> None:
    once = visible_text(OUTLOOK_DA)
    assert visible_text(once) == once


@pytest.mark.parametrize("text", [
    "x" * 1_000_000,
    "lorem ipsum dolor sit amet\n" * 40_000,
    ("On On " + "a " * 95 + ":\n") * 5_000,  # quadratic in the library's English pattern
    "> quoted\nOn x wrote:\n" * 50_000,
    "a\n" * 500_000,
], ids=["one line", "many lines", "on-on lines", "alternating quotes", "tiny lines"])
def test_visible_text_is_bounded_on_a_megabyte(text: str) -> None:
    # CPU time of this process: the work is bounded whatever else runs on the machine (the
    # PostgreSQL suite runs beside this one); a quadratic pattern takes minutes, not seconds.
    started = time.process_time()
    visible_text(text)
    is_courtesy_reply(text)
    assert time.process_time() - started < 5


# --- is_courtesy_reply -------------------------------------------------------------------------

COURTESY: list[tuple[str, bool]] = [
    ("Tak", True),
    ("Mange tak!", True),
    ("Tusind tak", True),
    ("Tak for hjælpen", True),
    ("tak for hurtigt svar :-)", True),
    ("Tak 👍", True),
    ("Thanks", True),
    ("Thank you", True),
    ("Thank you for the quick reply", True),
    ("Thx", True),
    ("Mange tak!\n\nMvh Jens", True),
    ("Tak. Mvh Jens", True),
    ("Tak for hjælpen.\n\nMed venlig hilsen\nJens Hansen", True),
    ("Hej Anne,\n\nTak for hjælpen!\n\nMvh Jens", True),
    ("Tak!\n\nMed venlig hilsen\nJens Hansen\nIT-chef\nTlf. 12 34 56 78", True),
    ("Tak\n\n-- \nJens Hansen\nTlf 1234", True),
    ("Thanks a lot!\n\nSent from my iPhone", True),
    ("Tak\n\nDen 3. mar. 2026 kl. 10.12 skrev Kundebetjening <k@s.dk>:\n> Sagen er løst", True),
    ("Tak, men det virker stadig ikke", False),
    ("Tak\nDet virker ikke", False),
    ("Tak\nHvornår kommer I?", False),
    ("Tak for svaret, jeg har et nyt spørgsmål", False),
    ("Tak\n\nMvh Jens\n\nPS: det virker stadig ikke", False),
    ("Thanks, but the invoice is still wrong", False),
    ("Det virker ikke. Tak", False),
    ("Okay", False),
    ("", False),
    ("> Tak", False),
]


@pytest.mark.parametrize(("text", "expected"), COURTESY, ids=[repr(c[0])[:40] for c in COURTESY])
def test_is_courtesy_reply(text: str, expected: bool) -> None:
    assert is_courtesy_reply(text) is expected


# --- html_to_text ------------------------------------------------------------------------------

HTML: list[tuple[str, str, str]] = [
    ("paragraphs and br", "<p>Hej</p><p>Linje 1<br>Linje 2</p>", "Hej\n\nLinje 1\nLinje 2"),
    ("divs and empty div as gap", "<div>Hej</div><div><br></div><div>Jens</div>", "Hej\n\nJens"),
    ("entities and nbsp", "<p>R&oslash;d &amp; bl&aring;&nbsp;bil &lt;3</p>", "Rød & blå bil <3"),
    ("whitespace collapsed", "<p>  a\n   b\t c  </p>", "a b c"),
    ("link differs from text", '<a href="https://x.dk/sag/1">sagen</a>', "sagen (https://x.dk/sag/1)"),
    ("link same as text", '<a href="https://x.dk/">https://x.dk</a>', "https://x.dk"),
    ("mailto link", '<a href="mailto:jens@x.dk">jens@x.dk</a>', "jens@x.dk"),
    ("javascript link not shown", '<a href="javascript:alert(1)">klik</a>', "klik"),
    ("script style head dropped",
     "<html><head><title>T</title><style>p{color:red}</style></head><body><script>x()</script>"
     "<p>Tekst</p></body></html>", "Tekst"),
    ("unclosed head keeps the body", "<head><meta charset=utf-8><p>Tekst", "Tekst"),
    ("outlook conditional comments", "<!--[if gte mso 9]><xml><o:x/></xml><![endif]--><p>Tekst</p>", "Tekst"),
    ("word list markers", "<p><![if !supportLists]>·<![endif]>Punkt</p>", "- Punkt"),
    ("word bulleted list as lines",
     "<p class=MsoNormal>Hej</p><p class=MsoListParagraphCxSpFirst style='mso-list:l0 level1 lfo1'>"
     "<![if !supportLists]><span style='font-family:Symbol'>·<span style='font:7.0pt \"Times New Roman\"'>"
     "&nbsp;&nbsp;&nbsp;&nbsp;&nbsp;&nbsp; </span></span><![endif]>Første</p>"
     "<p class=MsoListParagraphCxSpLast style='mso-list:l0 level1 lfo1'><![if !supportLists]>"
     "<span style='font-family:Symbol'>·<span>&nbsp;&nbsp; </span></span><![endif]>Anden</p><p class=MsoNormal>Mvh</p>",
     "Hej\n\n- Første\n- Anden\n\nMvh"),
    ("word numbered list keeps its numbers",
     "<p class=MsoListParagraph><![if !supportLists]><span>1.<span>&nbsp;&nbsp; </span></span><![endif]>Et</p>"
     "<p class=MsoListParagraph><![if !supportLists]><span>2.<span>&nbsp; </span></span><![endif]>To</p>",
     "1. Et\n2. To"),
    ("word wingdings bullet", "<p class=MsoListParagraph><![if !supportLists]><span style='font-family:Wingdings'>"
     "§<span>&nbsp; </span></span><![endif]>Punkt</p>", "- Punkt"),
    ("emphasis dropped", "<p>Det er <b>meget</b> <i>vigtigt</i> at <strong>I</strong> <em>svarer</em></p>",
     "Det er meget vigtigt at I svarer"),
    ("heading", "<h1>Titel</h1><p>Tekst</p>", "Titel\n\nTekst"),
    ("lists", "<ul><li>a</li><li>b<ul><li>c</li></ul></li></ul><ol><li>x</li><li>y</li></ol>",
     "- a\n- b\n  - c\n\n1. x\n2. y"),
    ("table", "<table><tr><th>A</th><th>B</th></tr><tr><td>1</td><td>2</td></tr></table>", "A\tB\n1\t2"),
    ("blockquote", "<p>Svar</p><blockquote><p>Citat</p><blockquote>Dybere</blockquote></blockquote>",
     "Svar\n\n> Citat\n>\n> > Dybere"),
    ("pre keeps spacing", "<pre>a  b\n  c</pre>", "a  b\n  c"),
    ("broken html", "<p>a<b>b<i>c</p></b>d<p>e</div></table>", "abc\n\nd\n\ne"),
    ("lone less-than", "<p>1 < 2 and 3 > 2</p>", "1 < 2 and 3 > 2"),
    ("unclosed comment", "<p>Tekst</p><!-- resten", "Tekst"),
    ("max_chars", "<p>" + "a" * 50 + "</p>", "a" * 10),
]


@pytest.mark.parametrize(("html", "expected"), [c[1:] for c in HTML], ids=[c[0] for c in HTML])
def test_html_to_text(html: str, expected: str) -> None:
    max_chars = 13 if expected == "a" * 10 else 2_000_000
    assert html_to_text(html, max_chars=max_chars) == expected


def test_html_blockquote_is_stripped_as_quote() -> None:
    html = ('<div>Svar</div><div class="gmail_quote">Den 3. mar. 2026 kl. 10.12 skrev Jens '
            '&lt;<a href="mailto:jens@x.dk">jens@x.dk</a>&gt;:<blockquote>Gammel</blockquote></div>')
    assert visible_text(html_to_text(html)) == "Svar"


HOSTILE_HTML = {
    "single line of paragraphs": '<p>Hej <b>med</b> <a href="https://x.dk/a">dig</a></p>' * 20_000,
    "unclosed tags": "<a " * 333_333,
    "unclosed less-thans": "<a" * 500_000,
    "comment openers": "<!--" * 250_000,
    "unclosed attributes": "<a b=c d=e" * 100_000,
    "nested blockquotes": "<blockquote>" * 83_333 + "x",
    "nested lists": "<ul><li>" * 125_000 + "x",
    "ampersands": "&" * 1_000_000,
}


@pytest.mark.parametrize("html", HOSTILE_HTML.values(), ids=HOSTILE_HTML.keys())
def test_item51_html_is_bounded_on_a_megabyte(html: str) -> None:
    started = time.process_time()
    text = html_to_text(html)
    sanitize_html(html)
    visible_text(text)
    assert time.process_time() - started < 5
    assert len(text) <= len(html) * 2


def test_deep_quotes_do_not_multiply_output() -> None:
    text = html_to_text("<blockquote>" * 10_000 + "x")
    assert text.endswith("x") and len(text) < 100


# --- sanitize_html -----------------------------------------------------------------------------

SANITIZE: list[tuple[str, str, list[str], list[str]]] = [
    ("script", "<p>a</p><script>alert(1)</script>", ["<p>a</p>"], ["script", "alert"]),
    ("event handler", '<img src="cid:logo" onerror="alert(1)">', ['src="cid:logo"'], ["onerror"]),
    ("svg onload", '<svg onload="alert(1)"><circle/></svg>ok', ["ok"], ["svg", "onload"]),
    ("javascript url", '<a href="javascript:alert(1)">x</a>', [">x</a>"], ["javascript"]),
    ("remote image dropped", '<p>a<img src="https://tracker.example/p.gif" alt="t">b</p>', ["<p>ab</p>"],
     ["<img", "tracker"]),
    ("protocol-relative image dropped", '<img src="//tracker.example/p.gif">x', ["x"], ["<img", "tracker"]),
    ("cid image kept", '<img src="cid:image001.png@01D">', ['<img src="cid:image001.png@01D">'], []),
    ("alt cannot break out", '<img src="https://t.example/x" alt="x><script>alert(1)</script>">',
     [], ["<script", "<img"]),
    ("style and form", '<style>p{}</style><form action="https://x"><input name=a></form>ok',
     ["ok"], ["<style", "<form", "<input"]),
    ("iframe and meta refresh", '<iframe src="https://x"></iframe><meta http-equiv="refresh" content="0">ok',
     ["ok"], ["iframe", "refresh"]),
    ("style attribute with remote url", '<p style="background:url(https://t.example/x)">a</p>', ["<p>a</p>"],
     ["t.example"]),
    ("safe link", '<a href="https://x.dk/">x</a>', ['href="https://x.dk/"', 'rel="noopener noreferrer nofollow"'],
     []),
    ("absurd nesting falls back to escaped text", "<div>" * 1000 + "<b>x</b><script>y</script>",
     ["<div>x</div>"], ["<b>", "<script", "y"]),
]


@pytest.mark.parametrize(("html", "present", "absent"), [c[1:] for c in SANITIZE], ids=[c[0] for c in SANITIZE])
def test_item87_item88_sanitize_html(html: str, present: list[str], absent: list[str]) -> None:
    cleaned = sanitize_html(html)
    for needle in present:
        assert needle in cleaned
    for needle in absent:
        assert needle not in cleaned


_LINES = ["Hej", "", "  ", "Tak for svaret.", "Mvh Jens", "- et punkt", "-- ", "--", "___", "====", "**",
          "~~", "Sent from my iPhone", "Sendt fra min iPhone", "* fed *", "\t", "1. januar", "X" * 80,
          "Fra: Jens", "> citat", "Den 1. jan. 2026 skrev Jens <j@b.dk>:", "-----Original Message-----",
          "tekst med : kolon", "a > b", "\ufeff", "\u200b", "æøå ÆØÅ"]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(_LINES) | st.text("aæ .,-_=*~\t:>", max_size=12), max_size=14),
       st.sampled_from(["\n", "\r\n", "\r"]))
def test_the_steps_a_text_cannot_need_are_skipped_with_the_same_answer(lines: list[str], end: str) -> None:
    """visible_text skips a step when the text lacks the characters it looks for; every step
    run on every text (below) gives the same answers."""
    import gateway.pipeline.reply as reply

    text = end.join(lines)
    normal = reply._normalise(text)
    every = [line.rstrip() for line in normal.split("\n")]
    if not any(line.strip() for line in every):
        assert visible_text(text) == ""
        return
    headers = reply._header_regex(reply.LANGUAGES)
    every = reply._join_wrapped_attributions(every, headers)
    kept = reply._drop_quote_blocks(every, headers)
    kept = reply._drop_trailing_noise(kept[: reply._history_start_below_top(kept, headers)], footers=False)
    kept, _signature = split_signature(kept)
    result = "\n".join(reply._squeeze_blank_lines(reply._drop_trailing_noise(kept))).strip("\n")
    assert visible_text(text) == (result if result.strip() else "\n".join(every).strip())


# --- quote headers beyond Danish and English (issue 22) ------------------------------------------

LANGUAGE_HEADERS: list[tuple[str, str]] = [
    ("dutch gmail, het volgende", "Op 18 juli 2013 10:23 schreef Sander Datema het volgende:\n\nOud"),
    ("dutch outlook", "Van: Jan <jan@x.nl>\nVerzonden: maandag 3 maart 2026 10:12\nAan: K\nOnderwerp: Sag\n\nOud"),
    ("german gmail", "Am 03.03.2026 um 10:12 schrieb Jens Hansen <jens@x.de>:\n\n> Alt"),
    ("german outlook", "Von: Jens <jens@x.de>\nGesendet: Montag, 3. März 2026 10:12\nAn: K\nBetreff: Sag\n\nAlt"),
    ("german separator", "-----Ursprüngliche Nachricht-----\nVon: Jens\nGesendet: heute\nAn: K\n\nAlt"),
    ("swedish", "Den 3 mars 2026 kl. 10:12 skrev Anna Svensson <anna@x.se>:\n\nGammal"),
    ("swedish outlook", "Från: Anna <anna@x.se>\nSkickat: den 3 mars 2026 10:12\nTill: K\nÄmne: Sag\n\nGammal"),
    ("norwegian gmail", "tir. 3. mar. 2026 kl. 10:12 skrev Ola Nordmann <ola@x.no>:\n\nGammel"),
    ("norwegian outlook", "Fra: Ola <ola@x.no>\nSendt: tirsdag 3. mars 2026 10:12\nTil: K\nEmne: Sak\n\nGammel"),
    ("french", "Le 3 mars 2026 à 10:12, Jean Dupont <jean@x.fr> a écrit :\n\nAncien"),
    ("french outlook", "De : Jean <jean@x.fr>\nEnvoyé : lundi 3 mars 2026 10:12\nÀ : K\nObjet : Sag\n\nAncien"),
    ("russian outlook", "От: Иван <ivan@x.ru>\nОтправлено: 3 марта 2026 г. 10:12\nКому: K\nТема: Дело\n\nСтарый"),
    ("russian outlook without addresses", "От: Иван Петров\nОтправлено: 3 марта 2026 г. 10:12\nКому: Kundebetjening\n"
                                          "Тема: Дело\n\nСтарый"),
    ("russian gmail", "3 марта 2026 г., в 10:12, Иван Петров написал(а):\n\n> Старый"),
    ("finnish outlook", "Lähettäjä: Matti <matti@x.fi>\nLähetetty: 3. maaliskuuta 2026 10.12\n"
                        "Vastaanottaja: K\nAihe: Asia\n\nVanha"),
    ("windows mail with left-to-right marks",
     "От: Alexander L (abc@example.com)\nОтправлено: \u200eчетверг\u200e, \u200e26\u200e \u200eиюня\u200e "
     "\u200e2014\u200e г. \u200e15\u200e:\u200e05\nКому: Alex (alex@example.com)\n\nHello!"),
    ("danish windows mail with marks", "Fra:\u200e Jens\nSendt:\u200e \u200e3.\u200e marts 2026\nTil:\u200e K\n"
                                       "Emne:\u200e Sag\n\nGammel"),
    ("zoho dashes", "---- On Wed, 24 Feb 2021 14:02:50 +0530 john@gmail.com wrote ----\n\nOld"),
]


@pytest.mark.parametrize("history", [c[1] for c in LANGUAGE_HEADERS], ids=[c[0] for c in LANGUAGE_HEADERS])
def test_quote_headers_in_other_languages_end_the_reply(history: str) -> None:
    assert visible_text("Nyt svar her.\n\n" + history) == "Nyt svar her."


def test_a_header_block_that_opens_the_text_is_not_history() -> None:
    text = "Fra: A <a@b.dk>\nSendt: i dag\nTil: B\nEmne: x\n\nMit svar\n\nDen 3. mar. 2026 skrev K <k@s.dk>:\n> gl"
    assert visible_text(text) == "Fra: A <a@b.dk>\nSendt: i dag\nTil: B\nEmne: x\n\nMit svar"


# --- signatures (issue 22) --------------------------------------------------------------------

SIGNATURES: list[tuple[str, str, str, str]] = [
    ("danish closing and name", "Hej\n\nDet virker.\n\nMed venlig hilsen\nJens Hansen\nTlf. 12 34 56 78",
     "Hej\n\nDet virker.", "Med venlig hilsen\nJens Hansen\nTlf. 12 34 56 78"),
    ("closing with the name on its line", "Hej\n\nDet virker.\n\nMvh Jens", "Hej\n\nDet virker.", "Mvh Jens"),
    ("dash dash space", "Svar\n\n-- \nJens Hansen\nStatens Administration", "Svar",
     "--\nJens Hansen\nStatens Administration"),
    ("closing then delimiter: one block", "Svar\n\nHilsen\nJens\n\n-- \nJens Hansen", "Svar",
     "Hilsen\nJens\n\n--\nJens Hansen"),
    ("device footer", "Svar\n\nSendt fra min iPhone", "Svar", "Sendt fra min iPhone"),
    ("english regards", "Hi,\n\nStill broken.\n\nBest regards,\nJohn Doe", "Hi,\n\nStill broken.",
     "Best regards,\nJohn Doe"),
    ("german", "Hallo\n\nDanke.\n\nMit freundlichen Grüßen\nHans Müller", "Hallo\n\nDanke.",
     "Mit freundlichen Grüßen\nHans Müller"),
    ("swedish slash name", "Hej Anna,\n\nDet fungerar.\n\n/Johan", "Hej Anna,\n\nDet fungerar.", "/Johan"),
    ("signature above the quoted history",
     "Svar\n\nMvh\nJens\n\nDen 3. mar. 2026 kl. 10.12 skrev K <k@s.dk>:\n> gl", "Svar", "Mvh\nJens"),
    ("a PS after the closing is no signature", "Tak\n\nMvh Jens\n\nPS: det virker stadig ikke",
     "Tak\n\nMvh Jens\n\nPS: det virker stadig ikke", ""),
    ("a question after the closing is no signature", "Hej\n\nHilsen\nJens\nHvornår kommer I?",
     "Hej\n\nHilsen\nJens\nHvornår kommer I?", ""),
    ("'Tak' and 'Thanks' are not closings", "Hi. I am fine.\n\nThanks,\nAlex", "Hi. I am fine.\n\nThanks,\nAlex", ""),
    ("a closing word inside a sentence", "Hej\n\nHilsen fra os alle i afdelingen", "Hej\n\nHilsen fra os alle i afdelingen",
     ""),
    ("'Best' starting a sentence", "Hej\n\nBest practice is to restart", "Hej\n\nBest practice is to restart", ""),
    ("only a signature keeps it visible", "Med venlig hilsen\nJens", "Med venlig hilsen\nJens", ""),
    ("a long tail is no signature", "Svar\n\n--\n" + "linje\n" * 30, "Svar\n\n--\n" + "\n".join(["linje"] * 30), ""),
]


@pytest.mark.parametrize(("text", "visible", "signature"), [c[1:] for c in SIGNATURES],
                         ids=[c[0] for c in SIGNATURES])
def test_signature_is_split_off(text: str, visible: str, signature: str) -> None:
    assert split_reply(text) == (visible, signature)


MORE_REPLIES: list[tuple[str, str, str, str]] = [
    # (case, text, visible, signature)
    ("text under a device footer is history",
     "Svar\n\nSent from my Wiko RIDGE FAB 4G\n\nGammel tekst uden citat", "Svar", "Sent from my Wiko RIDGE FAB 4G"),
    ("a sentence is no device footer", "Here is another email\n\nSent from my desk, is much easier than my phone.",
     "Here is another email\n\nSent from my desk, is much easier than my phone.", ""),
    ("french outlook mobile footer", "Svar\n\nEnvoyé à partir de Outlook pour iOS<https://aka.ms/o0ukef>\n"
     "________________________________\nDe : K <k@s.dk>\nEnvoyé : 3 mars\nÀ : J\nObjet : Sag", "Svar",
     "Envoyé à partir de Outlook pour iOS<https://aka.ms/o0ukef>"),
    ("'wrote' without its colon", "Svar\n\nOn Wed, 14 Nov 2018 08:14:43 -0200 John Doe <john@doe.com> wrote\n\nOld",
     "Svar", ""),
    ("a label line over the header block", "Svar\n\n====\n\nMessage du : 12/12/2016 13:20\nDe : \"K\" <k@s.fr>\n"
     "A : m@x.fr\nCopie à :\nSujet : sag\n\nAncien", "Svar", ""),
    ("a mailing-list footer under underscores",
     "Hi folks\n\n-Abhishek Kona\n\n__\nriak-users mailing list\nriak-users@lists.basho.com",
     "Hi folks\n\n-Abhishek Kona", "__\nriak-users mailing list\nriak-users@lists.basho.com"),
    ("a quote line re-wrapped by the client",
     "Svar\n\nOp 12 december 2016 19:05 schreef K <\nk@s.nl>:\n\n> Beste Jeroen, winkel Kortrijk heeft je vraag "
     "beantwoord, lang genoeg\nom te breken\n>\n> Groet", "Svar", ""),
]


@pytest.mark.parametrize(("text", "visible", "signature"), [c[1:] for c in MORE_REPLIES],
                         ids=[c[0] for c in MORE_REPLIES])
def test_more_reply_shapes(text: str, visible: str, signature: str) -> None:
    assert split_reply(text) == (visible, signature)


# Readings found wrong by the second held-out set (tests/corpus_heldout2, docs/benchmarks.md, issue 22):
# each shape with texts of our own, so the rule is tested, not the fixture.
HELDOUT2_READINGS: list[tuple[str, str, str]] = [
    # (case, text, visible)
    ("a tracker's lone 'ᐧ' line", "Svar\n\nᐧ\n", "Svar"),
    ("'ᐧ' between paragraphs is no text", "Første\n\nᐧ\n\nAnden", "Første\n\nAnden"),
    ("english attribution wrapped over five lines",
     "Svar\n\nOn Mon, 2 Mar 2026 at 09:10 Jens Hansen\n\n<\nmailto:Jens Hansen <jens@x.dk>\n> wrote:\n\n\nGammel tekst",
     "Svar"),
    ("french attribution wrapped over three lines",
     "Merci !\nLe 2 mars 2026 09:10, \"Jens Hansen\"\n<jens@x.dk>\na écrit :\n\n> Bonjour\n> Jens", "Merci !"),
    ("german gmail attribution wrapped in its date",
     "Danke.\n\nJens Hansen <jens@x.dk> schrieb am Mo., 2.\nMärz 2026 um 09:10 Uhr:\n\n> Hallo\n> Jens", "Danke."),
    ("german gmail attribution wrapped before the time",
     "Gut.\n\nJens Hansen <jens@x.dk> schrieb am Mo., 2. März 2026\num 09:10 Uhr:\n\n> Hallo", "Gut."),
    ("a colon-less gmail attribution over '| ' quotes",
     "Det virker ikke.\n\n\n2026/3/2 Kundebetjening via Portal <k@s.dk>\n\n| Vi har lukket sagen.\n| ----\n|\n"
     "| Svar på denne mail.\n|", "Det virker ikke."),
    ("a '|' table without an attribution stays", "Tal:\n\n| a | b |\n| 1 | 2 |", "Tal:\n\n| a | b |\n| 1 | 2 |"),
    ("an address line over no quote is text",
     "Skriv til\n2026 Kundebetjening <k@s.dk>\n\nTak", "Skriv til\n2026 Kundebetjening <k@s.dk>\n\nTak"),
    ("'Name <addr> wrote:' without a date", "Svar\n\nJens Hansen <jens@x.dk> wrote:\n\nGammel tekst uden citat", "Svar"),
    ("'… <addr> schrieb:' without a date over '>' quotes",
     "Danke\n\nJens via Portal <jens@x.dk> schrieb:\n>Hallo\n>Jens", "Danke"),
    ("'… <addr> skrev:' without a date", "Tak\n\nJens Hansen <jens@x.dk> skrev:\nGammel tekst", "Tak"),
    ("a separator in bold asterisks", "Svar\n\n*-------- Original Message --------*\n\nGammel", "Svar"),
    ("a danish separator in bold", "Svar\n\n*-------- Oprindelig meddelelse --------*\nGammel", "Svar"),
    ("a forward under new text", "Se nedenfor.\n\n---------- Forwarded message ---------\nFrom: K <k@s.dk>\n"
     "Date: Mon, Mar 2, 2026 at 9:10 AM\nSubject: Sag\nTo: <j@x.dk>\n\n\nGammel tekst", "Se nedenfor."),
    ("a danish forward under new text", "Til info\n\n---------- Videresendt meddelelse ----------\nFra: K <k@s.dk>\n"
     "Dato: 2. mar. 2026 09.10\nEmne: Sag\nTil: <j@x.dk>\n\nGammel tekst", "Til info"),
    ("a mail that is only a forward keeps the forwarded text",
     "---------- Forwarded message ----------\nFrom: K <k@s.dk>\nDate: Mon, Mar 2, 2026 at 9:10 AM\n"
     "Subject: En sag der\ngår over to linjer\nTo: j@x.dk\n\n\nDen videresendte tekst.", "Den videresendte tekst."),
    ("a dangling forward marker", "Se vedhæftede.\n\n---------- Forwarded message ----------", "Se vedhæftede."),
    ("supercite quote lines", "Svar\n\nJH>\nJH> Gammel tekst\nJH>\n\nMere svar", "Svar\n\nMere svar"),
    ("one 'x>' line is no quote", "a\nx> y\nb", "a\nx> y\nb"),
]


@pytest.mark.parametrize(("text", "visible"), [c[1:] for c in HELDOUT2_READINGS],
                         ids=[c[0] for c in HELDOUT2_READINGS])
def test_heldout2_readings(text: str, visible: str) -> None:
    assert split_reply(text)[0] == visible


HELDOUT2_HTML: list[tuple[str, str, str]] = [
    # (case, html, text)
    ("hr is a separator line", "<p>Over</p><hr><p>Under</p>", "Over\n\n" + "-" * 63 + "\n\nUnder"),
    ("image alt text", '<p>Logo: <img src="a.png" alt="Statens Administration"></p>',
     "Logo: [Statens Administration]"),
    ("image title when no alt", '<p><img src="a.png" title="Kort"></p>', "[Kort]"),
    ("decorative image without alt", '<p>Tekst<img src="a.png" alt=""><img src="t.gif"></p>', "Tekst"),
    ("image-only link shows its url", '<p>Hjem: <a href="https://x.dk/"><img src="a.png"></a></p>',
     "Hjem: https://x.dk/"),
    ("image link with alt", '<a href="https://x.dk/"><img src="a.png" alt="Hjem"></a>', "[Hjem] (https://x.dk/)"),
    ("an empty link shows nothing", '<p>Tekst<a href="https://x.dk/"></a></p>', "Tekst"),
]


@pytest.mark.parametrize(("html", "expected"), [c[1:] for c in HELDOUT2_HTML], ids=[c[0] for c in HELDOUT2_HTML])
def test_heldout2_html_to_text(html: str, expected: str) -> None:
    assert html_to_text(html) == expected


@pytest.mark.parametrize("text, found", [
    ("Hej\nSENT from my iPhone", True),
    ("Sent from my iPhone", True),  # the first line
    ("  \n\tSendt fra min iPad\n", True),  # blank lines and tabs before it, as `^\s*` takes them
    ("Hej æøå\nSendt fra min iPhone", True),
    ("Hej\n\u017fent from my iPhone", True),  # "ſ": IGNORECASE takes it for "s"
    ("Hej\r\nSent from my iPhone\r\n", True),
    ("Hej\nI sent the form yesterday, as you asked.", False),  # the words, but no footer line
    ("Hej\nSent from my iPhone, and the rest of a sentence", False),
    ("Hej Sent from my iPhone", False),  # not at a line's start
    ("1" + "X" * 78 + "\n" * 250, False),
    *((f"Hej\n{footer}", True) for footer in (  # every phrase, past the first letters' lookahead
        "Sent from my iPhone", "Sent from Mail for Windows", "Sent with Proton Mail", "Sent via Spike",
        "Get Outlook for iOS", "Sendt fra min iPad", "Sendt fra Outlook", "Hent Outlook til Android",
        "Skickat från min iPhone", "Von meinem iPhone gesendet", "Gesendet von Mail", "Verzonden vanaf mijn iPhone",
        "Verzonden met mijn Galaxy", "Envoyé de mon iPhone", "Envoyé depuis mon mobile",
        "Envoyé à partir de Outlook", "Inviato da iPhone", "Enviado desde mi iPhone", "Wysłano z iPhone'a",
        "Отправлено с iPhone", "ОТПРАВЛЕНО С IPHONE", "Lähetetty iPhonesta", "LÄHETETTY iPhonesta")),
    *((footer, True) for footer in ("Отправлено с iPhone", "Enviado desde mi iPhone", "\u017fent from my iPhone")),
])
def test_the_device_footer_search_answers_as_the_multiline_expression(text: str, found: bool) -> None:
    """`has_device_footer` tries the expression only at the line starts, and finds what the
    expression with `^` in MULTILINE mode finds."""
    import re

    from gateway.pipeline.signature import DEVICE_FOOTER, has_device_footer

    anywhere = re.compile(DEVICE_FOOTER.pattern, re.IGNORECASE | re.MULTILINE)
    assert has_device_footer(text) is found is (anywhere.search(text) is not None)


@given(st.text(alphabet="a\r\n ", max_size=40))
def test_lf_line_ends_is_every_crlf_and_lone_cr_as_lf(text: str) -> None:
    """The cheaper ways (nothing to do without a CR; CRs dropped without a lone one) answer as
    replacing CRLF and then CR by LF."""
    from gateway.pipeline.charsets import lf_line_ends

    assert lf_line_ends(text) == text.replace("\r\n", "\n").replace("\r", "\n")
