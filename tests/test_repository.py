"""The repository stands on its own (issue 18): no tracked file points outside it, and every
`rules §n` and `catalogue n` reference points to a heading or row that exists.

The project's rules are docs/rules.md (`rules §n`, a heading `## §n …`) and the catalogue of
hostile inputs is tests/CATALOGUE.md (`catalogue n`, a table row `| n |`). A reference to the
sibling files the project was once specified in, or to a directory beside the checkout, breaks
in every clone: `git clone … && make test` must work with nothing next to it.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.conftest import ROOT

# Written in pieces so that this file does not hold what it looks for.
FORBIDDEN = tuple(p.encode() for p in ("../" + "shared", "/work/" + "shared", "SPEC" + " §", "RELIABILITY" + " "))
# The third-party corpora's own provenance and licence notes may say where a file was checked
# against; nothing reads them.
EXEMPT = re.compile(r"^tests/corpus[^/]*/(SOURCES\.md|LICEN[CS]ES?(\.md|\.txt)?)$")
SKIPPED_DIRS = {".git", ".venv", "var", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", "artefacts"}
TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".html", ".j2", ".sh", ".cfg", ".ini", ".yml", ".yaml"}
RULES_REF = re.compile(r"\brules (§\d+(?:\s*(?:,|/|–|-|and|or)\s*§\d+)*)")
CATALOGUE_REF = re.compile(r"\bcatalogue (\d+(?:\s*(?:,|–|-|and|or)\s*\d+)*)")


def tracked_files() -> list[str]:
    """`git ls-files`; outside a git checkout (an unpacked archive) every file but the ignored
    kinds, so the guard still runs."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                      if p.is_file() and not SKIPPED_DIRS & set(p.relative_to(ROOT).parts))
    return sorted(name for name in out.decode().split("\0") if name)


def text_files() -> list[tuple[str, str]]:
    files = []
    for name in tracked_files():
        path = ROOT / name
        textual = path.suffix in TEXT_SUFFIXES or name in {"Makefile", "Dockerfile"}
        if textual and path.is_file():
            files.append((name, path.read_text(encoding="utf-8", errors="replace")))
    return files


def outside_references(files: list[tuple[str, bytes]]) -> list[str]:
    found = []
    for name, data in files:
        if EXEMPT.match(name):
            continue
        for pattern in FORBIDDEN:
            at = data.find(pattern)
            if at >= 0:
                line = data.count(b"\n", 0, at) + 1
                found.append(f"{name}:{line}: {pattern.decode()}")
    return found


def test_no_tracked_file_points_outside_the_repository() -> None:
    files = [(name, (ROOT / name).read_bytes()) for name in tracked_files() if (ROOT / name).is_file()]
    assert len(files) > 100, "the listing of the repository's files found almost nothing"
    found = outside_references(files)
    assert not found, "references outside the repository (use `rules §n` or `catalogue n`):\n" + "\n".join(found)


def test_the_guard_can_fail() -> None:
    """The check above, on a made-up file list: each pattern is caught, the exempt notes are not."""
    bad = [(f"gateway/x{i}.py", b"# see " + pattern + b"4") for i, pattern in enumerate(FORBIDDEN)]
    exempt = [("tests/corpus_heldout2/SOURCES.md", FORBIDDEN[1]), ("tests/corpus/LICENSES.md", FORBIDDEN[1])]
    assert len(outside_references(bad + exempt)) == len(FORBIDDEN)


NAMED_DOCUMENT = re.compile(rb"(?<![\w/.-])([A-Z][A-Z0-9_-]*\.md)\b")


def missing_documents(files: list[tuple[str, bytes]], present: set[str]) -> list[str]:
    """Mentions of a document by its capitalised name (as `CATALOGUE.md`) that no tracked file has."""
    found = []
    for name, data in files:
        if EXEMPT.match(name):
            continue
        for match in NAMED_DOCUMENT.finditer(data):
            if match.group(1).decode() not in present:
                line = data.count(b"\n", 0, match.start()) + 1
                found.append(f"{name}:{line}: {match.group(1).decode()}")
    return found


def test_every_document_named_is_in_the_repository() -> None:
    """The specification's sibling documents (an IMAP-OAuth2 recipe, performance and style
    notes) were never part of the repository: a name like theirs must be a file here."""
    names = tracked_files()
    present = {name.rsplit("/", 1)[-1] for name in names}
    files = [(name, (ROOT / name).read_bytes()) for name in names if (ROOT / name).is_file()]
    found = missing_documents(files, present)
    assert not found, "documents named that are not in the repository:\n" + "\n".join(found)
    assert missing_documents([("x.py", b"# see NOWHERE" + b".md and README.md")], present) == ["x.py:1: NOWHERE" + ".md"]


def rule_sections() -> set[int]:
    rules = (ROOT / "docs" / "rules.md").read_text(encoding="utf-8")
    return {int(n) for n in re.findall(r"^## §(\d+)\b", rules, re.M)}


def catalogue_items() -> set[int]:
    catalogue = (ROOT / "tests" / "CATALOGUE.md").read_text(encoding="utf-8")
    return {int(n) for n in re.findall(r"^\| (\d+) \|", catalogue, re.M)}


def dangling(files: list[tuple[str, str]], pattern: re.Pattern[str], number: str, known: set[int]) -> list[str]:
    found = []
    for name, text in files:
        for match in pattern.finditer(text):
            cited = {int(n) for n in re.findall(number, match.group(1))}
            if cited - known:
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{name}:{line}: {match.group(0)}")
    return found


def test_every_rules_reference_names_a_section_of_docs_rules() -> None:
    sections = rule_sections()
    assert sections == set(range(1, len(sections) + 1)), f"docs/rules.md's sections: {sorted(sections)}"
    files = text_files()
    assert sum(len(RULES_REF.findall(text)) for _, text in files) > 20, "found almost no `rules §n`"
    found = dangling(files, RULES_REF, r"§(\d+)", sections)
    assert not found, "`rules §n` with no `## §n` in docs/rules.md:\n" + "\n".join(found)


def test_every_catalogue_reference_names_an_item_of_the_catalogue() -> None:
    items = catalogue_items()
    assert len(items) >= 100, f"tests/CATALOGUE.md lists {len(items)} items"
    found = dangling(text_files(), CATALOGUE_REF, r"\d+", items)
    assert not found, "`catalogue n` with no such row in tests/CATALOGUE.md:\n" + "\n".join(found)


RULES = "rules "  # kept apart, so that the examples below are not references of this file


@pytest.mark.parametrize(("text", "bad"), [(RULES + "§4 and " + RULES + "§12", 1), (RULES + "§5–§6, catalogue 38", 0),
                                           (RULES + "§1/§99", 1)])
def test_the_reference_check_can_fail(text: str, bad: int) -> None:
    assert len(dangling([("x.py", text)], RULES_REF, r"§(\d+)", rule_sections())) == bad
