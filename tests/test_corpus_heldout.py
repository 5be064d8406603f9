"""The held-out sets (issue 22), scored with bench/corpus_score.py's rules: no regressions.

`tests/corpus_heldout2` was scored once, blind (208 of 246); its misreadings were then fixed,
so it is a seen set now, like `tests/corpus_heldout`. What it still does not meet is listed
here with the reason: another product's convention, or an upstream expectation that is
ambiguous. The test fails when any other expectation stops being met, and when a listed one
starts being met (then the table is stale: remove the entry and raise the floor).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _scorer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("corpus_score", ROOT / "bench" / "corpus_score.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# heldout2 expectations not met, each with the reason we read it otherwise.
HELDOUT2_DEVIATIONS: dict[str, str] = {
    # (b) another product's convention
    "trimmer/email_headers_5.txt: reply_text": "the trimmer keeps a closing ('Best regards, //Jef') in the reply; we "
                                               "split it off as the signature, stored with the comment",
    "trimmer/embedded_email_2.txt: reply_text": "closing 'Best Regards' kept by the trimmer; our signature",
    "trimmer/embedded_email_swedish.txt: reply_text": "closing 'Best regards / Some One' kept by the trimmer; our "
                                                      "signature",
    "erp-java/email_abnormal_quote_header_3.txt: reply_text": "closing 'Sincerely, Homer Simpson …' kept by "
                                                              "EmailReplyParser; our signature",
    "trimmer/embedded_email_15.txt: reply_text": "a '/ Greetings' sign-off kept by the trimmer; our signature",
    "trimmer/embedded_email_16.txt: reply_text": "the trimmer keeps quoted text above a bottom-posted answer; we "
                                                 "show the answer only (the quote is in the full text)",
    "trimmer/embedded_email_17.txt: reply_text": "quoted text kept inside the answer by the trimmer; we remove "
                                                 "'>' quotes wherever they are",
    "trimmer/quote_and_text.txt: reply_text": "a '>' quote above the answer kept by the trimmer; we remove it",
    "trimmer/embedded_email_7.txt: reply_text": "the trimmer keeps the '> Hello' quote under 'On … wrote:'; we "
                                                "remove it (its Supercite 'C>' lines we now remove as it does)",
    "trimmer/embedded_email_19.txt: reply_text": "runs of blank lines kept by the trimmer; we keep at most one",
    "trimmer/retains_spaces_and_formatting.txt: reply_text": "two blank lines kept by the trimmer; we keep one",
    "erp-java/email_em_dash.txt: reply_text": "EmailReplyParser hides a '—Daniel' sign-off; a name stays visible "
                                              "with us",
    "erp-java/email_en_dash.txt: reply_text": "EmailReplyParser hides a '–Daniel' sign-off; a name stays visible",
    "erp-java/email_dashes_between_words.txt: reply_text": "EmailReplyParser hides a '--Daniel' sign-off; a name "
                                                           "stays visible (only '-- ' alone opens a signature)",
    "trimmer/spam_1.txt: reply_text": "a mail that is all quote is empty for the trimmer; we show the stripped "
                                      "input when nothing new is left, so the case is never blank",
    "html2text/basic.html: html_text": "html2text writes links as [text](url) (Markdown); we write 'text (url)'",
    "html2text/anchors.html: html_text": "[text](url) links, html2text's Markdown convention",
    "html2text/full_email.html: html_text": "[text](url) links and a double space kept from the source; we write "
                                            "'text (url)' and collapse spaces (its image links we now show as it does)",
    "html2text/images.html: html_text": "[alt](url) links, the link title preferred to the image's alt; we write "
                                        "'[alt] (url)' and prefer alt, the image's own text alternative",
    "html2text/blockquotes.html: html_text": "nested quotes as '>>' (its <hr> lines we now write as it does); we "
                                             "write '> > ' as mail clients quote",
    "html2text/lists.html: html_text": "html2text writes <ol> items with '- '; we number them",
    "imap_tools/rfc6532/utf8_headers.eml: from": "imap_tools keeps an IDN domain in Unicode; we store the "
                                                 "canonical (IDNA) form of an address",
    # (c) ambiguous upstream expectations
    "trimmer/embedded_email_11.txt: reply_text": "a colon-less date line ('2016-03-03 17:21 GMT+01:00 Some One') "
                                                 "with unquoted text under it taken as a quote header",
    "trimmer/embedded_email_18.txt: reply_text": "an attribution above unquoted text: the trimmer drops the line "
                                                 "and keeps the text; we keep both",
    "html2text/zero-width-non-joiners.html: html_text": "html2text deletes U+200C; it joins letters in Persian and "
                                                        "Indic scripts, so we keep it",
}
HELDOUT2_FLOOR = 221  # of 246; blind it was 208


@pytest.fixture(scope="module")
def scorer() -> ModuleType:
    logging.getLogger("mailparser").setLevel(logging.CRITICAL)
    return _scorer()


def test_heldout2_meets_at_least_the_floor_and_fails_only_the_listed(scorer: ModuleType) -> None:
    met, total, failures = scorer.score(ROOT / "tests" / "corpus_heldout2")
    assert total == 246
    assert set(failures) - set(HELDOUT2_DEVIATIONS) == set(), "new misreadings"
    assert set(HELDOUT2_DEVIATIONS) - set(failures) == set(), "now met: remove from the table, raise the floor"
    assert met >= HELDOUT2_FLOOR


# tests/corpus_heldout3 was scored once, blind (400 of 430); then three of its four misreadings
# were fixed (402: two Subjects, the space after an encoded-word, charset NONE), so it is seen now.
@pytest.mark.parametrize(("corpus", "floor"), [("corpus", 192), ("corpus_heldout", 117), ("corpus_heldout3", 402)])
def test_the_other_sets_do_not_drop(scorer: ModuleType, corpus: str, floor: int) -> None:
    met, _total, _failures = scorer.score(ROOT / "tests" / corpus)
    assert met >= floor
