"""The documentation is true of the repository it ships in.

- Every ```yaml block of README.md and deploy/OPERATIONS.md is a proctor config: proctor's own loader accepts it
  (sections and keys a block leaves out keep their defaults, as in a user's file), and no value is a placeholder.
- Every fenced block names its language: a fence closed too early leaves a bare fence behind (README's config block
  once did, and its last sections rendered as prose).
- Every relative link of the docs resolves to a file of the repository, and its #anchor to a heading there; every
  path they name in a code span exists.
- No tracked file points outside the repository, at files a clone does not have.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from markdown_it import MarkdownIt
from markdown_it.token import Token

from proctor.engine.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DOCS = ["README.md", "deploy/OPERATIONS.md"]
LINKED_DOCS = sorted(
    str(p.relative_to(ROOT))
    for p in [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("deploy/*.md"), ROOT / "proctor/bench/README.md"]
)
PLACEHOLDERS = {"...", "…", "TODO", "<fill in>"}
# A relative path that climbs out of the folder holding it: whatever it names lives beside a checkout, not in it.
CLIMB = re.compile(r"(?<![\w./-])((?:\.\./)+)([\w.-]+)")
_MD = MarkdownIt("commonmark").enable("table")


def _tokens(doc: str) -> list[Token]:
    return _MD.parse((ROOT / doc).read_text())


def _yaml_blocks(doc: str) -> list[tuple[int, str]]:
    """(first line, text) of each ```yaml block."""
    return [
        (t.map[0] + 1 if t.map else 0, t.content)
        for t in _tokens(doc)
        if t.type == "fence" and t.info.split()[:1] == ["yaml"]
    ]


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


CONFIG_BLOCKS = [(doc, line, text) for doc in CONFIG_DOCS for line, text in _yaml_blocks(doc)]


def test_the_docs_have_config_blocks() -> None:
    assert {doc for doc, _, _ in CONFIG_BLOCKS} == set(CONFIG_DOCS)


@pytest.mark.parametrize(("doc", "line", "text"), CONFIG_BLOCKS, ids=[f"{d}:{n}" for d, n, _ in CONFIG_BLOCKS])
def test_every_yaml_block_loads_with_proctors_config_loader(doc: str, line: int, text: str, tmp_path: Path) -> None:
    data = yaml.safe_load(text)
    assert isinstance(data, dict) and data, f"{doc}:{line}: not a mapping"
    placeholders = [v for v in _leaves(data) if isinstance(v, str) and v.strip() in PLACEHOLDERS]
    assert not placeholders, f"{doc}:{line}: placeholder values {placeholders}: give a real value or comment it out"
    path = tmp_path / "proctor.yaml"
    path.write_text(text)
    config = load_config(path)
    assert set(config.services()) == set(data) - {"server", "http"}, f"{doc}:{line}"


@pytest.mark.parametrize("doc", LINKED_DOCS)
def test_every_fence_names_its_language(doc: str) -> None:
    bare = [t.map[0] + 1 for t in _tokens(doc) if t.type == "fence" and t.map and not t.info.strip()]
    indented = [t.map[0] + 1 for t in _tokens(doc) if t.type == "code_block" and t.map]
    assert not bare, f"{doc}: fences without a language at lines {bare} (one closed too early?)"
    assert not indented, f"{doc}: indented code blocks at lines {indented} (a fence's text that escaped it?)"


def _slug(heading: str, seen: dict[str, int]) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
    count = seen.get(slug, 0)
    seen[slug] = count + 1
    return f"{slug}-{count}" if count else slug


def _anchors(path: Path) -> set[str]:
    tokens = _MD.parse(path.read_text())
    seen: dict[str, int] = {}
    return {
        _slug("".join(c.content for c in (tokens[i + 1].children or []) if c.type in ("text", "code_inline")), seen)
        for i, t in enumerate(tokens)
        if t.type == "heading_open"
    }


def _links(doc: str) -> list[str]:
    found = []
    for token in _tokens(doc):
        for child in token.children or []:
            target = child.attrs.get("href") or child.attrs.get("src")
            if isinstance(target, str):
                found.append(target)
    return found


@pytest.mark.parametrize("doc", LINKED_DOCS)
def test_every_relative_link_resolves_inside_the_repository(doc: str) -> None:
    broken = []
    for link in _links(doc):
        if re.match(r"[a-z][a-z0-9+.-]*:", link):  # https:, mailto:: not a file of ours
            continue
        target, _, anchor = link.partition("#")
        path = ((ROOT / doc).parent / target).resolve() if target else ROOT / doc
        if not path.is_relative_to(ROOT) or not path.exists():
            broken.append(f"{link}: no such file in the repository")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{link}: no heading #{anchor} in {path.relative_to(ROOT)}")
    assert not broken, f"{doc}: {broken}"


def _named_paths(doc: str) -> list[str]:
    """Code spans that name a path of the repository (`proctor/engine/...`, `deploy/...`), without a pattern in it
    (`<device>`, `{json,md}`, `*`, `YYYY`); a `path::test` or `path:line` names the path before the colon."""
    top = {p.name for p in ROOT.iterdir() if not p.name.startswith(".git")}
    found = []
    for token in _tokens(doc):
        for child in token.children or []:
            span = child.content.strip()
            if (
                child.type == "code_inline"
                and span.split("/")[0] in top
                and "/" in span
                and not re.search(r"[\s<>{}*]|YYYY|DATE", span)
            ):
                found.append(span.split(":")[0])
    return found


@pytest.mark.parametrize("doc", LINKED_DOCS)
def test_every_path_the_docs_name_exists(doc: str) -> None:
    """README's "where do I change X" table and the docs' other paths follow the files when they move."""
    missing = sorted({path for path in _named_paths(doc) if not (ROOT / path).exists()})
    assert not missing, f"{doc} names paths the repository does not have: {missing}"


def test_no_tracked_file_points_outside_the_repository() -> None:
    """A `../x` in any tracked file, read from the file's own folder, stays in the repository (a clone has nothing
    beside it), and in a document names something the repository has."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, text=True)
    found = []
    for name in tracked.stdout.split("\0"):
        path = ROOT / name
        if not name or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for climb, first in CLIMB.findall(text):
            target = (path.parent / climb / first).resolve()
            if not target.is_relative_to(ROOT) or (name.endswith(".md") and not target.exists()):
                found.append(f"{name}: {climb}{first}")
    assert not found, f"paths outside the repository are named in: {found}"
