"""HTML mail bodies as readable plain text, and HTML made safe for display.

`html_to_text` feeds the reply-text step when a mail has no text/plain part, so it keeps
what that step needs: one line per paragraph, list item and table row, links as
"text (url)", and blockquotes as "> " lines so quoted history is recognised and stripped.

`sanitize_html` is for display only (catalogue 87-89): an allow-list, no scripts, no
event handlers, no remote images.

Both must stay bounded on hostile input (catalogue 51). CPython 3.11's `html.parser`
re-scans to the end of the input for every "<" or "<!--" that never closes, which makes
1 MB of "<a <a <a" take minutes; `_defuse` removes those cases in one linear pass first.
"""

from __future__ import annotations

import re
from html import escape, unescape
from html.parser import HTMLParser

import nh3

# <head> itself is not skipped: when a broken mail never closes it, the body would vanish;
# what a head holds (title, style, script, meta) is skipped or empty anyway.
_SKIP = frozenset({"script", "style", "title", "template", "svg", "math", "object", "iframe"})
_PARAGRAPH = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "dl", "table", "pre"})
# <hr> is a rule people see; as text a line of dashes (as wide as soundasleep/html2text draws it).
# reply.py takes such a line for a separator only at the end of the new text.
_RULE_LINE = "-" * 63
_LINE = frozenset({"div", "tr", "li", "dt", "dd", "section", "article", "header", "footer", "nav",
                   "aside", "main", "figure", "figcaption", "address", "center", "caption", "form",
                   "fieldset", "details", "summary", "tbody", "thead", "tfoot"})
_SHOWN_SCHEMES = ("http://", "https://", "mailto:", "ftp://", "tel:")
# Deeper nesting only adds prefix characters per line: without a cap, 100k nested
# blockquotes would turn a 1 MB input into gigabytes of "> ".
_MAX_DEPTH = 8
_INVISIBLE = str.maketrans({"\u200b": "", "\ufeff": "", "\u00ad": "", "\xa0": " "})
_SPACES = re.compile(r"\s+")
_SPACE_RUN = re.compile(" {2,}")
_CELL_GAP = re.compile(r" *\t *")
# A "<" that meets another "<" (or the end) before any ">" can never close a tag.
_UNCLOSABLE_LT = re.compile(r"<(?=[^<>]*(?:<|\Z))")
# "<![if !supportLists]>", "<![endif]>", "<![CDATA[...": bogus comments in HTML.
_MARKED_SECTION = re.compile(r"<!\[[^>]*>")
# Word and Outlook write a list item as a paragraph whose bullet or number sits in a section
# only for readers without list support: "<![if !supportLists]>·&nbsp;&nbsp;<![endif]>Text".
_WORD_LIST_MARKER = re.compile(r"<!\[if !supportLists\]>(.{0,600}?)<!\[endif\]>", re.IGNORECASE | re.DOTALL)
_TAGS = re.compile(r"<[^<>]*>")
_NUMBERED = re.compile(r"^\(?(?:\d{1,3}|[a-zA-Z]|[ivxlcIVXLC]{1,5})[.)]$")


def html_to_text(html: str, max_chars: int = 2_000_000) -> str:
    """Readable plain text of an HTML body; input beyond `max_chars` is ignored."""
    extractor = _TextExtractor()
    extractor.feed(_defuse(html[:max_chars]))
    extractor.close()
    return extractor.text()


def _defuse(html: str) -> str:
    """Remove the constructs that make html.parser quadratic, in linear time."""
    html = _strip_comments(html)
    html = _UNCLOSABLE_LT.sub("&lt;", html)
    if "supportLists" in html:
        html = _WORD_LIST_MARKER.sub(_list_marker, html)
    return _MARKED_SECTION.sub("", html)


def _list_marker(match: re.Match[str]) -> str:
    """Word's bullet ("·", "o", "§" in a symbol font) as "- ", its number ("1.", "a)") as it is."""
    marker = unescape(_TAGS.sub("", match.group(1))).replace("\xa0", " ").strip()
    return (marker if _NUMBERED.match(marker) else "-") + " "


def _strip_comments(html: str) -> str:
    """Drop <!-- ... --> (Outlook hides whole style sheets in them); an unclosed one runs to
    the end, as in a browser. Done by hand because a lazy regex re-scans per opening."""
    parts: list[str] = []
    start = 0
    while (opening := html.find("<!--", start)) >= 0:
        parts.append(html[start:opening])
        closing = html.find("-->", opening + 4)
        if closing < 0:
            return "".join(parts)
        start = closing + 3
    parts.append(html[start:])
    return "".join(parts)


