"""Headless Chromium for the portal's tests: Debian's browser driven by Playwright, axe-core on
every page (set-up in docs/testing.md), the real daemon's outbound maildir as the customers' inbox.

Under CI a missing Chromium fails the tests: a skip would turn the browser suite green
without running it.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost"]
WCAG = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
ARTEFACTS = Path(__file__).resolve().parent / "artefacts" / "portal"


def launch() -> Iterator[Any]:
    """The browser for a module (a launch is ~0.25 s, a context ~0.2 s: one browser, a context a test)."""
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (make test does it as root)")
        pytest.skip(f"{CHROMIUM} is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


class Problems:
    """What went wrong in a page besides its own answer: a script error, a CSP violation (our
    own file blocked), a style sheet, script or icon that did not load."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def watch(self, page: Any) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.seen.append(f"script: {exc}"))
        page.on("response", self._response)

    def _console(self, message: Any) -> None:
        # A page answered 404 or 403 on purpose logs "Failed to load resource"; its own files
        # are checked by _response.
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.seen.append(f"console: {message.text}")

    def _response(self, response: Any) -> None:
        if response.status >= 400 and response.request.resource_type in ("stylesheet", "script", "image", "font"):
            self.seen.append(f"{response.status}: {response.url}")


def accessible(page: Any, label: str) -> None:
    """axe-core over the page as it is now: no violation of WCAG 2.0/2.1 A and AA."""
    from axe_playwright_python.sync_playwright import Axe

    result = Axe().run(page, options={"runOnly": {"type": "tag", "values": WCAG}})
    violations = result.response["violations"]
    details = [f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']][:3]}" for v in violations]
    assert not violations, f"axe on {label} ({page.url}): {details}"


def shoot(page: Any, name: str) -> None:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTEFACTS / f"{name}.png"), full_page=True)


class Inbox:
    """The daemon's outbound maildir, read as each recipient's inbox."""

    def __init__(self, maildir: Path) -> None:
        self.maildir = maildir

    def all(self) -> list[EmailMessage]:
        folder = self.maildir / "new"
        files = sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime_ns) if folder.exists() else []
        return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in files]  # type: ignore[misc]

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.all() if address in str(m["To"])]

    def wait(self, address: str, subject: Callable[[str], bool], timeout: float = 20.0) -> EmailMessage:
        """The newest mail to `address` whose subject passes, once it has arrived."""
        deadline = time.monotonic() + timeout
        while True:
            found = [m for m in self.to(address) if subject(str(m["Subject"]))]
            if found:
                return found[-1]
            if time.monotonic() > deadline:
                raise AssertionError(f"no mail to {address} as expected; got {[str(m['Subject']) for m in self.to(address)]}")
            time.sleep(0.1)


def text_of(message: EmailMessage) -> str:
    return message.get_body(("plain",)).get_content()  # type: ignore[union-attr]


def link_in(message: EmailMessage, base: str, path: str = r"/\S+") -> str:
    found = re.search(re.escape(base) + f"({path})", text_of(message))
    assert found, text_of(message)
    return found.group(1)
