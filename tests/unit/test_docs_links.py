"""Every reference in the documents resolves inside the repository, and the README is short.

The documents are README.md, SECURITY.md and docs/*.md.  A reference is a relative
Markdown link (with its ``#anchor``, if any, among the target's headings), a backticked
repository path such as ``docs/deploy.md`` or ``sandbox/confine/``, or a ``NAME.md``
mentioned anywhere in the text.  Code and configuration comments that name a document
are held to the same rule.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", ROOT / "SECURITY.md", *sorted((ROOT / "docs").glob("*.md"))]
README_LIMIT_BYTES = 12 * 1024

# Files that comments in the code may name documents from.
COMMENTED = [
    *sorted((ROOT / "sandbox").rglob("*.py")),
    *sorted((ROOT / "service").rglob("*.py")),
    *sorted((ROOT / "bench").glob("*.py")),
    *sorted((ROOT / "tests").rglob("*.py")),
    *sorted((ROOT / "deploy").rglob("*.yaml")),
    *sorted((ROOT / "deploy").rglob("*.template")),
    *sorted((ROOT / "policies").glob("*.toml")),
    ROOT / "Dockerfile",
    ROOT / "docker-compose.yml",
    ROOT / "Makefile",
]

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"`([^`\n]+)`")
MARKDOWN_NAME = re.compile(r"(?<![\w/.-])((?:\.\./)*[\w.-]+(?:/[\w.-]+)*\.md)\b")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
# Paths a reader makes or that installing makes; they are not part of the repository.
NOT_IN_REPOSITORY = (".venv/", "secrets/")


def prose(text: str) -> str:
    """``text`` without its fenced code blocks, which hold commands and output, not links."""
    kept, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            kept.append(line)
    return "\n".join(kept)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*?|_", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    found: set[str] = set()
    for line in prose(text).splitlines():
        match = HEADING.match(line)
        if match:
            anchor = slug(match.group(2))
            number, unique = 0, anchor
            while unique in found:
                number += 1
                unique = f"{anchor}-{number}"
            found.add(unique)
    return found


def inside_repository(path: Path) -> bool:
    return path.resolve().is_relative_to(ROOT)


def resolves(name: str, base: Path) -> bool:
    """Whether ``name``, a path as a document or comment writes it, names a file here."""
    if "*" in name:
        return any(ROOT.glob(name.rstrip("/")))
    for directory in (base, ROOT, ROOT / "docs"):
        candidate = directory / name
        if inside_repository(candidate) and candidate.exists():
            return True
    return False


def looks_like_repository_path(code: str) -> bool:
    """A backticked token that names a file or directory of the repository, as opposed
    to a URL route (``/repl``), a MIME type (``text/plain``), a command or an image."""
    if re.search(r"[\s:{}<>$~…=,()\[\]]", code) or code.startswith(("/", "-", "#")):
        return False
    if code.startswith(NOT_IN_REPOSITORY):
        return False
    parts = code.removesuffix("/").split("/")
    if not all(parts):  # ``s///``: an expression, not a path
        return False
    last = parts[-1]
    if code.endswith(".md"):
        return True
    return "/" in code and (code.endswith("/") or "." in last.lstrip("."))


def broken_references(text: str, document: Path) -> list[str]:
    """What in ``text``, the text of ``document``, names nothing in the repository."""
    text = prose(text)
    base = document.parent
    broken = []
    for target in LINK.findall(text):
        if SCHEME.match(target):
            continue
        path, _, anchor = target.partition("#")
        if not path:
            if anchor not in anchors(text):
                broken.append(f"link {target}: no heading with that anchor")
            continue
        linked = base / path
        if not (inside_repository(linked) and linked.exists()):
            broken.append(f"link {target}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked.read_text()):
            broken.append(f"link {target}: no heading with that anchor")
    for code in INLINE_CODE.findall(text):
        if looks_like_repository_path(code) and not resolves(code, base):
            broken.append(f"path `{code}`")
    for name in MARKDOWN_NAME.findall(INLINE_CODE.sub("", LINK.sub("", text))):
        if not resolves(name, base):
            broken.append(f"document {name}")
    return broken


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_reference_in_a_document_resolves(document: Path) -> None:
    assert broken_references(document.read_text(), document) == []


def test_comments_name_only_documents_of_the_repository() -> None:
    broken = []
    for path in COMMENTED:
        if path == Path(__file__).resolve() or not path.exists():
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for name in MARKDOWN_NAME.findall(line):
                if not resolves(name, path.parent):
                    broken.append(f"{path.relative_to(ROOT)}:{number}: {name}")
    assert broken == []


def test_the_readme_fits_on_a_few_screens_and_opens_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_bytes()
    assert len(readme) < README_LIMIT_BYTES, f"README.md is {len(readme)} bytes"
    opening = readme.decode().splitlines()[:10]
    assert any("make run" in line for line in opening)
    assert any("make test" in line for line in opening)


def test_the_checker_finds_what_it_is_for() -> None:
    """Not vacuous: references outside the repository, or to nothing, are each caught."""
    text = (
        "# Title\n\nSee [the contract](../../shared/spec/API.md), [here](#title),"
        " [there](#nowhere), [deploy](deploy.md#settings), [bad](deploy.md#no-such),"
        " `spec/API.md`, `docs/missing.md`, `sandbox/confine/`, `text/plain` and"
        " DESIGN.md.\n```\n`inside/a/fence.md`\n```\n"
    )
    assert broken_references(text, ROOT / "docs" / "probe.md") == [
        "link ../../shared/spec/API.md",
        "link #nowhere: no heading with that anchor",
        "link deploy.md#no-such: no heading with that anchor",
        "path `spec/API.md`",
        "path `docs/missing.md`",
        "document DESIGN.md",
    ]
