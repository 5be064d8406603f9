"""Dependencies point inward (docs/architecture.md, "The layers"), measured on the code's own imports (issue 18):

- the domain values and the pure pipeline steps never import the store, the ORM, a network
  library or anything async;
- no import circle among the modules of gateway/ and store/;
- no module imports one of a higher layer (`LAYERS`);
- only gateway/app.py constructs the runtime objects (`BUILT_BY_THE_ROOT`);
- nothing outside store/ imports SQLAlchemy, SQLModel or the store's rows.

Every import counts: inside functions and under TYPE_CHECKING too (a type-only import is still
a dependency a reader has to follow). Each rule is checked against a deliberately broken
module too (`test_*_sees_*`), so a rule that cannot fail is noticed.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PURE = [ROOT / "gateway" / "model.py", ROOT / "gateway" / "addresses.py", ROOT / "gateway" / "tokens.py",
        ROOT / "gateway" / "rules.py",
        *sorted((ROOT / "gateway" / "pipeline").glob("*.py"))]
FORBIDDEN = ("store", "sqlmodel", "sqlalchemy", "aiosmtpd", "imapclient", "asyncio", "aiosqlite", "asyncpg",
             "aiosmtplib", "starlette", "uvicorn", "httpx", "gateway.app", "gateway.worker", "gateway.apply",
             "gateway.runtime.daemon", "gateway.http.api", "gateway.lifecycle", "gateway.jobs", "gateway.ingest", "gateway.notify")

# The layers, top to bottom: a module may import its own layer and those below it, never one
# above. A module's layer is named by the first part of its name under gateway/ (`http` for
# gateway/http/api.py); all of store/ is one layer. Where this departs from the sketch:
# - `metrics` sits with `apply` and `notify` below the use-cases: `lifecycle` counts its
#   actions there, and the API's scrape (`http`) reads it from above;
# - `case_text` is a use-case's helper (the CLI's readable case) and imports only the bottom;
# - `__main__` is the command itself.
# A new module must be placed here (the test says which one is missing).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli", "__main__"),
    ("runtime",),
    ("app",),
    ("http", "ingest"),
    ("lifecycle", "jobs", "worker", "parse_pool", "credentials", "attachments", "case_text", "privacy", "export",
     "retention", "datastore"),
    ("apply", "notify", "metrics"),
    ("pipeline", "rules"),
    ("store",),
    ("settings", "model", "errors", "clock", "logs", "addresses", "tokens", "procname"),
)

# The runtime objects: constructed (called) in gateway/app.py and nowhere else under gateway/.
BUILT_BY_THE_ROOT = frozenset({
    "InboxWorker", "Sender", "Transactor", "Inbox", "OutboxQueue", "ParseRunner", "BlobStore", "InboxWriter",
    "GroupCommitter", "InboxHandler", "SmtpListener", "Checkpointer", "make_engine", "make_sender"})

DRIVER = ("sqlalchemy", "sqlmodel", "store.models")


# --- the walk ------------------------------------------------------------------------------------


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources() -> dict[str, Path]:
    """Every module of gateway/ and store/, by its dotted name."""
    return {module_name(path): path for top in ("gateway", "store") for path in sorted((ROOT / top).rglob("*.py"))}


MODULES = sources()


def imports_in(tree: ast.AST, name: str, is_package: bool = False) -> set[str]:
    """What a module imports, anywhere in it: `from a.b import c` is `a.b.c` when that is one
    of our modules, else `a.b`; relative imports are resolved against the module's package."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, name, is_package)
            if base:
                found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names)
    return found