class _TextExtractor(HTMLParser):
    """Collects lines as (quote depth, text); block elements end lines."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._lines: list[tuple[int, str]] = []
        self._current: list[str] = []
        self._has_text = False
        self._marker = ""  # "- " or "3. " waiting for its list item's text
        self._skip = 0
        self._pre = 0
        self._quote = 0
        self._lists: list[list[int]] = []  # per open list: [is_ordered, counter]
        self._cells = 0
        self._link: tuple[str, list[str]] | None = None
        self._link_image = False  # the open link holds an image: with no text, its URL is shown
        self._word_item = False

    # --- parser callbacks -------------------------------------------------------------
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body":
            self._skip = 0  # an unclosed <head> must not swallow the body
        if tag in _SKIP:
            self._skip += 1
        if self._skip:
            return
        if tag == "p":  # Word's list item: a line of its list, not a paragraph of its own
            self._word_item = "msolistparagraph" in (dict(attrs).get("class") or "").lower()
            tag = "div" if self._word_item else tag
        self._open_block(tag)
        if tag == "a":
            self._end_link()
            self._link = (dict(attrs).get("href") or "", [])
        elif tag == "img":
            self._image(dict(attrs))

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self._skip = max(0, self._skip - 1)
            return
        if self._skip:
            return
        if tag == "a":
            self._end_link()
        if tag == "p" and self._word_item:
            self._word_item = False
            tag = "div"
        self._close_block(tag)

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        data = data.translate(_INVISIBLE)
        if self._pre:
            self._pre_data(data)
            return
        self._emit(_SPACES.sub(" ", data))

    def close(self) -> None:
        super().close()
        self._end_link()
        self._break()

    # --- structure --------------------------------------------------------------------
    def _open_block(self, tag: str) -> None:
        if tag == "br":
            self._break(force=True)
        elif tag in ("ul", "ol"):
            # A nested list continues its parent item's block; only the outer one is a paragraph.
            self._break() if self._lists else self._paragraph()
            self._lists.append([tag == "ol", 0])
        elif tag == "li":
            self._list_item()
        elif tag == "tr":
            self._break()
            self._cells = 0
        elif tag in ("td", "th"):
            if self._cells:
                self._current.append("\t")
            self._cells += 1
        elif tag == "blockquote":
            self._paragraph()
            self._quote += 1
        elif tag in _PARAGRAPH:
            self._pre += tag == "pre"
            self._paragraph()
        elif tag in _LINE:
            self._break()
        elif tag == "hr":
            self._paragraph()
            self._emit(_RULE_LINE)
            self._paragraph()

    def _image(self, attrs: dict[str, str | None]) -> None:
        """An image's text alternative as "[alt]" (its title when it has no alt); alt="" marks
        a decorative image, and tracking pixels have none: those show nothing."""
        self._link_image = self._link is not None
        label = _SPACES.sub(" ", (attrs.get("alt") or attrs.get("title") or "").translate(_INVISIBLE)).strip()
        if label:
            self._emit(f"[{label}]")

    def _close_block(self, tag: str) -> None:
        if tag in ("ul", "ol"):
            if self._lists:
                self._lists.pop()
            self._break() if self._lists else self._paragraph()
        elif tag == "blockquote":
            self._break()
            if self._lines and not self._lines[-1][1]:
                self._lines.pop()  # the quote's last paragraph gap would show as a lone ">"
            self._quote = max(0, self._quote - 1)
            self._paragraph()
        elif tag in _PARAGRAPH:
            self._paragraph()
            self._pre = max(0, self._pre - (tag == "pre"))
        elif tag in _LINE:
            self._break()

    def _list_item(self) -> None:
        self._break()
        if not self._lists:
            return
        kind = self._lists[-1]
        kind[1] += 1
        indent = "  " * min(len(self._lists) - 1, _MAX_DEPTH)
        self._marker = f"{indent}{kind[1]}. " if kind[0] else f"{indent}- "

    def _end_link(self) -> None:
        if self._link is None:
            return
        href, words = self._link
        self._link, image = None, self._link_image
        self._link_image = False
        text = "".join(words).strip()
        if not text and image:  # a linked image without alt text: the URL is all there is to read
            self._emit(_readable_url(href.strip()))
            return
        shown = _shown_url(href.strip(), text)
        if shown:
            self._emit(f" ({shown})")

    # --- output -----------------------------------------------------------------------
    def _emit(self, text: str) -> None:
        if not text:
            return
        self._current.append(text)
        self._has_text = self._has_text or not text.isspace()
        if self._link is not None:
            self._link[1].append(text)

    def _pre_data(self, data: str) -> None:
        first, *rest = data.split("\n")
        self._emit(first)
        for line in rest:
            self._break(force=True)
            self._emit(line)

    def _break(self, force: bool = False) -> None:
        """End the current line; `force` (a <br>) ends it even when empty."""
        if self._has_text:
            raw = "".join(self._current)
            line = raw.rstrip() if self._pre else _CELL_GAP.sub("\t", _SPACE_RUN.sub(" ", raw)).strip(" ")
            self._lines.append((min(self._quote, _MAX_DEPTH), self._marker + line))
            self._marker = ""
        elif force:
            self._lines.append((min(self._quote, _MAX_DEPTH), ""))
        self._current = []
        self._has_text = False

    def _paragraph(self) -> None:
        self._break()
        if self._lines and self._lines[-1][1] and not self._marker:
            self._lines.append((min(self._quote, _MAX_DEPTH), ""))

    def text(self) -> str:
        out: list[str] = []
        for depth, line in self._lines:
            rendered = ("> " * depth + line).rstrip() if depth else line
            if rendered or (out and out[-1]):
                out.append(rendered)
        return "\n".join(out).strip("\n")


def _readable_url(href: str) -> str:
    """A link target people can use (web, mail, phone), mailto: dropped; otherwise ""."""
    if not href.lower().startswith(_SHOWN_SCHEMES):
        return ""
    return href[7:] if href.lower().startswith("mailto:") else href


def _shown_url(href: str, text: str) -> str:
    """The URL to show after a link's text, or "" when it would only repeat the text."""
    shown = _readable_url(href) if text else ""
    if not shown:
        return ""
    bare = re.sub(r"^[a-z]+://", "", shown.lower()).rstrip("/")
    return "" if bare in text.lower() else shown


