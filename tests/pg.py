"""PostgreSQL for the suite: one migrated template database, a fresh copy per test.

`GATEWAY_TEST_DATABASE_URL` names the server (e.g. postgresql+asyncpg://postgres@127.0.0.1/postgres);
each test gets `CREATE DATABASE … TEMPLATE gw_template_<pid>`, which is a file copy, not a
migration. The template is per pytest process, so two runs on one server never drop each
other's template.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import os
import uuid

from sqlalchemy.engine import make_url

_TEMPLATE = f"gw_template_{os.getpid()}"
_created: list[str] = []
_template_ready = False


def _run(coro_factory):  # type: ignore[no-untyped-def]
    """Run a coroutine to completion even when the caller is inside a running event loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(coro_factory())).result()


async def _admin(url: str, *statements: str) -> None:
    import asyncpg

    u = make_url(url)
    conn = await asyncpg.connect(host=u.host or "127.0.0.1", port=u.port or 5432, user=u.username or "postgres",
                                 password=u.password, database=u.database or "postgres")
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def _migrate(url: str) -> None:
    from store.engine import make_engine
    from store.migrate import upgrade

    engine = make_engine(url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


def _with_db(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def fresh_database(server_url: str) -> str:
    global _template_ready
    if not _template_ready:
        _run(lambda: _admin(server_url, f"DROP DATABASE IF EXISTS {_TEMPLATE} WITH (FORCE)",
                            f"CREATE DATABASE {_TEMPLATE}"))
        _run(lambda: _migrate(_with_db(server_url, _TEMPLATE)))
        _template_ready = True
        _created.append(_TEMPLATE)
    name = f"gw_test_{uuid.uuid4().hex[:12]}"
    _run(lambda: _admin(server_url, f"CREATE DATABASE {name} TEMPLATE {_TEMPLATE}"))
    _created.append(name)
    return _with_db(server_url, name)


def _cleanup(server_url_env: str = "GATEWAY_TEST_DATABASE_URL") -> None:
    url = os.environ.get(server_url_env)
    if not url or not _created:
        return
    statements = [f"DROP DATABASE IF EXISTS {name} WITH (FORCE)" for name in reversed(_created)]
    try:
        # At exit no loop runs and no new thread may start (`_run` would fail quietly: 2000
        # databases piled up that way), so the drops run right here.
        asyncio.run(_admin(url, *statements))
    except Exception as exc:  # a leftover database is harmless; never fail the run for it
        print(f"tests/pg.py: could not drop the test databases: {exc!r}")


atexit.register(_cleanup)