def _absolute(node: ast.ImportFrom, name: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    package = name.split(".")
    package = package if is_package else package[:-1]
    package = package[:len(package) - (node.level - 1)]
    return ".".join([*package, *([node.module] if node.module else [])])


def imports_of(path: Path) -> set[str]:
    name = module_name(path)
    return imports_in(ast.parse(path.read_text(encoding="utf-8")), name, path.name == "__init__.py")


def graph(modules: dict[str, set[str]]) -> dict[str, set[str]]:
    """Our modules and the ones of ours each imports (a name of ours that is not a module, say
    `gateway.app.App`, counts as its module)."""
    return {name: {_ours(i, modules) for i in found if _ours(i, modules)} for name, found in modules.items()}


def _ours(imported: str, modules: Iterable[str]) -> str:
    known = set(modules)
    parts = imported.split(".")
    while parts:
        if ".".join(parts) in known:
            return ".".join(parts)
        parts.pop()
    return ""


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: Tarjan's strongly connected components of more than one module, and
    a module that imports itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges.get(node, ()):
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def layer_of(name: str) -> int | None:
    top = "store" if name == "store" or name.startswith("store.") else name.split(".")[1] if "." in name else ""
    return next((i for i, group in enumerate(LAYERS) if top in group), None)


def upward(edges: dict[str, set[str]]) -> list[str]:
    """Every import of a module from a higher layer than its own."""
    wrong = []
    for name, targets in sorted(edges.items()):
        mine = layer_of(name)
        for target in sorted(targets):
            theirs = layer_of(target)
            if mine is not None and theirs is not None and theirs < mine:
                wrong.append(f"{name} ({LAYERS[mine][0]}…) imports {target} ({LAYERS[theirs][0]}…)")
    return wrong


def constructions(tree: ast.AST) -> set[str]:
    """The runtime objects a module calls into being (`Name(…)` or `module.Name(…)`)."""
    called = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in BUILT_BY_THE_ROOT:
                called.add(name)
    return called


def driver_imports(found: Iterable[str]) -> set[str]:
    return {i for i in found if any(i == d or i.startswith(d + ".") for d in DRIVER)}


def parsed(name: str) -> ast.AST:
    return ast.parse(MODULES[name].read_text(encoding="utf-8"))


def all_imports() -> dict[str, set[str]]:
    return {name: imports_of(path) for name, path in MODULES.items()}


def gateway_modules() -> Iterator[str]:
    return (name for name in MODULES if name == "gateway" or name.startswith("gateway."))


# --- the rules -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PURE, ids=[p.name for p in PURE])
def test_pure_modules_import_nothing_outward(path: Path) -> None:
    bad = {name for name in imports_of(path) if name.startswith(FORBIDDEN) or any(
        name == f or name.startswith(f + ".") for f in FORBIDDEN)}
    assert not bad, f"{path.name} imports {sorted(bad)}"


def test_no_import_circle() -> None:
    assert cycles(graph(all_imports())) == []


def test_every_module_has_a_layer() -> None:
    assert [name for name in MODULES if name not in ("gateway", "store") and layer_of(name) is None] == []


def test_no_import_from_a_lower_layer_to_a_higher_one() -> None:
    assert upward(graph(all_imports())) == []


def test_only_the_root_constructs_the_runtime_objects() -> None:
    built = {name: sorted(constructions(parsed(name))) for name in gateway_modules() if name != "gateway.app"}
    assert {name: found for name, found in built.items() if found} == {}


def test_nothing_outside_the_store_imports_the_driver_or_the_rows() -> None:
    found = {name: sorted(driver_imports(imports_of(MODULES[name]))) for name in gateway_modules()}
    assert {name: bad for name, bad in found.items() if bad} == {}


# --- each rule fails on a broken module ----------------------------------------------------------


def test_the_walk_sees_imports() -> None:
    assert "gateway.model" in imports_of(ROOT / "gateway" / "pipeline" / "plan.py")


def test_the_status_rules_need_only_the_model() -> None:
    ours = {name for name in imports_of(ROOT / "gateway" / "rules.py") if name.split(".")[0] in ("gateway", "store")}
    assert ours == {"gateway.model"}


def test_the_walk_sees_imports_in_functions_and_for_types_only() -> None:
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from gateway.app import App\n"
                     "def f():\n    from sqlalchemy import text\n    from . import model\n")
    assert {"gateway.app", "sqlalchemy", "gateway.model"} <= imports_in(tree, "gateway.errors")


def test_the_cycle_rule_sees_a_circle() -> None:
    edges = graph(all_imports())
    broken = {**edges, "gateway.model": {*edges["gateway.model"], "gateway.lifecycle"}}
    assert any({"gateway.lifecycle", "gateway.model"} <= set(circle) for circle in cycles(broken))
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"a"}}) == [["a"]]


def test_the_layer_rule_sees_an_import_upward() -> None:
    edges = graph(all_imports())
    broken = {**edges, "gateway.lifecycle": {*edges["gateway.lifecycle"], "gateway.app"}}
    assert upward(broken) == ["gateway.lifecycle (lifecycle…) imports gateway.app (app…)"]


def test_the_root_rule_sees_a_construction_elsewhere() -> None:
    assert constructions(ast.parse("from store import transact\ntx = transact.Transactor(e, s)\n")) == {"Transactor"}
    assert constructions(ast.parse("worker = InboxWorker(tx)\nx = BlobStore.path(k)\n")) == {"InboxWorker"}


def test_the_driver_rule_sees_the_driver() -> None:
    tree = ast.parse("from sqlmodel.ext.asyncio.session import AsyncSession\nfrom store.models import SupportCase\n"
                     "from store.engine import Sessions\n")
    assert driver_imports(imports_in(tree, "gateway.x")) == {"sqlmodel.ext.asyncio.session", "store.models"}


def test_the_command_line_is_a_package_of_command_groups_on_the_top_layer() -> None:
    """gateway/cli/ (issue 18): a module a group of commands, all on the top layer. The groups
    share `common` and never import each other; only the package itself puts them together, and
    nothing but `__main__` imports it. The console script still names `gateway.cli:main`."""
    import tomllib

    edges = graph(all_imports())
    cli = sorted(name for name in MODULES if name.startswith("gateway.cli."))
    assert len(cli) >= 5 and all(layer_of(name) == 0 for name in ["gateway.cli", *cli])
    groups = [name for name in cli if name not in ("gateway.cli.common", "gateway.cli.parser")]
    crossing = {name: sorted(t for t in edges[name] if t.startswith("gateway.cli") and t != "gateway.cli.common")
                for name in groups}
    assert {name: found for name, found in crossing.items() if found} == {}
    users = sorted(name for name, targets in edges.items() if not name.startswith("gateway.cli")
                   and any(t == "gateway.cli" or t.startswith("gateway.cli.") for t in targets))
    assert users == ["gateway.__main__"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert scripts["gateway"] == "gateway.cli:main"