# --- sanitising for display ---------------------------------------------------------------
_ALLOWED_TAGS = frozenset({
    "a", "abbr", "b", "blockquote", "br", "caption", "cite", "code", "col", "colgroup", "dd", "del",
    "div", "dl", "dt", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins", "kbd", "li",
    "ol", "p", "pre", "q", "s", "small", "span", "strike", "strong", "sub", "sup", "table", "tbody",
    "td", "tfoot", "th", "thead", "tr", "u", "ul",
})
_ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "width", "height"},
    "td": {"colspan", "rowspan"},
    "th": {"colspan", "rowspan"},
    "ol": {"start"},
}
_DROPPED_WITH_CONTENT = {"script", "style", "title", "head", "template", "svg", "math", "object",
                         "iframe", "noscript", "select", "textarea"}
# nh3 (html5ever) is quadratic in nesting depth and in the number of character references
# in a text run. Past these
# limits, far beyond real mail, the text rendering is shown instead.
_MAX_NESTING = 256
_MAX_REFERENCES = 50_000
_TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9:-]*)")
_NOT_NESTING = frozenset({  # void elements and those whose end tag may be left out
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track",
    "wbr", "p", "li", "dt", "dd", "td", "th", "tr", "tbody", "thead", "tfoot", "option", "colgroup",
})
# nh3 escapes "<" and ">" inside attribute values, so in its output this matches whole tags.
_IMG_WITHOUT_CID = re.compile(r'<img\b(?![^>]*\ssrc="cid:)[^>]*>', re.IGNORECASE)


def sanitize_html(html: str, max_chars: int = 2_000_000) -> str:
    """HTML safe to show staff: allow-listed tags, links only to http(s)/mailto, images
    only from the mail itself (cid:), so opening a mail leaks nothing to its sender."""
    html = html[:max_chars]
    if html.count("&") > _MAX_REFERENCES or _nesting_depth(html) > _MAX_NESTING:
        return _as_html(html_to_text(html))
    cleaned = _clean(html)
    # The second pass costs little and keeps the result sanitised whatever the regex did.
    return _clean(_IMG_WITHOUT_CID.sub("", cleaned))


def _nesting_depth(html: str) -> int:
    """Deepest element nesting, counted from tags alone (linear, no tree)."""
    depth = deepest = 0
    for match in _TAG.finditer(html):
        name = match.group(2).lower()
        if name in _NOT_NESTING:
            continue
        depth = max(0, depth - 1) if match.group(1) else depth + 1
        deepest = max(deepest, depth)
    return deepest


def _as_html(text: str) -> str:
    return "<div>" + escape(text).replace("\n", "<br>") + "</div>"


def _clean(html: str) -> str:
    return nh3.clean(
        html,
        tags=set(_ALLOWED_TAGS),
        clean_content_tags=set(_DROPPED_WITH_CONTENT),
        attributes={tag: set(names) for tag, names in _ALLOWED_ATTRIBUTES.items()},
        attribute_filter=_filter_attribute,
        url_schemes={"http", "https", "mailto", "cid"},
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )


def _filter_attribute(tag: str, attribute: str, value: str) -> str | None:
    lowered = value.strip().lower()
    if tag == "img" and attribute == "src":
        return value if lowered.startswith("cid:") else None
    if tag == "a" and attribute == "href":
        return value if lowered.startswith(("http://", "https://", "mailto:")) else None
    return value
