"""Dependencies point inward (STYLE.md): the domain values and the pure pipeline steps never
import the store, the ORM, a network library or anything async."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PURE = [ROOT / "gateway" / "model.py", ROOT / "gateway" / "addresses.py", ROOT / "gateway" / "tokens.py",
        ROOT / "gateway" / "rules.py",
        *sorted((ROOT / "gateway" / "pipeline").glob("*.py"))]
FORBIDDEN = ("store", "sqlmodel", "sqlalchemy", "aiosmtpd", "imapclient", "asyncio", "aiosqlite", "asyncpg",
             "aiosmtplib", "starlette", "uvicorn", "httpx", "gateway.app", "gateway.worker", "gateway.apply",
             "gateway.runtime.daemon", "gateway.http.api", "gateway.lifecycle", "gateway.jobs", "gateway.ingest", "gateway.notify")


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("path", PURE, ids=[p.name for p in PURE])
def test_pure_modules_import_nothing_outward(path: Path) -> None:
    bad = {name for name in imports_of(path) if name.startswith(FORBIDDEN) or any(
        name == f or name.startswith(f + ".") for f in FORBIDDEN)}
    assert not bad, f"{path.name} imports {sorted(bad)}"


def test_the_walk_sees_imports() -> None:
    assert "gateway.model" in imports_of(ROOT / "gateway" / "pipeline" / "plan.py")


def test_the_status_rules_need_only_the_model() -> None:
    ours = {name for name in imports_of(ROOT / "gateway" / "rules.py") if name.split(".")[0] in ("gateway", "store")}
    assert ours == {"gateway.model"}


@pytest.mark.parametrize("name", ["worker.py", "apply.py"])
def test_the_mail_path_sees_no_rows_and_no_driver(name: str) -> None:
    """The worker and the mail transaction reach the store through its functions and its
    predicates (store/faults.py), never through SQLAlchemy or its rows."""
    bad = {found for found in imports_of(ROOT / "gateway" / name)
           if found.split(".")[0] in ("sqlalchemy", "sqlmodel") or found.startswith("store.models")}
    assert not bad, f"{name} imports {sorted(bad)}"
