"""The case page's conversation as HTML, built here rather than in the template.

A case may have hundreds of comments; through jinja2 each one was ~20 output chunks, seven
escapes and as many attribute and filter look-ups, and that loop was most of the page's time.
Here each comment is one format string: what a customer or a mail wrote (author, text, file
names) is escaped with markupsafe, exactly as the template's autoescaping did; everything else
is our own fixed words and numbers. The markup is the template's, so the page reads the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from urllib.parse import quote

from markupsafe import Markup, escape

from gateway.http.portal.i18n import Translate
from store.portal_cases import CommentRow, FileRow

_COMMENT = ('<li class="comment{agent_class}">\n'
            '    <article aria-labelledby="c{id}">\n'
            '      <header id="c{id}"><strong>{author}</strong>{agent}\n'
            '        · <time datetime="{iso}">{when}</time></header>\n'
            '{text}{files}'
            '    </article>\n'
            '  </li>\n')


def conversation(comments: Iterable[CommentRow], number: str, _: Translate, when: Callable[..., str],
                 size: Callable[[int], str]) -> Markup:
    """The `<li>` of each public comment, oldest first (the caller's order)."""
    staff = str(escape(_("Kundebetjening")))
    agent = f" ({staff})"
    files_label = f'      <p class="files-label">{escape(_("Vedhæftede filer"))}:</p>\n      <ul class="files">\n'
    files_url = f"/sager/{quote(number, safe='')}/filer/"
    out = []
    for c in comments:
        name = c.author_name or c.author_email
        author = escape(name) if name else staff
        text = f'      <div class="comment-text">{escape(c.text)}</div>\n' if c.text else ""
        out.append(_COMMENT.format(
            agent_class=" comment-agent" if c.by_agent else "", id=c.id, author=author, agent=agent if c.by_agent else "",
            iso=c.at.isoformat(), when=when(c.at), text=text,
            files=_files(c.files, files_label, files_url, size) if c.files else ""))
    return Markup("  ".join(out))


def _files(files: tuple[FileRow, ...], label: str, url: str, size: Callable[[int], str]) -> str:
    items = "".join(f'<li><a href="{url}{f.id}" download>{escape(f.name)}</a> <span class="muted">({size(f.size)})</span></li>'
                    for f in files)
    return f"{label}        {items}\n      </ul>\n"
