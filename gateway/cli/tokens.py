"""`gateway tokens issue|list|revoke`: the API tokens of agents and services."""

from __future__ import annotations

import argparse
import sys

from gateway.cli.common import EX_OK, output
from gateway.settings import Settings


async def cmd_tokens(settings: Settings, args: argparse.Namespace) -> int:
    from gateway import credentials
    from gateway.app import open_app

    async with open_app(settings) as app:
        if args.tokens_command == "issue":
            issued = await credentials.issue_api_token(app.tokens, args.agent, args.service)
            if args.json:
                output(issued, True)
            else:
                print(issued["token"])
                holder = issued["agent"] or issued["service"]
                print(f"gateway: API token {issued['id']} for {issued['kind']} {holder}; it is shown only now",
                      file=sys.stderr)
        elif args.tokens_command == "list":
            output(await credentials.list_api_tokens(app.tokens), args.json)
        else:
            revoked = await credentials.revoke_api_token(app.tokens, args.id)
            print(f"API token {args.id} revoked" if revoked["changed"] else f"API token {args.id} was revoked already")
    return EX_OK
