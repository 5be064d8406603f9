"""Two costs aiosmtpd (pinned at 1.4.6) pays on every connection and every address, cut
without changing a reply: the listener's protocol class (gateway/ingest/smtp.py) mixes this in.

* Its `SMTP.__init__` builds the tables of verbs, hooks and AUTH mechanisms from `dir()` and
  `inspect.getmembers()` of the protocol object and the handler: a `getattr` of each of their
  ~250 attributes, properties included, for every connection (180-300 µs, most of what a new
  connection costs). `dir()` of the mixed-in classes lists only the names those tables read.
* Its `_getaddr` runs the e-mail header parser over MAIL FROM and RCPT TO, and defines a
  `typing.Protocol` class on every call (~110 µs an address). A plain `<local@domain>` with
  an ASCII dot-atom on both sides gets the same answer from a regular expression here; any
  other form (quoted local parts, comments, literals, UTF-8, obsolete syntax) still goes to
  aiosmtpd's parser. tests/test_smtp_connection.py checks the two agree.
"""

from __future__ import annotations

import re

# The prefixes of the names aiosmtpd's `SMTP.__init__` collects from `dir()`: smtp_* (its verbs)
# and auth_* (AUTH mechanisms) of the protocol, handle_* (hooks) and auth_* of the handler.
_TABLES = ("smtp_", "auth_", "handle_")

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# After the ">": blanks, then the parameters; a comment or a line break there goes to aiosmtpd.
_PLAIN = re.compile(rf"<({_ATEXT}(?:\.{_ATEXT})*@{_LABEL}(?:\.{_LABEL})*)>[ \t]*(?![ \t(])([^\r\n]*)")


class NamesForTables:
    """`dir()` of an instance lists only the names aiosmtpd's tables are built from."""

    _table_names: tuple[str, ...] | None = None

    def __dir__(self) -> list[str]:
        cls = type(self)
        names = cls.__dict__.get("_table_names")
        if names is None:
            names = tuple(n for n in object.__dir__(self) if n.startswith(_TABLES))
            cls._table_names = names
        return list(names)


class PlainAddresses:
    """`_getaddr` with a fast path for `<local@domain>`; the rest of aiosmtpd's rules stay."""

    local_part_limit: int

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        plain = _PLAIN.fullmatch(arg) if arg[:1] == "<" else None
        if plain is None:
            return super()._getaddr(arg)  # type: ignore[misc, no-any-return]
        address, rest = plain.groups()
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, rest
