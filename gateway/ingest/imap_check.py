"""`gateway imap check`: log in to every configured account and say, in one line each, what
is fine or what is wrong (the reader's own words for IMAP trouble, gateway.ingest.mailbox)."""

from __future__ import annotations

import asyncio

from gateway.ingest.imap import OVERSIZED_FOLDER, check_config
from gateway.ingest.mailbox import Mailbox, translate
from gateway.settings import ImapAccount, Settings


def check_account(account: ImapAccount) -> str:
    """Log in, look at the folders; what an operator needs to know, in one line (blocking)."""
    box = Mailbox(account, timeout_s=15.0)
    try:
        box.connect()
        box.select(account.folder)
        count = len(box.search(["UNDELETED"]))
        created = [f for f in _needed_folders(account) if box.ensure_folder(f)]
    finally:
        box.close()
    note = f"; created {', '.join(created)}" if created else ""
    idle = "IDLE" if box.can_idle else "polling"
    return (f"logged in to {account.host}:{account.port} as {account.username}; {account.folder} holds {count} "
            f"message(s); {idle}{note}")


def _needed_folders(account: ImapAccount) -> list[str]:
    folders = [account.failed_folder, OVERSIZED_FOLDER]
    return [account.move_to, *folders] if account.after == "move" else folders


async def check_accounts(settings: Settings) -> int:
    """`gateway imap check`: one line per account, 0 when every account is fine."""
    accounts = settings.imap.accounts
    if not accounts:
        print("no IMAP accounts are configured ([[imap.accounts]])")
        return 0
    check_config(accounts)
    outcomes = await asyncio.gather(*(asyncio.to_thread(check_account, a) for a in accounts),
                                    return_exceptions=True)
    failed = 0
    for account, outcome in zip(accounts, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            failed += 1
            print(f"FAILED {account.name}: {translate(outcome, account, connecting=True)}")
        else:
            print(f"ok     {account.name}: {outcome}")
    return 1 if failed else 0
