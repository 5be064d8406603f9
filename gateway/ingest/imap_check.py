"""`gateway imap check`: log in to every configured account and say, in one line each, what
is fine or what is wrong (the reader's own words for IMAP trouble, gateway.ingest.mailbox, and
for OAuth2 tokens, gateway.ingest.oauth).

An OAuth2 account's line tells apart: a secret variable that is not set (a configuration error),
a token endpoint that cannot be reached, a tenant, client or secret it refuses, a login refused
even with a fresh token (the app is not granted the mailbox), and a folder that is missing."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping

from gateway.ingest.imap import OVERSIZED_FOLDER, check_config
from gateway.ingest.mailbox import Mailbox, translate
from gateway.ingest.oauth import TokenSource, missing_secret, token_sources
from gateway.settings import ImapAccount, Settings


def check_account(account: ImapAccount, tokens: TokenSource | None = None) -> str:
    """Log in, look at the folders; what an operator needs to know, in one line (blocking)."""
    box = Mailbox(account, timeout_s=15.0, tokens=tokens)
    try:
        box.connect()
        box.select(account.folder)
        count = len(box.search(["UNDELETED"]))
        created = [f for f in _needed_folders(account) if box.ensure_folder(f)]
    finally:
        box.close()
    note = f"; created {', '.join(created)}" if created else ""
    idle = "IDLE" if box.can_idle else "polling"
    how = "" if account.auth == "password" else f" by {account.auth.upper()}"
    return (f"logged in to {account.host}:{account.port} as {account.username}{how}; {account.folder} holds "
            f"{count} message(s); {idle}{note}")


def _needed_folders(account: ImapAccount) -> list[str]:
    folders = [account.failed_folder, OVERSIZED_FOLDER]
    return [account.move_to, *folders] if account.after == "move" else folders


async def check_accounts(settings: Settings, env: Mapping[str, str] | None = None,
                         tokens: dict[str, TokenSource] | None = None) -> int:
    """`gateway imap check`: one line per account, 0 when every account is fine."""
    accounts = settings.imap.accounts
    if not accounts:
        print("no IMAP accounts are configured ([[imap.accounts]])")
        return 0
    check_config(accounts)
    env = os.environ if env is None else env
    unset = {a.name: problem for a in accounts if (problem := missing_secret(a, env)) is not None}
    if tokens is None:
        tokens = token_sources([a for a in accounts if a.name not in unset], env)
    checked = [a for a in accounts if a.name not in unset]
    outcomes = await asyncio.gather(*(asyncio.to_thread(check_account, a, tokens.get(a.name)) for a in checked),
                                    return_exceptions=True)
    results = dict(zip([a.name for a in checked], outcomes, strict=True))
    failed = 0
    for account in accounts:
        outcome = results.get(account.name)
        if account.name in unset:
            failed += 1
            print(f"FAILED {account.name}: configuration error: {unset[account.name]}")
        elif isinstance(outcome, BaseException):
            failed += 1
            print(f"FAILED {account.name}: {translate(outcome, account, connecting=True)}")
        else:
            print(f"ok     {account.name}: {outcome}")
    return 1 if failed else 0
