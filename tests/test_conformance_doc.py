"""docs/conformance.md: every function and test it names exists; every section of the paper rules it covers has rows."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "conformance.md"


def _rows() -> list[tuple[str, list[str], list[str]]]:
    rows = []
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == 4 and re.match(r"\d\.\d", cells[0]):
            rows.append(
                (cells[0], re.findall(r"`(proctor\.[\w.]+)`", cells[2]), re.findall(r"`(tests/[^`]+)`", cells[3]))
            )
    return rows


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            found = getattr(found, attribute)
        return found
    raise ModuleNotFoundError(dotted)


def test_every_named_function_and_test_exists() -> None:
    rows = _rows()
    assert len(rows) >= 30
    for section, functions, tests in rows:
        assert functions and tests, section
        for dotted in functions:
            _resolve(dotted)
        for test in tests:
            path, name = test.split("::")
            assert re.search(rf"^(async )?def {name}\(", (ROOT / path).read_text(), re.MULTILINE), test


def test_every_section_is_covered() -> None:
    covered = {s for section, _, _ in _rows() for s in section.split(", ")}
    assert covered == {"1.1", "1.2", "1.3", "1.4", "2.2"}
